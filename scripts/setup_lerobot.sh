#!/usr/bin/env bash
# Optional layer for `vla-accel import lerobot`: .venv-lerobot, a venv that sees every package of the
# main venv (torch==2.13.0 CPU, onnx, onnxruntime, openvino, vla_accel itself) and adds LeRobot 0.4.4
# with the few packages its imports need, pinned in requirements/lerobot/lerobot.txt, installed --no-deps
# (LeRobot's declared dependencies would pull a CUDA torch). Its own site-packages come first, so its
# transformers 4.x shadows the main venv's 5.x (LeRobot 0.4.4 needs < 5).
#
#   bash scripts/setup_lerobot.sh [MAIN_VENV] [LEROBOT_VENV]      (./run.sh setup calls it)
#
# Idempotent: skipped when the requirements file and this script hash as at the last install.
# About 80 MB of wheels, under a minute. Set VLA_ACCEL_SKIP_LEROBOT=1 to skip it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=$(cd "${1:-$ROOT/.venv}" && pwd)
LVENV=${2:-$ROOT/.venv-lerobot}
REQ=$ROOT/requirements/lerobot/lerobot.txt

log() { printf '\033[1m[setup_lerobot]\033[0m %s\n' "$*" >&2; }

[ "${VLA_ACCEL_SKIP_LEROBOT:-0}" = 1 ] && { log "skipped (VLA_ACCEL_SKIP_LEROBOT=1)"; exit 0; }
[ -x "$BASE/bin/python" ] || { log "no main venv at $BASE: run ./run.sh setup first"; exit 1; }
want=$(cat "$REQ" "$0" | sha256sum | cut -c1-16)
stamp=$LVENV/.vla_accel_lerobot
[ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && exit 0

log "creating $LVENV (LeRobot 0.4.4 layered over $BASE)"
# The venv is made from the same interpreter as the main one, without pip (it uses the main venv's).
base_py=$("$BASE/bin/python" -c 'import sys; print(sys._base_executable)')
rm -rf "$LVENV"
"$base_py" -m venv --without-pip "$LVENV"
site=$("$LVENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
base_site=$("$BASE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# addsitedir (not a plain path line) so the main venv's own .pth files run too (editable vla_accel,
# the ROS 2 wheels' library-path hook). "zz" sorts it after every .pth of this layer.
echo "import site; site.addsitedir('$base_site')" > "$site/zz_vla_accel_base_venv.pth"
"$BASE/bin/python" -m pip install -q --no-deps --target "$site" -r "$REQ"
# Console scripts of the main venv (vla-accel) are thin wrappers; give this layer its own.
cat > "$LVENV/bin/vla-accel" <<SH
#!/usr/bin/env bash
exec "$LVENV/bin/python" -m vla_accel.cli "\$@"
SH
chmod +x "$LVENV/bin/vla-accel"
"$LVENV/bin/python" -c 'import lerobot, transformers, torch; print("lerobot", lerobot.__version__ if hasattr(lerobot, "__version__") else "?", "transformers", transformers.__version__, "torch", torch.__version__)' >&2
echo "$want" > "$stamp"
