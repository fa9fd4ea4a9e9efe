"""core.metrics definitions (percentiles vs numpy, speedup, efficiency, rates, windows, counters)
and core.ratelimit."""
from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from vla_accel.core.metrics import (
    InferenceMetrics,
    LatencyWindow,
    RateMeter,
    parallel_efficiency,
    percentiles,
    speedup,
    throughput,
)
from vla_accel.core.ratelimit import RateLimitedLogger
from vla_accel.core.types import ActionChunk


def test_percentiles_match_numpy_linear():
    samples = np.random.default_rng(0).exponential(5.0, size=1001)
    stats = percentiles(samples)
    for key, q in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99)):
        assert stats[key] == pytest.approx(np.percentile(samples, q))
    assert stats["max"] == samples.max() and stats["min"] == samples.min()
    assert stats["mean"] == pytest.approx(samples.mean()) and stats["count"] == 1001


def test_percentiles_small_and_empty_inputs():
    assert percentiles([1.0, 2.0, 3.0, 4.0])["p50"] == 2.5  # linear interpolation
    assert percentiles([]) == {k: 0.0 for k in ("p50", "p90", "p95", "p99", "max", "mean", "min", "count")}
    assert percentiles([1.0, float("nan"), 3.0])["count"] == 2


def test_speedup_and_efficiency_definitions():
    assert speedup(100.0, 25.0) == 4.0  # S = T_baseline / T_backend
    assert speedup(0.0, 25.0) == 0.0 and speedup(10.0, 0.0) == 0.0 and speedup(float("nan"), 1.0) == 0.0
    assert parallel_efficiency(4.0, 8) == 0.5  # E = S / P
    assert parallel_efficiency(4.0, 0) == 0.0
    assert throughput(300, 10.0) == 30.0 and throughput(5, 0) == 0.0


def test_latency_window_is_a_ring():
    window = LatencyWindow(capacity=4)
    for v in range(1, 7):
        window.add(float(v))
    assert window.values().tolist() == [3.0, 4.0, 5.0, 6.0]
    assert len(window) == 4 and window.total_count == 6 and window.last == 6.0
    stats = window.percentiles()
    assert stats["min"] == 3.0 and stats["p50"] == 4.5
    assert window.jitter() == pytest.approx(np.percentile([3, 4, 5, 6], 99) - 4.5)
    assert window.std() == pytest.approx(np.std([3, 4, 5, 6]))


def test_rate_meter_steady_stream_and_decay():
    meter = RateMeter(window_s=1.0)
    period = 50_000_000  # 20 Hz
    for i in range(100):
        meter.tick(i * period)
    now = 99 * period
    assert meter.rate_hz(now) == pytest.approx(20.0)
    # the stream stops: the rate decays to 0 once the window holds < 2 events
    assert meter.rate_hz(now + 2_000_000_000) == 0.0
    assert RateMeter().rate_hz() == 0.0
    burst = RateMeter(window_s=1.0)
    burst.tick(0, count=3)
    burst.tick(100_000_000, count=1)
    assert burst.rate_hz(100_000_000) == pytest.approx(30.0)  # (4 - 1) events over 0.1 s


def _chunk(stamp_ns: int) -> ActionChunk:
    return ActionChunk(stamp_ns=stamp_ns, dt=0.1, names=("a",), values=np.zeros((1, 1), np.float32), space="mixed")


def test_inference_metrics_snapshot():
    metrics = InferenceMetrics(model="tiny")
    metrics.set_backend("onnxruntime", "CPU", parallel_units=2)
    metrics.set_baseline_ms(40.0)
    t0 = 1_000_000_000
    for i in range(11):
        metrics.record_received(1, t0 + i * 100_000_000)
    metrics.record_dropped("superseded", 2)
    metrics.record_dropped("truncated")
    metrics.record_backend_error("injected_fault", dropped_frames=1)
    for i in range(8):
        metrics.record_batch(1, 1.0, 10.0 + i, 0.5)
        metrics.record_stage("total", 20.0 + i)
        metrics.record_processed(1, t0 + i * 100_000_000)
    metrics.record_published([_chunk(100), _chunk(0)], now_wall_ns=5_000_100, now_ns=t0)
    snap = metrics.snapshot(now_ns=t0 + 10 * 100_000_000)
    assert snap.frames_received == 11 and snap.frames_processed == 8
    assert snap.frames_dropped == 4 and snap.frames_superseded == 2
    assert snap.dropped == {"superseded": 2, "truncated": 1, "backend_error": 1}
    assert snap.backend_errors == {"injected_fault": 1}
    assert snap.input_rate_hz == pytest.approx(10.0)
    assert snap.throughput_hz == pytest.approx(10.0)
    infer_p50 = np.percentile(np.arange(10.0, 18.0), 50)
    assert snap.stage("infer")["p50"] == pytest.approx(infer_p50)
    assert snap.speedup == pytest.approx(40.0 / infer_p50)
    assert snap.parallel_efficiency == pytest.approx(40.0 / infer_p50 / 2)
    totals = np.arange(20.0, 28.0)
    assert snap.jitter_ms == pytest.approx(np.percentile(totals, 99) - np.percentile(totals, 50))
    assert snap.stage("end_to_end")["count"] == 1 and snap.stage("end_to_end")["p50"] == pytest.approx(5.0)
    assert snap.mean_batch_size == 1.0 and snap.hardware_id == "onnxruntime@CPU"
    flat = snap.as_dict()
    assert flat["infer_p50_ms"] == snap.stage("infer")["p50"] and flat["infer_count"] == 8
    assert flat["dropped_superseded"] == 2 and flat["frames_superseded"] == 2
    assert flat["backend"] == "onnxruntime" and flat["speedup"] == snap.speedup
    assert all(isinstance(v, (int, float, str)) for v in flat.values())


def test_metrics_are_thread_safe():
    metrics = InferenceMetrics()

    def work():
        for _ in range(2000):
            metrics.record_received()
            metrics.record_dropped("superseded")
            metrics.record_stage("infer", 1.0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = metrics.snapshot()
    assert snap.frames_received == 8000 and snap.dropped["superseded"] == 8000
    assert snap.stage("infer")["count"] == 1024  # the window keeps the newest 1024


def test_no_baseline_means_no_speedup():
    metrics = InferenceMetrics()
    metrics.record_batch(1, 1.0, 5.0, 1.0)
    assert metrics.snapshot().speedup == 0.0 and metrics.snapshot().parallel_efficiency == 0.0


def test_rate_limited_logger_counts_suppressed(caplog):
    now = [0.0]
    limited = RateLimitedLogger(logging.getLogger("test.ratelimit"), interval_s=5.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        assert limited.warning("k", "bad frame %d", 1)
        for i in range(3):
            assert not limited.warning("k", "bad frame %d", i)
        assert limited.warning("other", "other problem")
        assert limited.suppressed("k") == 3
        now[0] = 6.0
        assert limited.warning("k", "bad frame %d", 9)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["bad frame 1", "other problem", "bad frame 9 (suppressed 3 similar messages in the last 5 s)"]


def test_speedup_compares_the_same_batch_size():
    m = InferenceMetrics()
    m.set_baseline_ms(40.0, batch_size=4)  # a baseline measured at batch 4 ...
    for _ in range(10):
        m.record_batch(1, 0.1, 10.0, 0.1)  # ... while the backend runs batch 1
    assert m.snapshot().speedup == 0.0  # unknown, not 40 / 10
    m.set_baseline_ms(20.0, batch_size=1)
    snap = m.snapshot()
    assert snap.speedup == pytest.approx(2.0) and snap.baseline_ms == 20.0
    for _ in range(30):
        m.record_batch(4, 0.1, 16.0, 0.1)  # batch 4 now dominates the window
    snap = m.snapshot()
    assert snap.speedup == pytest.approx(40.0 / 16.0) and snap.baseline_ms == 40.0
