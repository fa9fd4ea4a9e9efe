#!/usr/bin/env python3
"""Policy programs on the ``cuda`` backend: parity with the torch CPU run on the same seeded noise and
eager loop latency (the runner driving prefix + steps, no CUDA graph), per model and precision.

    python3 scripts/gpu_program_smoke.py [--json out.json] [tiny-flow base-flow ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None) -> int:
    from vla_accel.backends.base import BackendOptions, example_inputs
    from vla_accel.backends.registry import create_backend
    from vla_accel.core.program import call_noise
    from vla_accel.models import load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=["tiny-flow", "base-flow"])
    parser.add_argument("--json", default="")
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)
    rows = []
    for name in args.models:
        bundle = load_model(name)
        spec = bundle.spec
        inputs = example_inputs(spec, 1, seed=3)
        inputs[spec.program.noise] = call_noise(3, 0, (1, spec.action.steps, spec.action.dims))
        with create_backend("torch", bundle) as cpu:
            t0 = time.perf_counter()
            reference = cpu.infer(inputs)["actions"]
            cpu_ms = (time.perf_counter() - t0) * 1e3
        for precision in ("fp32", "bf16", "fp16"):
            with create_backend("cuda", bundle, BackendOptions(precision=precision)) as gpu:
                for _ in range(3):
                    out = gpu.infer(inputs)["actions"]
                times, stages = [], []
                for _ in range(args.iters):
                    t0 = time.perf_counter()
                    gpu.infer(inputs)
                    times.append((time.perf_counter() - t0) * 1e3)
                    stages.append(gpu.last_stage_ms)
                row = {"model": name, "precision": precision, "max_abs_diff_vs_cpu": float(np.abs(out - reference).max()),
                       "p50_ms": float(np.median(times)), "cpu_torch_ms": cpu_ms,
                       "prefix_ms": float(np.median([s["prefix"] for s in stages])),
                       "step_ms": float(np.median([s["step"] for s in stages])),
                       "device": gpu.device_info().device}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
