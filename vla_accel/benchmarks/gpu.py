"""``vla-accel bench gpu`` (also ``python -m vla_accel.benchmarks.gpu``): the GPU benchmark.

In ONE process and one run, for each model and batch size: the same machine's torch CPU baseline
(fp32 eager, ``--gpu-cpu-threads`` threads), the ``cuda`` backend at fp32 / fp16 / bf16 with and
without CUDA graphs (optionally torch.compile "reduce-overhead"), and the ``opencl`` backend on the
first OpenCL GPU. Each row: latency p50 / p99 (ms, per batch, host to host: input copy, forward,
output copy), throughput (samples/s = batch / mean latency), speedup over the CPU baseline at the
same batch (p50 ratio, core.metrics.speedup), parallel efficiency E = S / P and the largest
absolute difference from the CPU baseline's output on the same inputs.

Beside the host-to-host latency, cuda rows give the device time of the program (CUDA events around
the enqueued work, p50) and every row repeats the CPU baseline's p50 and thread count (the ratio alone
misleads: the CPU baseline of one GPU machine kind moved by 2x between machines). Per model and batch
the physical floor is printed too: FLOPs / peak matrix rate and weight bytes / memory bandwidth, both
measured on this GPU at the start of the run (a large bf16 GEMM, a large device-to-device copy).

Variants beyond the precision / graph matrix: ``-plain`` runs the network in its plain layout (hand-written
attention, conv patch embedding), ``-pt2`` its torch.export program (what a user's ``.pt2`` policy is)
under CUDA graphs, ``-aoti`` the AOTInductor package of that program under CUDA graphs,
``-u8`` feeds 640x480 uint8 camera frames resized and normalised on the GPU (``CudaBackend.infer_frames``)
instead of float32 tensors at the network's size.

A variant that cannot run here (no CUDA, no OpenCL GPU) is listed with the reason instead of numbers;
so is a model that does not exist (yet) in this build, e.g. a flow-matching program before policy
programs are available. The table is printed last and every number is written as JSON (``--gpu-json``).
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
    # Inductor's fused kernels (no CUDA graphs of its own) inside the backend's CUDA graphs.
    "cuda-fp16-inductor-graph": ("cuda", "fp16", {"cuda_graphs": True, "compile": "default"}),
    "cuda-bf16-inductor-graph": ("cuda", "bf16", {"cuda_graphs": True, "compile": "default"}),
    "cuda-fp16-autotune-graph": ("cuda", "fp16", {"cuda_graphs": True, "compile": "max-autotune-no-cudagraphs"}),
    "cuda-bf16-autotune-graph": ("cuda", "bf16", {"cuda_graphs": True, "compile": "max-autotune-no-cudagraphs"}),
    "cuda-fp16-graph-plain": ("cuda", "fp16", {"cuda_graphs": True, "gpu_layout": False}),
    "cuda-bf16-graph-u8": ("cuda", "bf16", {"cuda_graphs": True, "frames": "640x480"}),
    "cuda-fp16-graph-u8": ("cuda", "fp16", {"cuda_graphs": True, "frames": "640x480"}),
    "cuda-bf16-pt2-graph": ("cuda", "bf16", {"cuda_graphs": True, "program": "pt2"}),
    "cuda-fp16-pt2-graph": ("cuda", "fp16", {"cuda_graphs": True, "program": "pt2"}),
    "cuda-bf16-aoti-graph": ("cuda", "bf16", {"cuda_graphs": True, "program": "aoti"}),
    "opencl": ("opencl", "fp32", {}),
}
_OWN_GRAPHS = ("reduce-overhead", "max-autotune")  # torch.compile modes with CUDA graphs of their own
# Options of a variant that the bench itself acts on (not passed to the backend).
_BENCH_ONLY = ("frames",)
DEFAULT_VARIANTS = [v for v in VARIANTS if not v.endswith(("compile", "pt2-graph", "aoti-graph", "autotune-graph"))]


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
    device_ms: dict[str, float] = field(default_factory=dict)  # CUDA events around the program (cuda rows)
    cpu_p50_ms: float = 0.0  # the CPU baseline's p50 at this batch (what the speedup divides)
    cpu_threads: int = 0
    input: str = "float32 tensors at the network's size"


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


def _time_backend(backend, inputs, batch, warmup, seconds, min_iters,
                  frames=None) -> tuple[list[float], list[float], np.ndarray]:
    """Host-to-host latencies (ms), device times (ms, where the backend measures them), last output."""
    from vla_accel.core.timing import time_calls

    if frames is None:
        infer = lambda: backend.infer(inputs)  # noqa: E731
    else:
        others = {k: v for k, v in inputs.items() if k not in frames}
        infer = lambda: backend.infer_frames(frames, others)  # noqa: E731
    last: dict = {}
    device: list[float] = []

    def call() -> None:
        last["output"] = infer()
        device.append(float(getattr(backend, "last_device_ms", float("nan"))))

    latencies = time_calls(call, min_calls=min_iters, max_calls=100_000, seconds=seconds, warmup=warmup)
    return latencies, device[len(device) - len(latencies):], next(iter(last["output"].values()))


def _camera_frames(spec, batch: int, size: str, seed: int) -> dict[str, np.ndarray]:
    """uint8 rgb camera frames (B, H, W, 3) of ``size`` ("WxH") per camera, seeded."""
    width, height = (int(v) for v in size.lower().split("x"))
    rng = np.random.default_rng(seed)
    return {cam.input: rng.integers(0, 256, size=(batch, height, width, 3), dtype=np.uint8) for cam in spec.cameras}


def _frames_as_tensors(spec, frames: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same frames through the CPU preprocessing: the float inputs the CPU baseline gets."""
    from vla_accel.core.preprocess import _CameraWriter

    out = dict(inputs)
    for cam in spec.cameras:
        tensor = np.zeros((len(frames[cam.input]), *cam.shape), dtype=np.float32)
        writer = _CameraWriter(cam)
        for i, frame in enumerate(frames[cam.input]):
            writer.write(frame, tensor[i])
        out[cam.input] = tensor
    return out


def measure_ceilings(device: str = "", log=print) -> dict[str, float]:
    """This GPU's matrix rate (bf16 8192^3 GEMM, TFLOP/s) and copy bandwidth (device-to-device,
    bytes read + written, GB/s): the denominators of the physical floor. Empty without CUDA."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    dev = torch.device(device or "cuda:0")
    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    src = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(fn, reps):
        for _ in range(3):
            fn()
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / reps / 1e3

    gemm_s = timed(lambda: torch.mm(a, b), 10)
    copy_s = timed(lambda: dst.copy_(src), 10)
    result = {"matmul_bf16_tflops": 2 * n**3 / gemm_s / 1e12, "copy_gbps": 2 * src.numel() / copy_s / 1e9}
    del a, b, src, dst
    torch.cuda.empty_cache()
    log(f"[bench gpu] ceilings: bf16 GEMM {result['matmul_bf16_tflops']:.0f} TFLOP/s, "
        f"copy {result['copy_gbps']:.0f} GB/s")
    return result


def physical_floor(bundle, batch: int, ceilings: dict[str, float], bytes_per_weight: int = 2) -> dict[str, float]:
    """FLOPs / peak and (weights + inputs + outputs) bytes / bandwidth for one call, in ms."""
    spec = bundle.spec
    if getattr(bundle, "is_program", False):
        # A chunk reads the prefix weights once and the step graph's weights at every step.
        stats = bundle.program_stats(batch)
        flops = int(stats["flops_per_chunk"] or 0)
        weight_bytes = sum((stats["graphs"][n]["parameters"] or 0) * calls
                           for n, calls in stats["calls_per_chunk"].items() if n in stats["graphs"]) * bytes_per_weight
    else:
        flops = bundle.flops(batch)
        weight_bytes = bundle.parameter_count() * bytes_per_weight
    from vla_accel.core.spec import input_signature

    io_bytes = batch * (sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in input_signature(spec).values())
                        + spec.action.steps * spec.action.dims * 4)
    floor = {"gflop": flops / 1e9, "weight_mb": weight_bytes / 1e6, "io_mb": io_bytes / 1e6}
    if ceilings:
        floor["compute_ms"] = flops / (ceilings["matmul_bf16_tflops"] * 1e12) * 1e3
        floor["memory_ms"] = (weight_bytes + io_bytes) / (ceilings["copy_gbps"] * 1e9) * 1e3
        floor["floor_ms"] = max(floor["compute_ms"], floor["memory_ms"])
    return floor


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
        try:
            bundle = load_model(model_name)
            if not getattr(bundle, "is_program", False):
                bundle.load_weights()
        except VlaAccelError as exc:
            log(f"[bench gpu] {model_name}: skipped: {exc}")
            rows += [Row(model_name, v, VARIANTS[v][0], VARIANTS[v][1], b, skipped=f"model unavailable: {exc}")
                     for v in variants for b in batches]
            continue
        frames_by_batch: dict[int, dict[str, np.ndarray]] = {}
        program = getattr(bundle.spec, "program", None)
        is_program = program is not None and program.kind != "single_pass"
        model_batches = [b for b in batches if b == 1] if is_program else list(batches)
        inputs_by_batch = {b: example_inputs(bundle.spec, b, seed=100 + b) for b in model_batches}
        if is_program:
            # Policy programs at batch 1 (where a robot runs them), every variant with the same seeded
            # start noise, so that max|diff| compares the same computation.
            shape = (bundle.spec.action.steps, bundle.spec.action.dims)
            for b in model_batches:
                inputs_by_batch[b][program.noise] = np.random.default_rng(300 + b).standard_normal(
                    (b, *shape)).astype(np.float32)
            rows += [Row(model_name, v, VARIANTS[v][0], VARIANTS[v][1], b,
                         skipped="policy programs are measured at batch 1")
                     for v in variants for b in batches if b not in model_batches]
        if any("frames" in VARIANTS[v][2] for v in variants) and not is_program:
            # One input set for every variant: the frames, and the CPU preprocessing of them for
            # the tensor-fed variants, so that max|diff| compares like with like.
            sizes = {VARIANTS[v][2]["frames"] for v in variants if "frames" in VARIANTS[v][2]}
            size = sorted(sizes)[0]
            frames_by_batch = {b: _camera_frames(bundle.spec, b, size, seed=200 + b) for b in model_batches}
            inputs_by_batch = {b: _frames_as_tensors(bundle.spec, frames_by_batch[b], inputs_by_batch[b])
                               for b in model_batches}
        for variant in variants:
            backend_name, precision, extra = VARIANTS[variant]
            device = {"cuda": cuda_device, "opencl": opencl_device}.get(backend_name, "")
            backend_extra = {k: v for k, v in extra.items() if k not in _BENCH_ONLY}
            options = BackendOptions(device=device, precision=precision, max_batch=max(model_batches),
                                     threads=threads if backend_name == "torch" else 0, extra=backend_extra)
            if is_program and ("frames" in extra or extra.get("program") or extra.get("compile") in _OWN_GRAPHS):
                rows += [Row(model_name, variant, backend_name, precision, b,
                             skipped="a single-pass variant (uint8 frames, .pt2 programs, torch.compile's own graphs)")
                         for b in model_batches]
                continue
            t0 = time.perf_counter()
            try:
                backend = create_backend(backend_name, bundle, options).load()
                info = backend.device_info()
            except VlaAccelError as exc:
                log(f"[bench gpu] {model_name} {variant}: skipped: {exc}")
                rows += [Row(model_name, variant, backend_name, precision, b, skipped=str(exc)) for b in model_batches]
                continue
            load_s = time.perf_counter() - t0
            try:
                for batch in model_batches:
                    row = Row(model_name, variant, backend_name, precision, batch, device=info.device,
                              parallel_units=info.parallel_units, load_s=load_s)
                    frames = frames_by_batch.get(batch) if "frames" in extra else None
                    if frames is not None:
                        row.input = f"uint8 {extra['frames']} frames, resized and normalised on the GPU"
                    try:
                        latencies, device_times, output = _time_backend(
                            backend, inputs_by_batch[batch], batch, warmup, seconds, min_iters, frames)
                    except VlaAccelError as exc:
                        row.skipped = str(exc)
                        rows.append(row)
                        log(f"[bench gpu] {model_name} {variant} b{batch}: failed: {exc}")
                        continue
                    row.iterations = len(latencies)
                    row.latency_ms = percentiles(latencies)
                    row.device_ms = percentiles(device_times) if np.isfinite(device_times).any() else {}
                    row.cpu_threads = threads
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
        row.cpu_p50_ms = base.latency_ms["p50"]
        row.speedup = speedup(base.latency_ms["p50"], row.latency_ms["p50"])
        row.efficiency = parallel_efficiency(row.speedup, row.parallel_units)
        row.max_abs_diff = float(np.max(np.abs(row._output - base._output)))  # type: ignore[attr-defined]
    for row in rows:
        if row.model == model_name and hasattr(row, "_output"):
            del row._output


def format_table(rows: list[Row]) -> str:
    header = (f"{'model':6} {'variant':22} {'batch':>5} {'p50 ms':>9} {'p99 ms':>9} {'dev ms':>8} {'samples/s':>10} "
              f"{'speedup':>8} {'cpu ms':>9} {'thr':>3} {'E=S/P':>7} {'max|diff|':>10}  device")
    lines = [header, "-" * len(header)]
    for r in rows:
        if r.skipped:
            lines.append(f"{r.model:6} {r.variant:22} {r.batch:>5}  skipped: {r.skipped[:90]}")
            continue
        dev = f"{r.device_ms['p50']:>8.3f}" if r.device_ms else f"{'-':>8}"
        lines.append(
            f"{r.model:6} {r.variant:22} {r.batch:>5} {r.latency_ms['p50']:>9.3f} {r.latency_ms['p99']:>9.3f} {dev} "
            f"{r.throughput_sps:>10.1f} {r.speedup:>7.1f}x {r.cpu_p50_ms:>9.2f} {r.cpu_threads:>3} "
            f"{r.efficiency:>7.3f} {r.max_abs_diff:>10.2e}  {r.device} (P={r.parallel_units})"
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
        if getattr(bundle, "is_program", False):
            continue  # programs: the bench rows carry max|diff| against the CPU run with the same noise
        case = load_reference(bundle)
        batch = next(iter(case.inputs.values())).shape[0]
        for variant in variants:
            backend_name, precision, extra = VARIANTS[variant]
            if backend_name == "torch" or extra.get("compile") in _OWN_GRAPHS or "frames" in extra:
                continue  # torch.compile's graphs replay what the eager variant does; frames: checked by the tests
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


# What the GPU path must reach on an H100/H200 class GPU (ms): base at batch 1 with graphs on the
# device and host to host, base at batch 32 host to host, a 10-step flow program at batch 1.
GOALS_MS = {"base_b1_device": 0.5, "base_b1_host": 0.7, "base_b32_host": 6.0, "base-flow_b1_host": 3.0}
FLOW_GRAPH_SPEEDUP = 5.0  # base-flow: the whole chunk as one CUDA graph against eager torch on the same GPU


def goal_check(rows: list[Row]) -> list[dict[str, Any]]:
    """The best 16-bit graph row (tensor inputs, any program) per goal, against its target."""
    def best(model, batch, key):
        candidates = [r for r in rows if r.model == model and r.batch == batch and not r.skipped
                      and r.backend == "cuda" and r.precision in ("fp16", "bf16") and "graph" in r.variant
                      and "plain" not in r.variant and "u8" not in r.variant]
        if key == "device":
            candidates = [r for r in candidates if r.device_ms]
            return min(candidates, key=lambda r: r.device_ms["p50"], default=None)
        return min(candidates, key=lambda r: r.latency_ms["p50"], default=None)

    out = []
    eager = [r for r in rows if r.model == "base-flow" and r.batch == 1 and not r.skipped and r.backend == "cuda"
             and "graph" not in r.variant]
    graph = best("base-flow", 1, "host")
    entry: dict[str, Any] = {"goal": "base-flow_b1_graph_over_eager", "target_ratio": FLOW_GRAPH_SPEEDUP}
    same = [r for r in eager if graph is not None and r.precision == graph.precision]
    if graph is None or not same:
        entry["result"] = "not measured in this run"
    else:
        ratio = same[0].latency_ms["p50"] / graph.latency_ms["p50"]
        entry.update(variant=graph.variant, eager_variant=same[0].variant, ratio=ratio,
                     met=bool(ratio >= FLOW_GRAPH_SPEEDUP))
        entry["result"] = (f"{ratio:.1f}x ({same[0].variant} {same[0].latency_ms['p50']:.3f} ms -> {graph.variant} "
                           f"{graph.latency_ms['p50']:.3f} ms) {'met' if ratio >= FLOW_GRAPH_SPEEDUP else 'NOT met'}")
    flow_goal = entry
    for goal, target in GOALS_MS.items():
        subject, kind = goal.rsplit("_", 1)
        model, batch = subject.rsplit("_b", 1)
        row = best(model, int(batch), kind)
        entry: dict[str, Any] = {"goal": goal, "target_ms": target}
        if row is None:
            entry["result"] = "not measured in this run"
        else:
            value = row.device_ms["p50"] if kind == "device" else row.latency_ms["p50"]
            entry.update(variant=row.variant, measured_ms=value, met=bool(value <= target))
            entry["result"] = f"{value:.3f} ms ({row.variant}) {'met' if value <= target else 'NOT met'}"
        out.append(entry)
    out.append(flow_goal)
    return out


def _floors(models: list[str], batches: list[int], ceilings: dict[str, float]) -> list[dict[str, Any]]:
    from vla_accel.models import load_model

    out = []
    for model_name in models:
        try:
            bundle = load_model(model_name)
            program = getattr(bundle.spec, "program", None)
            if program is not None and program.kind != "single_pass":
                batches = [b for b in batches if b == 1]  # programs are measured at batch 1
            floors = [physical_floor(bundle, b, ceilings) for b in batches]
        except (VlaAccelError, ValueError):
            continue  # a model whose FLOPs cannot be counted here
        out += [{"model": model_name, "batch": b, **f} for b, f in zip(batches, floors)]
    return out


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
    logger = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    ceilings = measure_ceilings(args.gpu_device, log=logger)
    rows: list[Row] = []
    for model in models:
        rows += run_benchmark([model], batches, variants, seconds=args.gpu_seconds, min_iters=args.gpu_min_iters,
                              warmup=args.gpu_warmup, cpu_threads=threads, cuda_device=args.gpu_device,
                              opencl_device=args.gpu_opencl_device, log=logger)
        if args.gpu_json:  # what is measured so far survives a crash in a later model
            _write_json(args.gpu_json, {"complete": False, "ceilings": ceilings, "rows": [asdict(r) for r in rows]})
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
    floors = _floors(models, batches, ceilings)
    report = {
        "command": command,
        "machine": _machine(),
        "cpu_baseline_threads": threads,
        "ceilings": ceilings,
        "physical_floor": floors,
        "goals": goal_check(rows),
        "seconds_per_row": args.gpu_seconds,
        "wall_s": round(time.time() - started, 1),
        "rows": [asdict(r) for r in rows],
        "parity_vs_reference": parity,
        "opencl_profile": profiles,
    }
    if args.gpu_json:
        _write_json(args.gpu_json, {"complete": True, **report})
    machine = report["machine"]
    print(f"GPU benchmark on {machine.get('gpu', 'no CUDA GPU')} + {machine.get('cpu')} "
          f"(CPU baseline: torch fp32 eager, {threads} threads); latency per batch, host to host")
    print(format_table(rows))
    if ceilings:
        print(f"physical floor (this GPU: bf16 GEMM {ceilings['matmul_bf16_tflops']:.0f} TFLOP/s, copy "
              f"{ceilings['copy_gbps']:.0f} GB/s; weights in 16-bit):")
    for entry in report["goals"]:
        target = f"<= {entry['target_ms']:g} ms" if "target_ms" in entry else f">= {entry['target_ratio']:g}x"
        print(f"goal {entry['goal']:30} {target}: {entry['result']}")
    for entry in floors:
        if "floor_ms" in entry:
            print(f"  {entry['model']:6} b{entry['batch']:<3} {entry['gflop']:8.1f} GFLOP -> {entry['compute_ms']:.3f} ms;"
                  f" {entry['weight_mb'] + entry['io_mb']:7.1f} MB -> {entry['memory_ms']:.3f} ms;"
                  f" floor {entry['floor_ms']:.3f} ms")
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


def _write_json(path: str, report: dict[str, Any]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2, default=float), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vla_accel.benchmarks.gpu", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
