"""``vla-accel bench memory``: the engine's input-buffer strategies (static, pool, dynamic) compared on
allocations per frame and latency jitter, on one backend, in one run.

Allocations (tracemalloc, started once the engines are warm, so it sees steady state only): for
``--memory-alloc-frames`` frames per strategy, each stage (prepare, run, finish) is measured for

* transient bytes: tracemalloc's peak during the stage minus the traced size before it (every
  Python and numpy allocation the stage makes, even one freed before the stage returns);
* new numpy buffers: numpy data blocks alive after the stage that were not before it (count and
  bytes; numpy reports its data allocations to tracemalloc in its own domain), i.e. arrays the
  stage allocated and handed on;
* retained bytes after the whole frame (a leak check: must be ~0 in steady state for every strategy).

Static buffers must show 0 new numpy buffers and no image-sized transient in ``prepare``; dynamic
allocates a fresh input set per batch; pool checks preallocated sets out and back. ``run`` (the
runtime's output arrays) and ``finish`` (the chunk's values) allocate for every strategy: they are
reported so the preprocess figures can be read against them. JPEG input always allocates the decoded
frame, so the default input is raw (sensor_msgs/Image rgb8).

Jitter: ``--memory-frames`` frames per strategy, interleaved frame by frame across strategies
(without tracemalloc, which slows allocation down), latency of prepare + run + finish; jitter =
p99 - p50 (core.metrics).
"""
from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from typing import Any

import numpy as np

from vla_accel.benchmarks.common import (
    INPUT_KINDS,
    FrameSource,
    backend_name,
    format_rows,
    log,
    machine_info,
    threads_option,
    write_json,
)
from vla_accel.core import metrics

STRATEGIES = ("static", "pool", "dynamic")
STAGES = ("prepare", "run", "finish")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("memory mode")
    group.add_argument("--memory-input", choices=sorted(INPUT_KINDS), default="raw480",
                       help="camera frames (default: raw480; JPEG always allocates its decoded frame)")
    group.add_argument("--memory-frames", type=int, default=300,
                       help="frames per strategy for the jitter measurement (default: 300)")
    group.add_argument("--memory-alloc-frames", type=int, default=30,
                       help="frames per strategy measured with tracemalloc (default: 30)")
    group.add_argument("--memory-batch", type=int, default=1, help="observations per batch (default: 1)")


def _numpy_domain() -> int:
    return int(getattr(np.lib, "tracemalloc_domain", 389047))


def _numpy_blocks(snapshot: tracemalloc.Snapshot, domain: int) -> tuple[int, int]:
    traces = snapshot.filter_traces([tracemalloc.DomainFilter(True, domain)]).traces
    return len(traces), sum(t.size for t in traces)


_MEASURES = ("transient_bytes", "numpy_buffers_new", "numpy_bytes_new")


def _measure_stage(fn, domain: int, out: np.ndarray) -> Any:
    """Run ``fn`` and write its three measures into ``out`` (preallocated, so that recording the
    measurement does not itself show up as a retained allocation)."""
    before = tracemalloc.take_snapshot()
    blocks0, bytes0 = _numpy_blocks(before, domain)
    del before
    tracemalloc.reset_peak()
    size0 = tracemalloc.get_traced_memory()[0]
    result = fn()
    peak = tracemalloc.get_traced_memory()[1]
    after = tracemalloc.take_snapshot()
    blocks1, bytes1 = _numpy_blocks(after, domain)
    del after
    out[0] = max(0, peak - size0)
    out[1] = max(0, blocks1 - blocks0)
    out[2] = max(0, bytes1 - bytes0)
    return result


def allocation_pass(engine, observations: list, frames: int) -> dict[str, Any]:
    domain = _numpy_domain()
    frames = max(2, frames)
    measured = np.zeros((frames, len(STAGES), len(_MEASURES)))
    retained = np.zeros(frames)
    for i in range(frames):
        gc.collect()
        start_size = tracemalloc.get_traced_memory()[0]
        batch = _measure_stage(lambda: engine.prepare(observations), domain, measured[i, 0])
        outputs = _measure_stage(lambda: engine.run(batch), domain, measured[i, 1])
        chunks = _measure_stage(lambda: engine.finish(batch, outputs), domain, measured[i, 2])
        del batch, outputs, chunks
        gc.collect()
        retained[i] = tracemalloc.get_traced_memory()[0] - start_size
    # The first measured frame may still warm caches (e.g. a resize plan per source layout).
    means = measured[1:].mean(axis=0)
    summary: dict[str, Any] = {
        stage: {key: float(means[s, k]) for k, key in enumerate(_MEASURES)} for s, stage in enumerate(STAGES)
    }
    summary["retained_bytes_per_frame"] = float(retained[1:].mean())
    return summary


def top_prepare_sites(engine, observations: list, limit: int = 5) -> list[str]:
    """Where ``prepare`` allocates blocks that outlive it (file:line, bytes), for reports to the
    preprocessing owner when static is not allocation-free."""
    tracemalloc.stop()
    tracemalloc.start(8)
    try:
        engine.prepare(observations).release()  # same caches as the measured frames
        before = tracemalloc.take_snapshot()
        batch = engine.prepare(observations)
        after = tracemalloc.take_snapshot()
        batch.release()
    finally:
        tracemalloc.stop()
    stats = after.compare_to(before, "traceback")
    out = []
    for stat in stats[:limit]:
        if stat.size_diff <= 0:
            continue
        frame = next((f for f in stat.traceback if "vla_accel" in f.filename), stat.traceback[0])
        out.append(f"{frame.filename.split('vla_accel/')[-1]}:{frame.lineno} +{stat.size_diff} B "
                   f"({stat.count_diff} blocks)")
    return out


def run(args: argparse.Namespace) -> int:
    from vla_accel.backends.base import BackendOptions
    from vla_accel.backends.registry import create_backend
    from vla_accel.core.engine import Engine
    from vla_accel.models import load_model

    backend_label = backend_name(args)
    threads = threads_option(args)
    batch_size = max(1, args.memory_batch)
    bundle = load_model(args.model)
    backend = create_backend(backend_label, bundle, BackendOptions(threads=threads, max_batch=batch_size)).load()
    engines = {s: Engine(bundle, backend, max_batch=batch_size, memory=s) for s in STRATEGIES}
    source = FrameSource(bundle.spec, args.memory_input)
    observations = [source.observation(stream=f"s{i}") for i in range(batch_size)]
    log(f"[memory] model {args.model} on {backend_label} ({threads} thread(s)), input {args.memory_input}, "
        f"batch {batch_size}: {args.memory_frames} frames per strategy for jitter, "
        f"{args.memory_alloc_frames} under tracemalloc")
    results: dict[str, dict[str, Any]] = {s: {} for s in STRATEGIES}
    try:
        for engine in engines.values():
            engine.warmup(2)
            for _ in range(5):
                engine.infer(observations)
        latencies: dict[str, list[float]] = {s: [] for s in STRATEGIES}
        for _ in range(args.memory_frames):
            for strategy, engine in engines.items():
                t0 = time.perf_counter_ns()
                batch = engine.prepare(observations)
                engine.finish(batch, engine.run(batch))
                latencies[strategy].append((time.perf_counter_ns() - t0) / 1e6)
        for strategy in STRATEGIES:
            stats = metrics.percentiles(latencies[strategy])
            results[strategy]["latency_ms"] = {k: stats[k] for k in ("p50", "p99", "mean", "max")}
            results[strategy]["jitter_ms"] = stats["p99"] - stats["p50"]
        tracemalloc.start(1)
        try:
            for strategy, engine in engines.items():
                results[strategy]["allocations"] = allocation_pass(engine, observations, args.memory_alloc_frames)
        finally:
            tracemalloc.stop()
        static_pre = results["static"]["allocations"]["prepare"]
        if static_pre["numpy_buffers_new"] > 0:
            results["static"]["prepare_allocation_sites"] = top_prepare_sites(engines["static"], observations)
        buffer_bytes = {s: int(getattr(e.preprocessor.strategy, "allocated_bytes", 0)) for s, e in engines.items()}
    finally:
        backend.close()
    report = {
        "benchmark": "memory",
        "model": args.model,
        "backend": backend_label,
        "threads": threads,
        "input": args.memory_input,
        "batch": batch_size,
        "machine": machine_info(),
        "preallocated_input_bytes": buffer_bytes,
        "strategies": results,
    }
    print(format_report(report))
    write_json(args, report)
    return 0


def format_report(report: dict[str, Any]) -> str:
    rows = []
    for strategy, r in report["strategies"].items():
        a = r["allocations"]
        rows.append((
            strategy,
            f"{a['prepare']['numpy_buffers_new']:.1f}",
            f"{a['prepare']['numpy_bytes_new'] / 1024:.1f}",
            f"{a['prepare']['transient_bytes'] / 1024:.1f}",
            f"{a['run']['numpy_buffers_new']:.1f}/{a['run']['transient_bytes'] / 1024:.1f}",
            f"{a['finish']['numpy_buffers_new']:.1f}/{a['finish']['transient_bytes'] / 1024:.1f}",
            f"{a['retained_bytes_per_frame']:.0f}",
            f"{report['preallocated_input_bytes'][strategy] / 1024:.0f}",
            f"{r['latency_ms']['p50']:.2f}",
            f"{r['latency_ms']['p99']:.2f}",
            f"{r['jitter_ms']:.2f}",
        ))
    machine = report["machine"]
    lines = [
        f"memory: model {report['model']} on {report['backend']} ({report['threads']} thread(s)), input "
        f"{report['input']}, batch {report['batch']}, {machine['cpu']} ({machine['logical_cpus']} logical CPUs, "
        f"load {machine['load_avg_1min_at_start']}); per frame, steady state",
        format_rows(("memory", "pre np bufs", "pre np KiB", "pre transient KiB", "run bufs/KiB", "finish bufs/KiB",
                     "retained B", "prealloc KiB", "p50 ms", "p99 ms", "jitter ms"), rows),
        "pre = engine.prepare (decode, resize, normalise, tokenise into the input buffers); np bufs = numpy "
        "buffers allocated and still alive after the stage; transient = tracemalloc peak during the stage",
    ]
    sites = report["strategies"]["static"].get("prepare_allocation_sites")
    if sites:
        lines.append("static prepare allocates at: " + "; ".join(sites))
    return "\n".join(lines)
