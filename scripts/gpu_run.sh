#!/usr/bin/env bash
# One complete GPU session: what is sent to the GPU machine (NVIDIA H100/H200, Python 3.12, CUDA torch).
#
#   bash scripts/gpu_run.sh [all|tests|bench|others]      (default: all)
#
# 1. installs the pyopencl wheels carried in .whl/ (the GPU image has no pyopencl) into /tmp/site;
# 2. registers NVIDIA's OpenCL library with the ICD loader (the image ships libnvidia-opencl.so.1
#    but no /etc/OpenCL/vendors/nvidia.icd);
# 3. tests: the cuda and opencl backend tests, base-model (slow) ones included: fp16 / bf16 / fp32
#    parity of cuda and opencl-on-NVIDIA parity against the committed torch CPU fp32 references, the
#    GPU layout, torch.compile's CUDA graphs beside the backend's own, .pt2 programs under graphs,
#    uint8 frames prepared on the GPU;
# 4. bench: `vla-accel bench gpu` on tiny and base at batch 1 and 32, base-flow at batch 1 (one CUDA
#    graph per chunk against eager torch on the GPU), with device and host-to-host times,
#    the CPU baseline beside each row, the physical floor, the goals, plus the parity table;
#    written to $OUT/gpu_bench_h200.json: copy it to docs/measurements/gpu_bench_h200.json;
# 5. others: `vla-accel bench batching` (its GPU comparison uses the cuda backend).
# Everything is written under $OUT (logs, JUnit XML, the benchmark JSON) when OUT is set.
#
# Fetch the wheels once on the development machine (cp312, manylinux), into the git-ignored .whl/:
#   for p in pyopencl==2026.1.4 pytools==2026.1.1 platformdirs==4.14.5 siphash24==1.9; do
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl "$p"; done
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export VLA_ACCEL_CACHE=${VLA_ACCEL_CACHE:-/tmp/vla_accel_cache}
PY=${PYTHON:-python3}

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_run: installing carried wheels failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
if [ -w /etc ] && ! compgen -G "/etc/OpenCL/vendors/*nvidia*.icd" >/dev/null; then
  mkdir -p /etc/OpenCL/vendors && echo libnvidia-opencl.so.1 > /etc/OpenCL/vendors/nvidia.icd
fi

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
  "$PY" - <<'EOF'
import os, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count(), "cpu cores", os.cpu_count())
try:
    from vla_accel.backends.opencl_backend import list_devices
    for d in list_devices():
        print("opencl", d)
except Exception as exc:  # report and carry on: the bench then lists opencl as skipped with the reason
    print("opencl unavailable:", type(exc).__name__, exc)
EOF
} 2>&1 | tee "$OUT/machine.txt"

rc=0
if [ "$what" = all ] || [ "$what" = tests ]; then
  # AOTInductor packages for CUDA compile for minutes and their load is checked in a child process:
  # opt in with GPU_AOTI=1 (the bench variant cuda-bf16-aoti-graph likewise).
  marks="not aoti"; [ "${GPU_AOTI:-0}" = 1 ] && marks=""
  VLA_ACCEL_SLOW=1 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -rs -m "$marks" \
    --junitxml="$OUT/gpu_tests.xml" \
    test/test_cuda_backend.py test/test_cuda_images.py test/test_pt2.py test/test_cuda_bench.py \
    ${GPU_EXTRA_TESTS:-test/test_opencl_backend.py} 2>&1 | tee "$OUT/gpu_tests.log"
  rc=${PIPESTATUS[0]}
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
  "$PY" -m vla_accel.benchmarks.gpu --gpu-models "${GPU_MODELS:-tiny,base,base-flow}" --gpu-batches "${GPU_BATCHES:-1,32}" \
    --gpu-variants "${GPU_VARIANTS:-torch-cpu,cuda-fp32,cuda-fp32-graph,cuda-fp16,cuda-fp16-graph,cuda-bf16,cuda-bf16-graph,cuda-fp16-graph-plain,cuda-bf16-graph-u8,cuda-bf16-pt2-graph,cuda-fp16-compile,cuda-fp16-inductor-graph,cuda-bf16-inductor-graph,opencl}" \
    --gpu-seconds "${GPU_SECONDS:-2}" --gpu-cpu-threads "${GPU_CPU_THREADS:-16}" --gpu-parity --gpu-opencl-profile \
    --gpu-json "$OUT/${GPU_JSON_NAME:-gpu_bench_h200.json}" 2>&1 | tee "$OUT/gpu_bench.log"
  brc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] && rc=$brc
fi
if [ "$what" = all ] || [ "$what" = others ]; then
  # Benchmarks of other modes that have a GPU part; bounded, never fatal.
  timeout 240 "$PY" -m vla_accel.cli bench batching --batching-gpu-backend cuda --seconds 2 \
    --json "$OUT/bench_batching.json" 2>&1 | tee "$OUT/bench_batching.log" || true
fi
exit "$rc"
