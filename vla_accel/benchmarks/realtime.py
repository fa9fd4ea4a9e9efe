"""``vla-accel bench realtime``: latency under a paced camera input through the InferenceLoop.

1. Standalone: one frame at a time through the engine (no loop, no waiting) for ``--rt-standalone-s``;
   its p50 gives the rate the backend sustains, R = 1000 / p50.
2. Soak: frames at ``--rt-rate`` Hz (default 2 x R, i.e. twice what the backend can do) for
   ``--seconds`` through the loop. Reported: end-to-end latency (frame received -> chunk ready)
   p50 / p99, its p50 over the first and last window (10 s, or a third of the run when shorter) to
   show it does not grow, superseded frames, and whether p50 stays within 2 x standalone (the
   latest-frame slot means a frame waits at most one inference). Quick by default (--seconds comes
   from ``vla-accel bench``, 2 s); the full run is ``--seconds 60``.
3. Fixed rates (``--rt-rates``, default 15,30,60 Hz, ``--rt-rate-seconds`` each): latency mean,
   p99, jitter (p99 - p50) and missed frames (sent but never inferred: superseded or dropped).
4. Peak rate: the highest input rate with < ``--rt-max-drop`` (5 %) of frames missed, found by
   bisection over ``--rt-probe-seconds`` trials, as ros2_benchmark finds peak throughput.

In-process by default. ``--rt-ros`` then also drives the real node across processes (a synthetic
camera process publishing rgb8 frames at each rate, the node, and this process receiving chunks,
through ``vla_accel.benchmarks.node.measure``) at the soak rate and each fixed
rate: end-to-end latency (source stamp -> chunk received, transport included), the node's total
latency (frame received -> chunk ready; compared with 2 x standalone), chunks/s and missed frames
(1 - chunks/s / rate). It needs rclpy and the built messages (``source .ros_build/env.sh``).
"""
from __future__ import annotations

import argparse
import time
from typing import Any

from vla_accel.benchmarks.common import (
    decode_report,
    jpeg_setting,
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


def _rate_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated rates in Hz, got {text!r}") from exc
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"rates must be > 0 Hz, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("realtime mode")
    group.add_argument("--rt-input", choices=sorted(INPUT_KINDS), default="raw480",
                       help="camera frames (default: raw480, sensor_msgs/Image rgb8 640x480)")
    group.add_argument("--rt-rate", type=float, default=0.0,
                       help="soak input rate in Hz (default: 2 x the standalone sustainable rate)")
    group.add_argument("--rt-rates", type=_rate_list, default=[15.0, 30.0, 60.0],
                       help="fixed input rates in Hz (default: 15,30,60)")
    group.add_argument("--rt-rate-seconds", type=float, default=3.0, help="seconds per fixed rate (default: 3)")
    group.add_argument("--rt-probe-seconds", type=float, default=2.0,
                       help="seconds per peak-rate trial; 0 skips the search (default: 2)")
    group.add_argument("--rt-max-drop", type=float, default=0.05,
                       help="largest missed-frame fraction for the peak rate (default: 0.05)")
    group.add_argument("--rt-standalone-s", type=float, default=2.0,
                       help="seconds of standalone inference for the baseline (default: 2)")
    group.add_argument("--rt-pipeline", action="store_true", help="run the loop pipelined (memory=pool)")
    group.add_argument("--rt-ros", action="store_true",
                       help="also drive the real ROS node across processes at the soak and fixed rates")
    group.add_argument("--rt-ros-transport", default="LARGE_DATA",
                       help="FASTDDS_BUILTIN_TRANSPORTS for --rt-ros ('default' = unset; default: LARGE_DATA)")


def standalone(engine, source: FrameSource, seconds: float) -> dict[str, float]:
    """One frame at a time, nothing waiting: the latency the backend + pre/post give by themselves."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or len(samples) < 10:
        obs = source.observation()
        t0 = time.perf_counter_ns()
        batch = engine.prepare([obs])
        engine.finish(batch, engine.run(batch))
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return metrics.percentiles(samples)


def paced_run(engine, source, rate_hz: float, seconds: float, pipeline: bool) -> dict[str, Any]:
    from vla_accel.core.scheduling import InferenceLoop

    chunks = ChunkLog()
    loop = InferenceLoop(engine, pipeline=pipeline, on_chunks=chunks.on_chunks, on_error=chunks.on_error,
                         name=f"rt{rate_hz:g}")
    result = run_loop(loop, Feeder(loop, source, rate_hz=rate_hz), seconds)
    result["chunks"] = chunks
    lat = metrics.percentiles(chunks.latencies())
    sent = max(1, result["sent"])
    result["latency_ms"] = lat
    result["missed"] = result["sent"] - len(chunks)
    result["missed_fraction"] = result["missed"] / sent
    result["jitter_ms"] = lat["p99"] - lat["p50"]
    result["errors"] = len(chunks.errors)
    return result


def find_peak_rate(engine, source, start_hz: float, trial_s: float, max_drop: float, pipeline: bool
                   ) -> dict[str, Any]:
    """Bisection on the input rate for the highest one with missed fraction < max_drop."""
    trials = []

    def ok(rate: float) -> bool:
        r = paced_run(engine, source, rate, trial_s, pipeline)
        trials.append({"rate_hz": rate, "missed_fraction": r["missed_fraction"], "p50_ms": r["latency_ms"]["p50"]})
        log(f"[realtime] peak search {rate:7.1f} Hz: missed {100 * r['missed_fraction']:5.1f}%")
        return r["missed_fraction"] < max_drop

    low, high = 0.0, start_hz
    while ok(high):  # grow until it fails (bounded)
        low, high = high, high * 2
        if high > 100 * start_hz:
            break
    for _ in range(5):
        mid = (low + high) / 2
        if mid <= 0:
            break
        if ok(mid):
            low = mid
        else:
            high = mid
    return {"peak_rate_hz": low, "max_missed_fraction": max_drop, "trials": trials}


def through_ros(args: argparse.Namespace, backend: str, threads: int, rates: list[float], standalone_p50: float
                ) -> list[dict[str, Any]]:
    """The node across processes at each rate (see the module docstring)."""
    from vla_accel.benchmarks import node

    width, height, encoding = INPUT_KINDS[args.rt_input]
    if encoding != "rgb8":
        width, height = 640, 480  # the synthetic camera publishes raw rgb8 frames
    rows = []
    for rate in rates:
        r = node.measure(model=args.model, backend=backend, transport=args.rt_ros_transport,
                         seconds=max(3.0, float(args.rt_rate_seconds)), rate=rate, width=width, height=height,
                         threads=threads, startup_timeout=120.0)
        r["missed_fraction"] = max(0.0, 1.0 - r.get("chunks_per_s", 0.0) / rate)
        r["total_within_2x_standalone"] = bool(r.get("total_p50_ms", float("inf")) <= 2.0 * standalone_p50)
        rows.append(r)
        log(f"[realtime] ROS node at {rate:.1f} Hz: end-to-end p50 {r.get('end_to_end_p50_ms', 0):.2f} ms, "
            f"{r.get('chunks_per_s', 0):.1f} chunks/s")
    return rows


def run(args: argparse.Namespace) -> int:
    backend = backend_name(args)
    threads = threads_option(args)
    engine = build_engine(args.model, backend, memory="pool" if args.rt_pipeline else "static", threads=threads,
                          jpeg_reduced_decode=jpeg_setting(args))
    source = FrameSource(engine.spec, args.rt_input)
    report: dict[str, Any] = {"benchmark": "realtime", "model": args.model, "backend": backend, "threads": threads,
                              "input": args.rt_input, "pipeline": bool(args.rt_pipeline), "machine": machine_info()}
    try:
        base = standalone(engine, source, args.rt_standalone_s)
        sustainable = 1000.0 / base["p50"] if base["p50"] > 0 else 0.0
        report["standalone_ms"] = {k: base[k] for k in ("p50", "p99", "mean", "count")}
        report["sustainable_rate_hz"] = sustainable
        soak_rate = args.rt_rate or 2.0 * sustainable
        seconds = float(args.seconds)
        log(f"[realtime] {args.model} on {backend}: standalone p50 {base['p50']:.1f} ms (~{sustainable:.1f} Hz); "
            f"soak at {soak_rate:.1f} Hz for {seconds:g}s")
        soak = paced_run(engine, source, soak_rate, seconds, args.rt_pipeline)
        window_s = min(10.0, seconds / 3.0)
        start = soak["started_ns"]
        first = metrics.percentiles(soak["chunks"].latencies(start, start + int(window_s * 1e9)))
        end = start + int(soak["seconds"] * 1e9)
        last = metrics.percentiles(soak["chunks"].latencies(end - int(window_s * 1e9), end + 1))
        report["soak"] = {
            "rate_hz": soak_rate,
            "seconds": soak["seconds"],
            "sent": soak["sent"],
            "inferred": len(soak["chunks"]),
            "superseded": soak["superseded"],
            "dropped": soak["dropped"],
            "latency_ms": {k: soak["latency_ms"][k] for k in ("p50", "p99", "mean", "max")},
            "window_s": window_s,
            "first_window_p50_ms": first["p50"],
            "last_window_p50_ms": last["p50"],
            "growth_last_over_first": (last["p50"] / first["p50"]) if first["p50"] else 0.0,
            "p50_over_standalone": soak["latency_ms"]["p50"] / base["p50"] if base["p50"] else 0.0,
            "within_2x_standalone": bool(soak["latency_ms"]["p50"] <= 2.0 * base["p50"]),
            "errors": soak["errors"],
        }
        fixed = []
        for rate in args.rt_rates:
            r = paced_run(engine, source, rate, args.rt_rate_seconds, args.rt_pipeline)
            fixed.append({"rate_hz": rate, "sent": r["sent"], "inferred": len(r["chunks"]), "missed": r["missed"],
                          "missed_fraction": r["missed_fraction"], "mean_ms": r["latency_ms"]["mean"],
                          "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"],
                          "jitter_ms": r["jitter_ms"]})
            log(f"[realtime] {rate:5.1f} Hz: p50 {r['latency_ms']['p50']:.1f} ms, missed {r['missed']}/{r['sent']}")
        report["fixed_rates"] = fixed
        if args.rt_probe_seconds > 0 and sustainable > 0:
            report["peak"] = find_peak_rate(engine, source, sustainable / 2.0, args.rt_probe_seconds,
                                            args.rt_max_drop, args.rt_pipeline)
    finally:
        engine.close()
    report["decode"] = decode_report(engine)
    if args.rt_ros:
        report["ros"] = through_ros(args, backend, threads, [soak_rate, *args.rt_rates], base["p50"])
    print(format_report(report))
    write_json(args, report)
    return 0


def format_report(report: dict[str, Any]) -> str:
    machine = report["machine"]
    soak = report["soak"]
    lines = [
        f"realtime: model {report['model']} on {report['backend']} ({report['threads']} thread(s)), input "
        f"{report['input']}, {'pipelined' if report['pipeline'] else 'serial'} loop, {machine['cpu']} "
        f"({machine['logical_cpus']} logical CPUs, load {machine['load_avg_1min_at_start']})",
        f"standalone: p50 {report['standalone_ms']['p50']:.2f} ms, p99 {report['standalone_ms']['p99']:.2f} ms "
        f"-> sustains ~{report['sustainable_rate_hz']:.1f} Hz",
        f"soak at {soak['rate_hz']:.1f} Hz for {soak['seconds']:.1f}s: sent {soak['sent']}, inferred "
        f"{soak['inferred']}, superseded {soak['superseded']}; latency p50 {soak['latency_ms']['p50']:.2f} ms "
        f"({soak['p50_over_standalone']:.2f}x standalone: {'within' if soak['within_2x_standalone'] else 'NOT within'}"
        f" 2x), p99 {soak['latency_ms']['p99']:.2f} ms; p50 first {soak['window_s']:.1f}s "
        f"{soak['first_window_p50_ms']:.2f} ms vs last {soak['last_window_p50_ms']:.2f} ms "
        f"(x{soak['growth_last_over_first']:.2f})",
        format_rows(("rate Hz", "sent", "inferred", "missed", "mean ms", "p99 ms", "jitter ms"),
                    [(f"{r['rate_hz']:g}", r["sent"], r["inferred"], f"{r['missed']} ({100 * r['missed_fraction']:.1f}%)",
                      f"{r['mean_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['jitter_ms']:.2f}")
                     for r in report["fixed_rates"]]),
    ]
    if "peak" in report:
        lines.append(f"peak input rate with < {100 * report['peak']['max_missed_fraction']:.0f}% missed frames: "
                     f"{report['peak']['peak_rate_hz']:.1f} Hz ({len(report['peak']['trials'])} trials)")
    if "ros" in report:
        lines.append("through the ROS node (separate camera and node processes, "
                     f"FASTDDS_BUILTIN_TRANSPORTS={report['ros'][0]['transport'] if report['ros'] else '-'}):")
        lines.append(format_rows(
            ("rate Hz", "chunks/s", "missed", "e2e p50", "e2e p99", "node total p50", "infer p50", "superseded",
             "total <= 2x standalone"),
            [(f"{r['rate_hz']:.1f}", f"{r['chunks_per_s']:.1f}", f"{100 * r['missed_fraction']:.1f}%",
              f"{r['end_to_end_p50_ms']:.2f}", f"{r['end_to_end_p99_ms']:.2f}", f"{r['total_p50_ms']:.2f}",
              f"{r['inference_p50_ms']:.2f}", r["frames_superseded"], r["total_within_2x_standalone"])
             for r in report["ros"]]))
    return "\n".join(lines)
