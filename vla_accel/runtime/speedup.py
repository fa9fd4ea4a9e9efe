"""Speedup and rate figures on /diagnostics that say how they were timed, or why they are missing
(no rclpy: tested on plain data).

The inference status carries two speedups over the torch CPU baseline:

* ``speedup over CPU`` (live): the baseline p50 (timed at start-up, before any subscription, or read
  from the calibration cache with its age) over the live inference p50 of the running backend. Both
  are the backend call alone at batch 1; the live one runs under the graph's load, which lowers it.
* ``speedup at start-up (side by side)``: torch CPU and the backend timed alternately, call by call,
  at start-up: load from other processes falls on both alike (what `vla-accel bench` measures).

Each gets a ``... (how timed)`` value. Before a window has data a figure reads "n/a (<why>)", never
"0.00" or "0.0 Hz".
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from vla_accel.core.metrics import MetricsSnapshot
from vla_accel.runtime.status import OK, StatusReport

LIVE_KEY = "speedup over CPU"
STARTUP_KEY = "speedup at start-up (side by side)"


def live_speedup_text(snap: MetricsSnapshot, baseline_mode: str) -> str:
    if snap.speedup > 0:
        return f"{snap.speedup:.2f}"
    if baseline_mode == "none":
        return "n/a (speedup_baseline is none)"
    if snap.baseline_ms <= 0:
        return "n/a (no CPU baseline: it could not be measured)"
    if snap.stage("infer")["count"] == 0:
        return "n/a (no inference in the window yet)"
    return "n/a (no inference at the baseline's batch size in the window)"


def rate_text(hz: float, what: str = "chunks") -> str:
    return f"{hz:.1f}" if hz > 0 else f"n/a (fewer than 2 {what} in the rate window)"


def annotate(report: StatusReport, snap: MetricsSnapshot, baseline_mode: str,
             timing: Mapping[str, str]) -> StatusReport:
    """The inference status with its speedup / rate values explained and "n/a (why)" where empty."""
    values = []
    for key, value in report.values:
        if key == LIVE_KEY:
            value = live_speedup_text(snap, baseline_mode)
        elif key == STARTUP_KEY and value == "n/a":
            value = ("n/a (speedup_baseline is none)" if baseline_mode == "none" else
                     "n/a (timed only with speedup_baseline: measure)" if baseline_mode == "cache" else
                     "n/a (not measured)")
        elif key == "throughput (Hz)":
            value = rate_text(snap.throughput_hz)
        elif key == "output rate (Hz)":
            value = rate_text(snap.output_rate_hz)
        elif key == "input rate (Hz)":
            value = rate_text(snap.input_rate_hz, "frames")
        values.append((key, value))
        if key == LIVE_KEY and timing.get("live"):
            values.append((LIVE_KEY + " (how timed)", timing["live"]))
        if key == STARTUP_KEY and timing.get("startup"):
            values.append((STARTUP_KEY + " (how timed)", timing["startup"]))
    message = report.message
    if report.level == OK and snap.throughput_hz <= 0:
        infer = snap.stage("infer")
        message = ("running; rate n/a (fewer than 2 chunks in the window)"
                   + (f", latency p50 {infer['p50']:.1f} ms" if infer["count"] else ""))
    return replace(report, message=message, values=tuple(values))
