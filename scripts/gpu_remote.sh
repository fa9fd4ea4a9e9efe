#!/usr/bin/env bash
# `vla-accel bench remote` on the GPU machine (Python 3.12, CUDA torch, no network): the policy server
# runs the cuda backend, 16 robot processes share it, each also running the policy locally on the GPU.
#
#   OUT=out bash scripts/gpu_remote.sh [MODEL]          (default MODEL: base)
#
# Carried in the git-ignored .gpu_triton/ (made on the development machine, about 55 MB):
#   pytriton.tar.xz   the tritonserver binary, its Python backend, the Python 3.12 stub and libraries
#                     from the nvidia-pytriton 0.7.0 wheel (pytriton/__init__.py, tritonserver/bin,
#                     tritonserver/backends/python/{libtriton_python.so,triton_python_backend_utils.py},
#                     tritonserver/python_backend_stubs/3.12, nvidia_pytriton.libs)
#   numpy-1.26.4-cp312-*.whl, python_rapidjson-*-cp312-*.whl, tritonclient-2.73.0-py3-none-any.whl
#     (pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
#      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .gpu_triton PACKAGE)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-base}
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 VLA_ACCEL_CACHE=${VLA_ACCEL_CACHE:-/tmp/vla_accel_cache}
VENV=/tmp/venv-triton
if [ ! -x "$VENV/bin/python" ]; then
  # system site-packages: the server's backend uses the machine's CUDA torch; numpy < 2 shadows numpy 2
  python3 -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install -q --no-index --no-deps .gpu_triton/numpy-1.26.4-*.whl
  # python3 may itself be a venv (its packages are not the base interpreter's "system" ones): its
  # site-packages go after this venv's own (numpy < 2 first), through a .pth file
  python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"]); print(sysconfig.get_paths()["platlib"])' \
    > "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_machine_site.pth"
  tar -xJf .gpu_triton/pytriton.tar.xz -C "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
fi
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu_triton/tritonclient-*.whl .gpu_triton/python_rapidjson-*.whl
export PYTHONPATH=/tmp/site:$PWD VLA_ACCEL_TRITON_VENV=$VENV
# torch's own cuDNN before the Triton wheel's older one (the server's Python backend runs CUDA torch)
VLA_ACCEL_SERVE_LIBRARY_PATH=$(python3 -c 'import os, nvidia.cudnn as c; print(os.path.join(list(c.__path__)[0], "lib"))' 2>/dev/null || true)
export VLA_ACCEL_SERVE_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
python3 -m vla_accel.cli bench remote --model "$MODEL" --backends cuda --remote-robots 1,4,16 \
  --remote-rate-hz "${RATE:-20}" --remote-seconds "${SECONDS_PER_PHASE:-3}" --json "$OUT/gpu_remote_h200.json" \
  2>&1 | tee "$OUT/gpu_remote.log"
