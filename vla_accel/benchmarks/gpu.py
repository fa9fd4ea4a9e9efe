"""``vla-accel bench gpu`` (also ``python -m vla_accel.benchmarks.gpu``): the GPU benchmark.

In ONE process and one run, for each model and batch size: the same machine's torch CPU baseline
(fp32 eager, ``--gpu-cpu-threads`` threads), the ``cuda`` backend at fp32 / fp16 / bf16 with and
without CUDA graphs (optionally torch.compile "reduce-overhead"), and the ``opencl`` backend on the
first OpenCL GPU. Each row: latency p50 / p99 (ms, per batch, host to host: input copy, forward,
output copy), throughput (samples/s = batch / mean latency), speedup over the CPU baseline at the
same batch (p50 ratio, core.metrics.speedup), parallel efficiency E = S / P and the largest
absolute difference from the CPU baseline's output on the same inputs.

A variant that cannot run here (no CUDA, no OpenCL GPU) is listed with the reason instead of numbers.
The table is printed last and every number is written as JSON (``--gpu-json``).
Options are prefixed ``--gpu-`` because ``vla-accel bench`` shares one parser between its modes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_accel.core.metrics import parallel_efficiency, percentiles, speedup
from vla_accel.errors import VlaAccelError

# name -> (backend, precision, extra options)
VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "torch-cpu": ("torch", "fp32", {}),
    "cuda-fp32": ("cuda", "fp32", {"cuda_graphs": False}),
    "cuda-fp32-graph": ("cuda", "fp32", {"cuda_graphs": True}),
    "cuda-fp16": ("cuda", "fp16", {"cuda_graphs": False}),
    "cuda-fp16-graph": ("cuda", "fp16", {"cuda_graphs": True}),
    "cuda-bf16": ("cuda", "bf16", {"cuda_graphs": False}),
    "cuda-bf16-graph": ("cuda", "bf16", {"cuda_graphs": True}),
    "cuda-fp16-compile": ("cuda", "fp16", {"compile": "reduce-overhead"}),
    "opencl": ("opencl", "fp32", {}),
}
DEFAULT_VARIANTS = [v for v in VARIANTS if not v.endswith("compile")]


@dataclass
class Row:
    model: str
    variant: str
    backend: str
    precision: str
    batch: int
    device: str = ""
    parallel_units: int = 0
    iterations: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    throughput_sps: float = 0.0
    speedup: float = 0.0
    efficiency: float = 0.0
    max_abs_diff: float = float("nan")
    load_s: float = 0.0
    skipped: str = ""


def _option(parser: argparse.ArgumentParser, flag: str, **kwargs) -> None:
    # ``vla-accel bench`` calls every mode's add_arguments on one parser: never add a flag twice.
    if flag not in parser._option_string_actions:  # noqa: SLF001 (argparse has no public lookup)
        parser.add_argument(flag, **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _option(parser, "--gpu-models", default="tiny,base", help="comma-separated models (gpu mode)")
    _option(parser, "--gpu-batches", default="1,32", help="comma-separated batch sizes (gpu mode)")
    _option(parser, "--gpu-variants", default=",".join(DEFAULT_VARIANTS),
            help=f"comma-separated variants out of {', '.join(VARIANTS)} (gpu mode)")
    _option(parser, "--gpu-seconds", type=float, default=1.5, help="timed seconds per row (gpu mode)")
    _option(parser, "--gpu-min-iters", type=int, default=5, help="at least this many timed runs per row")
    _option(parser, "--gpu-warmup", type=int, default=5, help="untimed runs per row before timing")
    _option(parser, "--gpu-cpu-threads", type=int, default=0,
            help="threads of the torch CPU baseline (0 = min(16, cores))")
    _option(parser, "--gpu-device", default="", help="cuda device, e.g. cuda:0 (gpu mode)")
    _option(parser, "--gpu-opencl-device", default="", help="opencl device selector (gpu mode; '' = first GPU)")
    _option(parser, "--gpu-json", default="", help="write every row as JSON here (gpu mode)")
    _option(parser, "--gpu-opencl-profile", action="store_true",
            help="also print the opencl backend's device time per stage (gpu mode)")
    _option(parser, "--gpu-parity", action="store_true",
            help="also check every variant against the committed reference outputs (gpu mode)")


def _time_backend(backend, inputs, batch, warmup, seconds, min_iters) -> tuple[list[float], np.ndarray]:
    from vla_accel.core.timing import time_calls

    last: dict = {}

    def call() -> None:
        last["output"] = backend.infer(inputs)

    latencies = time_calls(call, min_calls=min_iters, max_calls=100_000, seconds=seconds, warmup=warmup)
    return latencies, next(iter(last["output"].values()))


def run_benchmark(models, batches, variants, *, seconds=1.5, min_iters=5, warmup=5, cpu_threads=0,
                  cuda_device="", opencl_device="", log=print) -> list[Row]:
    from vla_accel.backends.base import BackendOptions
    from vla_accel.core.spec import example_inputs
    from vla_accel.backends.registry import create_backend
    from vla_accel.models import load_model

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise VlaAccelError(f"unknown gpu bench variants {unknown}; choose from {', '.join(VARIANTS)}")
    if "torch-cpu" not in variants:
        variants = ["torch-cpu", *variants]  # the baseline every speedup is measured against
    threads = cpu_threads or min(16, os.cpu_count() or 1)
    max_batch = max(batches)
    rows: list[Row] = []
    for model_name in models:
        bundle = load_model(model_name)
        bundle.load_weights()
        inputs_by_batch = {b: example_inputs(bundle.spec, b, seed=100 + b) for b in batches}
        for variant in variants:
            backend_name, precision, extra = VARIANTS[variant]
            device = {"cuda": cuda_device, "opencl": opencl_device}.get(backend_name, "")
            options = BackendOptions(device=device, precision=precision, max_batch=max_batch,
                                     threads=threads if backend_name == "torch" else 0, extra=dict(extra))
            t0 = time.perf_counter()
            try:
                backend = create_backend(backend_name, bundle, options).load()
                info = backend.device_info()
            except VlaAccelError as exc:
                log(f"[bench gpu] {model_name} {variant}: skipped: {exc}")
                rows += [Row(model_name, variant, backend_name, precision, b, skipped=str(exc)) for b in batches]
                continue
            load_s = time.perf_counter() - t0
            try:
                for batch in batches:
                    row = Row(model_name, variant, backend_name, precision, batch, device=info.device,
                              parallel_units=info.parallel_units, load_s=load_s)
                    try:
                        latencies, output = _time_backend(backend, inputs_by_batch[batch], batch, warmup,
                                                          seconds, min_iters)
                    except VlaAccelError as exc:
                        row.skipped = str(exc)
                        rows.append(row)
                        log(f"[bench gpu] {model_name} {variant} b{batch}: failed: {exc}")
                        continue
                    row.iterations = len(latencies)
                    row.latency_ms = percentiles(latencies)
                    row.throughput_sps = batch / (row.latency_ms["mean"] / 1e3)
                    row.max_abs_diff = float("nan")
                    row._output = output  # type: ignore[attr-defined]  (parity, dropped before JSON)
                    rows.append(row)
                    log(f"[bench gpu] {model_name} {variant} b{batch}: p50 {row.latency_ms['p50']:.3f} ms "
                        f"({row.iterations} runs)")
            finally:
                backend.close()
        _fill_relative(rows, model_name)
    return rows


def _fill_relative(rows: list[Row], model_name: str) -> None:
    baseline = {r.batch: r for r in rows if r.model == model_name and r.variant == "torch-cpu" and not r.skipped}
    for row in rows:
        if row.model != model_name or row.skipped:
            continue
        base = baseline.get(row.batch)
        if base is None:
            continue
        row.speedup = speedup(base.latency_ms["p50"], row.latency_ms["p50"])
        row.efficiency = parallel_efficiency(row.speedup, row.parallel_units)
        row.max_abs_diff = float(np.max(np.abs(row._output - base._output)))  # type: ignore[attr-defined]
    for row in rows:
        if row.model == model_name and hasattr(row, "_output"):
            del row._output


def format_table(rows: list[Row]) -> str:
    header = (f"{'model':6} {'variant':18} {'batch':>5} {'p50 ms':>9} {'p99 ms':>9} {'samples/s':>10} "
              f"{'speedup':>8} {'E=S/P':>7} {'max|diff|':>10}  device")
    lines = [header, "-" * len(header)]
    for r in rows:
        if r.skipped:
            lines.append(f"{r.model:6} {r.variant:18} {r.batch:>5}  skipped: {r.skipped[:90]}")
            continue
        lines.append(
            f"{r.model:6} {r.variant:18} {r.batch:>5} {r.latency_ms['p50']:>9.3f} {r.latency_ms['p99']:>9.3f} "
            f"{r.throughput_sps:>10.1f} {r.speedup:>7.1f}x {r.efficiency:>7.3f} {r.max_abs_diff:>10.2e}  "
            f"{r.device} (P={r.parallel_units})"
        )
    return "\n".join(lines)


def reference_parity(models: list[str], variants: list[str], cuda_device: str = "", opencl_device: str = "",
                     log=print) -> list[dict[str, Any]]:
    """Max |a - a_ref| of each variant against the committed torch CPU fp32 reference outputs
    (test/data/reference/<model>_fp32.npz), with the tolerance the tests apply."""
    from vla_accel.backends.base import BackendOptions
    from vla_accel.backends.registry import create_backend
    from vla_accel.models import load_model
    from vla_accel.models.reference import TOLERANCES, load_reference

    results = []
    for model_name in models:
        bundle = load_model(model_name)
        case = load_reference(bundle)
        batch = next(iter(case.inputs.values())).shape[0]
        for variant in variants:
            backend_name, precision, extra = VARIANTS[variant]
            if backend_name == "torch" or "compile" in extra:
                continue  # compile computes what the eager variant does; its bench row has max|diff| too
            device = {"cuda": cuda_device, "opencl": opencl_device}.get(backend_name, "")
            options = BackendOptions(device=device, precision=precision, max_batch=batch, extra=dict(extra))
            entry: dict[str, Any] = {"model": model_name, "variant": variant, "precision": precision,
                                     "tolerance": 1e-3 if backend_name == "opencl" else TOLERANCES[precision]}
            try:
                with create_backend(backend_name, bundle, options) as backend:
                    for _ in range(5):  # past the eager warm-up passes: the graph replay is what is checked
                        got = backend.infer(case.inputs)[bundle.spec.action.output]
                entry["max_abs_diff"] = float(np.max(np.abs(got - case.actions)))
                entry["ok"] = bool(entry["max_abs_diff"] < entry["tolerance"])
            except VlaAccelError as exc:
                entry["skipped"] = str(exc)
            log(f"[bench gpu] parity {model_name} {variant}: {entry.get('max_abs_diff', entry.get('skipped'))}")
            results.append(entry)
    return results


def opencl_profile(models: list[str], batches: list[int], opencl_device: str = "", log=print) -> list[dict[str, Any]]:
    """OpenCL event-profiled device time per stage (ms) of one forward pass, per model and batch."""
    from vla_accel.backends.base import BackendOptions
    from vla_accel.core.spec import example_inputs
    from vla_accel.backends.registry import create_backend
    from vla_accel.models import load_model

    results = []
    for model_name in models:
        bundle = load_model(model_name)
        try:
            backend = create_backend("opencl", bundle, BackendOptions(device=opencl_device, max_batch=max(batches)))
            backend.load()
        except VlaAccelError as exc:
            log(f"[bench gpu] opencl profile {model_name}: skipped: {exc}")
            continue
        try:
            for batch in batches:
                stages = backend.profile(example_inputs(bundle.spec, batch, seed=batch), repeats=3)
                results.append({"model": model_name, "batch": batch, "device": backend.device_info().device,
                                "stages_ms": stages})
        finally:
            backend.close()
    return results


def _machine() -> dict[str, Any]:
    from vla_accel.core.machine import machine_info

    info: dict[str, Any] = {**machine_info(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except ImportError:
        info["torch"] = None
    return info


def _split(text: Any, kind=str) -> list:
    if isinstance(text, (list, tuple)):
        return [kind(v) for v in text]
    return [kind(v.strip()) for v in str(text).split(",") if v.strip()]


def run(args: argparse.Namespace) -> int:
    models = _split(args.gpu_models)
    batches = _split(args.gpu_batches, int)
    variants = _split(args.gpu_variants)
    threads = args.gpu_cpu_threads or min(16, os.cpu_count() or 1)
    started = time.time()
    rows = run_benchmark(models, batches, variants, seconds=args.gpu_seconds, min_iters=args.gpu_min_iters,
                         warmup=args.gpu_warmup, cpu_threads=threads, cuda_device=args.gpu_device,
                         opencl_device=args.gpu_opencl_device,
                         log=lambda msg: print(msg, file=sys.stderr, flush=True))
    parity = []
    if args.gpu_parity:
        parity = reference_parity(models, [v for v in variants if v != "torch-cpu"], args.gpu_device,
                                  args.gpu_opencl_device, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    profiles = []
    if args.gpu_opencl_profile:
        profiles = opencl_profile(models, batches, args.gpu_opencl_device,
                                  log=lambda msg: print(msg, file=sys.stderr, flush=True))
    if sys.argv[1:3] == ["bench", "gpu"]:
        command = "vla-accel bench gpu " + " ".join(sys.argv[3:])
    elif sys.argv and sys.argv[0].endswith(("gpu.py", "vla_accel.benchmarks.gpu")):
        command = "python -m vla_accel.benchmarks.gpu " + " ".join(sys.argv[1:])
    else:
        command = " ".join(sys.argv)
    report = {
        "command": command,
        "machine": _machine(),
        "cpu_baseline_threads": threads,
        "seconds_per_row": args.gpu_seconds,
        "wall_s": round(time.time() - started, 1),
        "rows": [asdict(r) for r in rows],
        "parity_vs_reference": parity,
        "opencl_profile": profiles,
    }
    if args.gpu_json:
        path = Path(args.gpu_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=float), encoding="utf-8")
    machine = report["machine"]
    print(f"GPU benchmark on {machine.get('gpu', 'no CUDA GPU')} + {machine.get('cpu')} "
          f"(CPU baseline: torch fp32 eager, {threads} threads); latency per batch, host to host")
    print(format_table(rows))
    for entry in profiles:
        total = sum(entry["stages_ms"].values())
        top = sorted(entry["stages_ms"].items(), key=lambda kv: -kv[1])[:6]
        print(f"opencl device time {entry['model']} b{entry['batch']}: {total:.2f} ms = "
              + ", ".join(f"{stage} {ms:.2f}" for stage, ms in top))
    for entry in parity:
        verdict = entry.get("skipped") or (f"max|diff| {entry['max_abs_diff']:.2e} (tolerance {entry['tolerance']:g}) "
                                           f"{'ok' if entry['ok'] else 'FAIL'}")
        print(f"parity vs committed reference: {entry['model']:6} {entry['variant']:18} {verdict[:110]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vla_accel.benchmarks.gpu", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
