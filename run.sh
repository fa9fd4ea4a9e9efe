#!/usr/bin/env bash
# vla_accel: set everything up (idempotent), then run one job.
#   ./run.sh demo      set up, then run the main job on the embedded default (CPU, reference model)
#   ./run.sh test      set up, then run the test suite (what CI runs)
#   ./run.sh import lerobot CKPT OUT   import a trained LeRobot checkpoint (runs in .venv-lerobot)
#   ./run.sh setup     only set up;  ./run.sh bench [...] / ./run.sh vla-accel ARGS...
# Set-up: apt packages (OpenCL ICD loader + PoCL CPU device) when root, a venv in .venv with pinned
# wheels (torch==2.13.0 CPU build, ONNX Runtime, OpenVINO, LiteRT, pyopencl, rosbags, ROS 2 Kilted
# rclpy wheels), then the ROS build of msg/ with those wheels when no ROS 2 is sourced.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=${VLA_ACCEL_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

log() { printf '\033[1m[vla_accel]\033[0m %s\n' "$*" >&2; }

setup_apt() {
  # OpenCL ICD loader + PoCL (a real CPU OpenCL device) for the opencl backend's CPU path.
  if [ -e /etc/OpenCL/vendors/pocl.icd ] && ldconfig -p 2>/dev/null | grep -q libOpenCL.so.1; then return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing apt packages: pocl-opencl-icd ocl-icd-libopencl1"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pocl-opencl-icd ocl-icd-libopencl1 >/dev/null
  else
    log "not root: skipping apt packages (pocl-opencl-icd ocl-icd-libopencl1); the opencl backend will report them missing"
  fi
}

setup_venv() {
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { log "Python 3.10+ is required"; exit 1; }
  [ -x "$VENV/bin/python" ] || { log "creating venv $VENV"; "$PY" -m venv "$VENV"; }
  local stamp="$VENV/.vla_accel_requirements"
  local want; want=$(cat requirements/*.txt requirements/no-deps/*.txt setup.cfg | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing Python packages into $VENV (first run takes a few minutes)"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    # every requirements/*.txt (runtime, ros, test, and per-area extras); torch pinned to the CPU build
    local reqs=(); for f in requirements/*.txt; do reqs+=(-r "$f"); done
    "$VENV/bin/python" -m pip install -q "${reqs[@]}"
    # packages whose declared pins would downgrade others (each file says why)
    for f in requirements/no-deps/*.txt; do "$VENV/bin/python" -m pip install -q --no-deps -r "$f"; done
    "$VENV/bin/python" -m pip install -q --no-deps -e .
    echo "$want" > "$stamp"
  fi
}

setup_triton_server() {
  # vla-accel serve: the tritonserver binary (nvidia-pytriton wheel) in its own venv, because Triton's
  # Python backend needs numpy < 2 (requirements/triton-server/). Needs glibc >= 2.35 and a Python
  # built with a shared libpython (the backend's stub loads it).
  local venv=${VLA_ACCEL_TRITON_VENV:-$ROOT/.venv-triton}
  local stamp="$venv/.vla_accel_requirements"
  local want; want=$(cat requirements/triton-server/*.txt | sha256sum | cut -c1-16)
  [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return
  # glibc's version from Python (not `ldd --version | head -1`: under pipefail, head closing the pipe
  # early can kill ldd with SIGPIPE and turn the version into a failure)
  local glibc; glibc=$("$PY" -c 'import platform; print(platform.libc_ver()[1] or "0.0")' 2>/dev/null || echo 0.0)
  if [ "$(printf '%s\n2.35\n' "$glibc" | sort -V | head -1)" != "2.35" ]; then
    log "glibc $glibc < 2.35: skipping the Triton server environment (vla-accel serve will say it is missing)"; return
  fi
  if [ "$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("Py_ENABLE_SHARED") or 0)')" != 1 ]; then
    log "$PY has no shared libpython: skipping the Triton server environment"; return
  fi
  [ -x "$venv/bin/python" ] || { log "creating the Triton server venv $venv"; "$PY" -m venv "$venv"; }
  log "installing the Triton server environment into $venv"
  "$venv/bin/python" -m pip install -q -r requirements/triton-server/requirements.txt
  "$venv/bin/python" -m pip install -q --no-deps -r requirements/triton-server/no-deps.txt
  echo "$want" > "$stamp"
}

setup_qnn_venv() {
  # The qnn-ort backend's own venv: onnxruntime-qnn brings onnxruntime 1.32, which conflicts with the
  # main venv's pin, so it never goes into $VENV (its file is outside requirements/*.txt on purpose).
  # Optional: a failed install leaves qnn-ort reporting itself unavailable, the rest works.
  local qvenv=${VLA_ACCEL_QNN_VENV:-$ROOT/.venv-qnn}
  local stamp="$qvenv/.vla_accel_requirements"
  local want; want=$(sha256sum requirements/qnn-venv/requirements.txt | cut -c1-16)
  [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return
  [ -x "$qvenv/bin/python" ] || { log "creating venv $qvenv (qnn-ort backend)"; "$PY" -m venv "$qvenv"; }
  log "installing onnxruntime-qnn into $qvenv (about 100 MB)"
  if "$qvenv/bin/python" -m pip install -q -r requirements/qnn-venv/requirements.txt; then
    echo "$want" > "$stamp"
  else
    log "onnxruntime-qnn did not install: the qnn-ort backend will report itself unavailable"
  fi
}

setup_ros() {
  # Builds msg/ (and installs launch/, config/, node executables) with the pip ROS 2 wheels.
  bash scripts/build_ros.sh "$VENV"
}

setup_lerobot() {
  # Optional LeRobot layer (.venv-lerobot) for `vla-accel import lerobot`: see scripts/setup_lerobot.sh.
  # Optional: when it cannot install, the rest still works; the import says what to install and its
  # tests skip naming it.
  bash scripts/setup_lerobot.sh "$VENV" "$ROOT/.venv-lerobot" || \
    log "LeRobot layer not installed (scripts/setup_lerobot.sh failed): vla-accel import lerobot is unavailable"
}

setup() { setup_apt; setup_venv; setup_triton_server; setup_qnn_venv; setup_ros; setup_lerobot; }

activate() {
  # The ROS build's environment (PYTHONPATH with vla_accel.msg, AMENT_PREFIX_PATH, LD_LIBRARY_PATH).
  # shellcheck disable=SC1091
  [ -f "$ROOT/.ros_build/env.sh" ] && source "$ROOT/.ros_build/env.sh"
  export PATH="$VENV/bin:$PATH"
}

cmd=${1:-demo}; shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; activate; exec vla-accel demo "$@" ;;
  test)
    setup; activate
    set +e; python -m pytest "$@"; rc=$?; set -e
    [ $rc -eq 5 ] && { log "pytest collected no tests"; exit 1; }
    exit $rc ;;
  bench|replay|doctor|export|info|serve) setup; activate; exec vla-accel "$cmd" "$@" ;;
  import) setup; activate; exec "$ROOT/.venv-lerobot/bin/python" -m vla_accel.cli import "$@" ;;
  vla-accel) setup; activate; exec vla-accel "$@" ;;
  *) echo "usage: ./run.sh {demo|test|setup|bench|replay|doctor|export|info|serve|import|vla-accel ...}" >&2; exit 2 ;;
esac
