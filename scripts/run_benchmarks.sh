#!/usr/bin/env bash
# Every CPU benchmark the docs quote, in one go, on this machine: ./run.sh setup first.
#   bash scripts/run_benchmarks.sh [OUT_DIR]      (default out/bench; ~8 minutes on 2 cores)
# Each command prints its own table (ratios measured side by side in one run) and writes JSON.
# GPU figures come from scripts/gpu_run.sh on a machine with an NVIDIA GPU (docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/bench}; mkdir -p "$OUT"
# shellcheck disable=SC1091
[ -f .ros_build/env.sh ] && source .ros_build/env.sh
export PATH="$PWD/.venv/bin:$PATH"
run() { echo; echo "\$ vla-accel $*"; vla-accel "$@"; }
run bench --model tiny --backends torch,onnxruntime,openvino --json "$OUT/backends_tiny.json"
run bench pipeline --model tiny --backend onnxruntime --json "$OUT/pipeline.json"
run bench batching --model tiny --backend onnxruntime --json "$OUT/batching.json"
run bench memory --model tiny --backend onnxruntime --json "$OUT/memory.json"
run bench realtime --model tiny --backend onnxruntime --seconds 60 --json "$OUT/realtime.json"
run bench node --backends torch,onnxruntime --seconds 10 --json "$OUT/node.json"
run replay --make-sample "$OUT/sample_bag" --sample-frames 120
run replay "$OUT/sample_bag" --backends torch,onnxruntime,openvino --out "$OUT/replay"
