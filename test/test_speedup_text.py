"""Speedup / rate values on /diagnostics say how they were timed or why they are missing (no ROS)."""
from __future__ import annotations

import time

from vla_accel.core.metrics import InferenceMetrics
from vla_accel.runtime import status
from vla_accel.runtime.session import speedup_timing
from vla_accel.runtime.speedup import annotate

CONFIG = status.DiagnosticsConfig()
RUNNING = status.BackendState(status="running", candidates=("onnxruntime",), active="onnxruntime", device="cpu")


def _inference(metrics, mode="measure", timing=None):
    snap = metrics.snapshot()
    cams = [status.CameraView("primary", "/camera/image_raw", "raw", 10, 30.0, 0.01)]
    report = status.build_reports(snap, RUNNING, cams, None, CONFIG)[0]
    return annotate(report, snap, mode, timing or {})


def test_before_any_data_figures_read_na_with_the_reason_not_zero():
    metrics = InferenceMetrics(model="tiny")
    metrics.set_baseline_ms(8.0)
    report = _inference(metrics, timing=speedup_timing("measure", "onnxruntime"))
    assert report.value("speedup over CPU") == "n/a (no inference in the window yet)"
    assert report.value("throughput (Hz)").startswith("n/a (fewer than 2 chunks")
    assert "0.0 Hz" not in report.message and "n/a" in report.message
    assert "timed at start-up before any subscription" in report.value("speedup over CPU (how timed)")
    assert "alternately" in report.value("speedup at start-up (side by side) (how timed)")
    none = _inference(InferenceMetrics(), mode="none")
    assert none.value("speedup over CPU") == "n/a (speedup_baseline is none)"
    assert none.value("speedup at start-up (side by side)") == "n/a (speedup_baseline is none)"


def test_live_and_startup_speedups_are_shown_with_how_each_was_timed():
    metrics = InferenceMetrics(model="tiny")
    metrics.set_baseline_ms(8.0)
    metrics.set_value("startup_speedup", 1.9)
    now = time.monotonic_ns()
    for i in range(5):
        metrics.record_batch(1, 0.1, 4.0, 0.1)
        metrics.record_processed(1, t_ns=now + i * 10_000_000)
    report = _inference(metrics, timing=speedup_timing("measure", "onnxruntime"))
    assert report.value("speedup over CPU") == "2.00"
    assert report.value("speedup at start-up (side by side)") == "1.90"
    assert "live onnxruntime inference p50" in report.value("speedup over CPU (how timed)")


def test_cache_baseline_says_its_age():
    timing = speedup_timing("cache", "openvino", cache_measured_at=time.time() - 7200)
    assert "calibration cache" in timing["live"] and "2.0 h ago" in timing["live"]
    assert "startup" not in timing
    assert speedup_timing("none", "torch") == {}
