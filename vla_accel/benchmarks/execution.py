"""``vla-accel bench execution``: chunk-boundary smoothness at each backend's own inference delay.

For each backend in ``--backends``: ``--ex-frames`` synthetic frames (one control period apart, the
spec's dt) are inferred one at a time through the Engine; the p50 of those inference latencies is
that backend's delay on this machine. The chunks are then executed on the simulated control clock of
``vla_accel.bags.execution.simulate`` with that delay, once per execution mode, and the report gives
jump at the switches, jerk and lag per backend and mode (core.boundary, the same figures as
/vla/stats). So a faster backend shows directly how much smoother its chunks join. RTC here is the
executor's prefix freezing plus blending for every program (the guided flow-matching loop is measured
by ``vla-accel replay --execution``). The synthetic frames cycle through four scenes, so consecutive
predictions disagree: a demanding case for the switch.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from vla_accel.benchmarks.common import FrameSource, build_engine, format_rows, log, machine_info, threads_option, write_json
from vla_accel.core.execution import EXECUTION_MODES, ExecutionConfig
from vla_accel.core.metrics import percentiles


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("execution mode")
    group.add_argument("--ex-modes", default=",".join(EXECUTION_MODES), help="execution modes to compare")
    group.add_argument("--ex-frames", type=int, default=60, help="frames inferred per backend (default: 60)")
    group.add_argument("--ex-threshold", type=float, default=0.5,
                       help="start the next inference when this share of the chunk is left (default: 0.5)")


def run(args: argparse.Namespace) -> int:
    from vla_accel.bags.execution import simulate

    modes = [m.strip() for m in str(getattr(args, "ex_modes", ",".join(EXECUTION_MODES))).split(",") if m.strip()]
    frames = max(int(getattr(args, "ex_frames", 60)), 4)
    threshold = float(getattr(args, "ex_threshold", 0.5))
    report: dict[str, Any] = {"mode": "execution", "model": args.model, "machine": machine_info(), "frames": frames,
                              "threshold": threshold, "rows": []}
    for backend in args.backends:
        log(f"execution: {backend}: inferring {frames} frames")
        engine = build_engine(args.model, backend, threads=threads_option(args), warmup=2)
        try:
            spec = engine.spec
            period_ns = int(round(spec.action.dt * 1e9))
            source = FrameSource(spec, "raw480", variants=4)
            stamps = [i * period_ns for i in range(frames)]
            chunks, latencies, observations = {}, [], []
            for stamp in stamps:
                obs = source.observation(stamp_ns=stamp)
                t0 = time.perf_counter_ns()
                chunks[stamp] = engine.infer_one(obs)
                latencies.append((time.perf_counter_ns() - t0) / 1e6)
                observations.append(obs)
        finally:
            engine.close()
        delay_ms = percentiles(latencies)["p50"]
        for mode in modes:
            config = ExecutionConfig(mode=mode, threshold=threshold, control_period_s=spec.action.dt,
                                     initial_delay_s=delay_ms / 1e3)
            result = simulate(stamps, lambda o, plan: chunks[o.stamp_ns], lambda i: observations[i], spec.action,
                              config, delay_ms / 1e3)
            report["rows"].append({"backend": backend, "execution_mode": mode, "delay_ms": delay_ms,
                                   "delay_periods": delay_ms / 1e3 / spec.action.dt, **result.figures})
    report["jump_vs_naive"] = summary(report["rows"])
    print(format_report(report))
    write_json(args, report)
    return 0


def format_report(report: dict[str, Any]) -> str:
    header = ("backend", "delay ms", "periods", "mode", "switches", "jump max", "jump p50", "jerk p95", "lag mean",
              "stale steps")
    rows = [(r["backend"], f"{r['delay_ms']:.1f}", f"{r['delay_periods']:.2f}", r["execution_mode"],
             f"{r['chunk_switches']:.0f}", f"{r['chunk_jump_max']:.4g}", f"{r['chunk_jump_p50']:.4g}",
             f"{r['action_jerk_p95']:.4g}", f"{r['lag_mean']:.4g}", f"{r['execution_stale_steps_skipped']:.0f}")
            for r in report["rows"]]
    return (f"chunk execution at each backend's measured p50 inference delay ({report['model']}, "
            f"{report['frames']} frames)\n" + format_rows(header, rows))


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Jump max of each mode relative to naive per backend (for JSON readers)."""
    out = {}
    for r in rows:
        naive = next((x["chunk_jump_max"] for x in rows if x["backend"] == r["backend"]
                      and x["execution_mode"] == "naive"), 0.0)
        if naive and r["execution_mode"] != "naive":
            out[f"{r['backend']}_{r['execution_mode']}_vs_naive"] = float(np.float64(r["chunk_jump_max"]) / naive)
    return out
