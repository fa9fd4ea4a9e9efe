"""``vla-accel bench batching``: multi-stream micro-batching vs one frame per inference.

Several streams (``--batching-streams``, default 4: cameras or robots sharing one accelerator) each
always have a fresh frame waiting (saturating feeders). The same engine is driven by an
InferenceLoop with ``batch_size=1`` and with ``batch_size=streams`` (waiting at most
``--batching-delay-ms`` for the streams to fill a batch), alternating ``--batching-rounds`` times for
``--seconds`` each, so load from other processes falls on both alike. Reported: frames/s over all
streams (the ratio is the result), total latency p50 / p99 per frame, mean batch size.

With ``--batching-gpu-backend`` (default ``cuda``) available, the same comparison runs there with
``--batching-gpu-batch`` streams (default 32) at batch 32 vs batch 1; where that backend cannot run,
the row says what is missing.
"""
from __future__ import annotations

import argparse
from typing import Any

from vla_accel.benchmarks.common import (
    INPUT_KINDS,
    ChunkLog,
    Feeder,
    FrameSource,
    backend_name,
    build_engine,
    format_rows,
    log,
    machine_info,
    run_loop,
    threads_option,
    write_json,
)
from vla_accel.core import metrics
from vla_accel.errors import BackendError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("batching mode")
    group.add_argument("--batching-streams", type=int, default=4, help="streams sharing the backend (default: 4)")
    group.add_argument("--batching-delay-ms", type=float, default=5.0,
                       help="longest wait for a batch to fill, from its oldest frame (default: 5)")
    group.add_argument("--batching-input", choices=sorted(INPUT_KINDS), default="raw480",
                       help="camera frames (default: raw480, sensor_msgs/Image rgb8 640x480)")
    group.add_argument("--batching-rounds", type=int, default=2, help="alternations, --seconds each (default: 2)")
    group.add_argument("--batching-gpu-backend", default="cuda",
                       help="GPU backend for the large-batch comparison; 'none' skips it (default: cuda)")
    group.add_argument("--batching-gpu-batch", type=int, default=32, help="GPU batch size / streams (default: 32)")


def compare(model: str, backend: str, streams: int, delay_ms: float, kind: str, seconds: float, rounds: int,
            threads: int) -> dict[str, Any]:
    """batch 1 vs batch ``streams`` on one engine; returns both variants and the ratio."""
    from vla_accel.core.scheduling import InferenceLoop

    engine = build_engine(model, backend, max_batch=streams, threads=threads)
    source = FrameSource(engine.spec, kind)
    names = [f"/robot{i}" for i in range(streams)]
    sums = {1: [0, 0.0, []], streams: [0, 0.0, []]}
    try:
        # Warm both batch sizes outside the timed rounds: the cuda backend captures a CUDA graph per
        # batch size on first use, which would otherwise eat the first round (seen: 0 frames/s).
        for batch in (1, streams):
            engine.backend.warmup(batch_size=batch, iterations=3)
        for r in range(rounds):
            for batch in (1, streams):
                chunks = ChunkLog()
                loop = InferenceLoop(engine, batch_size=batch, max_batch_delay_ms=delay_ms if batch > 1 else 0.0,
                                     on_chunks=chunks.on_chunks, on_error=chunks.on_error, name=f"batch{batch}")
                loop.register_streams(names)
                result = run_loop(loop, Feeder(loop, source, names), seconds)
                per_stream = {n: sum(1 for e in chunks.entries if e[2] == n) for n in names}
                result["per_stream"] = per_stream
                result["errors"] = len(chunks.errors)
                sums[batch][0] += result["processed"]
                sums[batch][1] += result["seconds"]
                sums[batch][2].append(result)
                log(f"[batching] {backend} round {r + 1} batch {batch:3d}: "
                    f"{metrics.throughput(result['processed'], result['seconds']):7.1f} frames/s, mean batch "
                    f"{result['snapshot'].mean_batch_size:.2f}, per stream min/max "
                    f"{min(per_stream.values())}/{max(per_stream.values())}")
    finally:
        engine.close()
    variants = {}
    for batch, (frames, secs, runs) in sums.items():
        snap = runs[-1]["snapshot"]
        variants[f"batch{batch}"] = {
            "batch_size": batch,
            "throughput_fps": metrics.throughput(frames, secs),
            "frames": frames,
            "seconds": secs,
            "mean_batch_size": snap.mean_batch_size,
            "infer_p50_ms": snap.stage("infer")["p50"],
            "total_latency_p50_ms": snap.stage("total")["p50"],
            "total_latency_p99_ms": snap.stage("total")["p99"],
            "per_stream_last_round": runs[-1]["per_stream"],
            "errors": sum(r["errors"] for r in runs),
        }
    single, batched = variants["batch1"], variants[f"batch{streams}"]
    return {
        "backend": backend,
        "streams": streams,
        "delay_ms": delay_ms,
        "variants": variants,
        "batched_over_single": metrics.speedup(1.0 / max(single["throughput_fps"], 1e-9),
                                               1.0 / max(batched["throughput_fps"], 1e-9)),
    }


def run(args: argparse.Namespace) -> int:
    backend = backend_name(args)
    threads = threads_option(args)
    seconds = float(args.seconds)
    rounds = max(1, int(args.batching_rounds))
    log(f"[batching] model {args.model}, {args.batching_streams} streams on {backend}, input "
        f"{args.batching_input}, {rounds} x {seconds:g}s per variant")
    report: dict[str, Any] = {"benchmark": "batching", "model": args.model, "input": args.batching_input,
                              "machine": machine_info(), "threads": threads, "comparisons": []}
    report["comparisons"].append(compare(args.model, backend, args.batching_streams, args.batching_delay_ms,
                                         args.batching_input, seconds, rounds, threads))
    gpu = args.batching_gpu_backend
    if gpu and gpu != "none" and gpu != backend:
        try:
            report["comparisons"].append(compare(args.model, gpu, args.batching_gpu_batch, args.batching_delay_ms,
                                                 args.batching_input, seconds, rounds, threads))
        except BackendError as exc:
            report["comparisons"].append({"backend": gpu, "streams": args.batching_gpu_batch, "not_run": str(exc)})
            log(f"[batching] {gpu}: not run: {exc}")
    print(format_report(report))
    write_json(args, report)
    return 0


def format_report(report: dict[str, Any]) -> str:
    rows, notes = [], []
    for comp in report["comparisons"]:
        if "not_run" in comp:
            notes.append(f"{comp['backend']} batch {comp['streams']} vs 1: not run: {comp['not_run']}")
            continue
        for v in comp["variants"].values():
            rows.append((comp["backend"], comp["streams"], v["batch_size"], f"{v['throughput_fps']:.1f}",
                         f"{v['mean_batch_size']:.2f}", f"{v['infer_p50_ms']:.2f}",
                         f"{v['total_latency_p50_ms']:.1f}", f"{v['total_latency_p99_ms']:.1f}"))
        notes.append(f"{comp['backend']}: micro-batched ({comp['streams']} streams, <= {comp['delay_ms']:g} ms wait) / "
                     f"batch 1 throughput = {comp['batched_over_single']:.2f}x")
    machine = report["machine"]
    head = (f"batching: model {report['model']}, input {report['input']}, {machine['cpu']} "
            f"({machine['logical_cpus']} logical CPUs, load {machine['load_avg_1min_at_start']})")
    table = format_rows(("backend", "streams", "batch", "frames/s", "mean batch", "infer p50", "total p50",
                         "total p99"), rows) if rows else ""
    return "\n".join([head, table, *notes])
