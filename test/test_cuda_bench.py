"""``vla-accel bench gpu`` (vla_accel/benchmarks/gpu.py) end to end on a tiny configuration.

Where CUDA is absent the cuda rows must say why instead of carrying numbers; the opencl row runs on
whatever OpenCL device exists (PoCL here). No timing assertions: speed claims come from the CLI.
"""
from __future__ import annotations

import argparse
import json
import math

from vla_accel.backends.cuda_backend import CudaBackend
from vla_accel.backends.opencl_backend import OpenCLBackend
from vla_accel.benchmarks import gpu


def test_gpu_bench_rows_json_and_table(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    gpu.add_arguments(parser)
    gpu.add_arguments(parser)  # bench calls every mode's add_arguments on one parser: must be idempotent
    out = tmp_path / "gpu.json"
    args = parser.parse_args([
        "--gpu-models", "tiny", "--gpu-batches", "1", "--gpu-variants", "cuda-fp16-graph,opencl",
        "--gpu-seconds", "0", "--gpu-min-iters", "2", "--gpu-warmup", "1", "--gpu-cpu-threads", "1",
        "--gpu-json", str(out),
    ])
    assert gpu.run(args) == 0
    report = json.loads(out.read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"torch-cpu", "cuda-fp16-graph", "opencl"}  # the CPU baseline is always added
    base = rows["torch-cpu"]
    assert base["iterations"] >= 2 and base["latency_ms"]["p50"] > 0 and math.isclose(base["speedup"], 1.0)
    assert report["cpu_baseline_threads"] == 1
    cuda = rows["cuda-fp16-graph"]
    if CudaBackend.probe().ok:
        assert cuda["skipped"] == "" and cuda["max_abs_diff"] < 2e-2
    else:
        assert "cuda" in cuda["skipped"] and "NVIDIA" in cuda["skipped"]
    ocl = rows["opencl"]
    if OpenCLBackend.probe().ok:
        assert ocl["skipped"] == ""
        assert ocl["max_abs_diff"] < 1e-3 and ocl["speedup"] > 0 and ocl["parallel_units"] >= 1
    table = capsys.readouterr().out
    assert "torch-cpu" in table and "opencl" in table and "speedup" in table
