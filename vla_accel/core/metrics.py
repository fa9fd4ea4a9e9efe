"""THE metrics module: every number on /diagnostics and /vla/stats, in ``vla-accel bench`` and in
replay reports is computed here, so the live node, the benchmark and the report agree.

Definitions (docs/metrics.md says the same, with examples):

* Latency samples are milliseconds. ``percentiles`` uses linear interpolation between closest ranks
  (numpy's default ``linear`` method): p50, p90, p95, p99, plus min, max, mean and count.
* Jitter = p99 - p50 of a latency window (and the standard deviation is reported beside it).
* Stages, per batch unless said otherwise:
  - ``preprocess``: decode + resize + normalise + tokenise + state for the whole batch;
  - ``infer``: the backend call for the batch (the backend's latency; speedup uses this);
  - ``postprocess``: un-normalise, clip, build chunks for the batch;
  - ``total`` (per observation): received_ns (monotonic, frame entered the process) -> chunk
    ready, so it includes waiting in the latest-frame slot / batcher; when an observation has no
    received_ns, preprocess + infer + postprocess of its batch;
  - ``end_to_end`` (per chunk): source frame stamp (wall clock, header.stamp) -> chunk published,
    so it includes camera transport; recorded by whoever publishes (``record_published``);
  - ``age_at_start`` (per observation): received_ns -> the moment its preprocessing began.
* Rates (Hz) from ``RateMeter``: the mean event rate over the events of the last ``window_s``
  seconds, (n - 1) / (t_newest - t_oldest); 0 with fewer than two events in the window, so a rate
  decays to 0 once events stop for ``window_s``.
  ``input_rate_hz``: frames received; ``throughput_hz``: observations processed (chunks ready);
  ``output_rate_hz``: chunks published.
* Speedup S = T_baseline / T_backend (the seeds define S = T_cpu / T_hw), with T the p50 of the
  ``infer`` stage at the same batch size; 0 when either is unknown.
* Parallel efficiency E = S / P, P = the device's parallel units (DeviceInfo.parallel_units).
* Throughput over a run = samples / seconds.
* Counters: frames_received, frames_processed, frames_dropped (sum over reasons) and
  dropped[reason] where reason is an error's ``reason`` key (truncated, empty_instruction, ...) or
  one of ``superseded`` (replaced by a newer frame before inference began), ``backend_error``
  (lost to a backend failure), ``queue_full``.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from vla_accel.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.backends.base import DeviceInfo
    from vla_accel.core.types import ActionChunk

PERCENTILE_POINTS = (50.0, 90.0, 95.0, 99.0)
PERCENTILE_KEYS = ("p50", "p90", "p95", "p99", "max", "mean", "min", "count")
STAGES = ("preprocess", "infer", "postprocess", "total", "end_to_end", "age_at_start")
# Drop reasons that do not come from an error class.
SUPERSEDED = "superseded"
BACKEND_ERROR = "backend_error"
QUEUE_FULL = "queue_full"


def _empty_percentiles() -> dict[str, float]:
    return {key: 0.0 for key in PERCENTILE_KEYS}


def percentiles(samples: Iterable[float] | np.ndarray) -> dict[str, float]:
    """p50, p90, p95, p99 (linear interpolation), max, mean, min and count of ``samples``.

    An empty input gives zeros with count 0. Non-finite samples are ignored (a NaN must not turn
    every statistic into NaN on a diagnostics topic).
    """
    values = np.asarray(samples if isinstance(samples, np.ndarray) else list(samples), dtype=np.float64)
    values = values[np.isfinite(values)] if values.size else values
    if values.size == 0:
        return _empty_percentiles()
    p50, p90, p95, p99 = np.percentile(values, PERCENTILE_POINTS)
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "min": float(values.min()),
        "count": float(values.size),
    }


def speedup(t_baseline: float, t_backend: float) -> float:
    """S = T_baseline / T_backend (e.g. T_cpu / T_hw); 0 when either time is unknown (<= 0 or NaN)."""
    if not (t_baseline > 0 and t_backend > 0) or not (math.isfinite(t_baseline) and math.isfinite(t_backend)):
        return 0.0
    return float(t_baseline) / float(t_backend)


def parallel_efficiency(speedup_value: float, parallel_units: int | float) -> float:
    """E = S / P; 0 when P is unknown (<= 0)."""
    if not parallel_units or parallel_units <= 0 or not math.isfinite(speedup_value):
        return 0.0
    return float(speedup_value) / float(parallel_units)


def throughput(samples: float, seconds: float) -> float:
    """Samples (observations, chunks) per second over a run; 0 for a non-positive duration."""
    if not seconds or seconds <= 0:
        return 0.0
    return float(samples) / float(seconds)


class LatencyWindow:
    """Ring buffer of the last ``capacity`` latency samples (ms), preallocated: ``add`` never allocates.

    Not locked by itself; ``InferenceMetrics`` serialises access.
    """

    def __init__(self, capacity: int = 1024):
        if capacity <= 0:
            raise ConfigError(f"capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self._values = np.zeros(self.capacity, dtype=np.float64)
        self._next = 0
        self._filled = 0
        self.total_count = 0  # all samples ever added (the window holds the last `capacity`)
        self.last = 0.0

    def add(self, value_ms: float) -> None:
        self._values[self._next] = value_ms
        self._next = (self._next + 1) % self.capacity
        if self._filled < self.capacity:
            self._filled += 1
        self.total_count += 1
        self.last = value_ms

    def __len__(self) -> int:
        return self._filled

    def values(self) -> np.ndarray:
        """The samples in the window, oldest first (a copy)."""
        if self._filled < self.capacity:
            return self._values[: self._filled].copy()
        return np.concatenate([self._values[self._next :], self._values[: self._next]])

    def percentiles(self) -> dict[str, float]:
        return percentiles(self._values[: self._filled])

    def jitter(self) -> float:
        """p99 - p50 over the window (ms)."""
        stats = self.percentiles()
        return stats["p99"] - stats["p50"]

    def std(self) -> float:
        """Standard deviation over the window (ms), population definition (ddof=0)."""
        if self._filled == 0:
            return 0.0
        return float(np.std(self._values[: self._filled]))

    def mean(self) -> float:
        if self._filled == 0:
            return 0.0
        return float(np.mean(self._values[: self._filled]))

    def clear(self) -> None:
        self._next = 0
        self._filled = 0
        self.total_count = 0
        self.last = 0.0


class RateMeter:
    """Event rate in Hz from monotonic ns timestamps over a sliding window of ``window_s`` seconds.

    rate = (n - 1) / (t_newest - t_oldest) over the n events no older than ``window_s`` before
    ``now``; 0 with fewer than two such events. Stores at most ``capacity`` timestamps (a rate
    above capacity / window_s is then measured over the newest ``capacity`` events).
    """

    def __init__(self, window_s: float = 5.0, capacity: int = 4096):
        if window_s <= 0:
            raise ConfigError(f"window_s must be positive, got {window_s}")
        self.window_ns = int(window_s * 1e9)
        self.capacity = int(capacity)
        self._stamps = np.zeros(self.capacity, dtype=np.int64)
        self._next = 0
        self._filled = 0
        self.total_count = 0

    def tick(self, t_ns: int | None = None, count: int = 1) -> None:
        """Record ``count`` events at ``t_ns`` (default: time.monotonic_ns())."""
        if t_ns is None:
            t_ns = time.monotonic_ns()
        for _ in range(count):
            self._stamps[self._next] = t_ns
            self._next = (self._next + 1) % self.capacity
            if self._filled < self.capacity:
                self._filled += 1
        self.total_count += count

    def rate_hz(self, now_ns: int | None = None) -> float:
        if self._filled < 2:
            return 0.0
        if now_ns is None:
            now_ns = time.monotonic_ns()
        stamps = self._stamps[: self._filled]
        recent = stamps[stamps >= now_ns - self.window_ns]
        if recent.size < 2:
            return 0.0
        span = int(recent.max()) - int(recent.min())
        if span <= 0:
            return 0.0
        return (recent.size - 1) * 1e9 / span

    def clear(self) -> None:
        self._next = 0
        self._filled = 0
        self.total_count = 0


@dataclass(frozen=True)
class MetricsSnapshot:
    """Everything InferenceMetrics knows at one instant. ``latency[stage]`` is a percentiles dict
    (keys PERCENTILE_KEYS, ms) for every stage in STAGES; ``dropped`` maps reason -> count."""

    model: str
    backend: str
    device: str
    hardware_id: str
    parallel_units: int
    uptime_s: float
    frames_received: int
    frames_processed: int
    frames_dropped: int
    dropped: Mapping[str, int]
    backend_errors: Mapping[str, int]
    backend_switches: int
    latency: Mapping[str, Mapping[str, float]]
    jitter_ms: float
    jitter_std_ms: float
    input_rate_hz: float
    throughput_hz: float
    output_rate_hz: float
    mean_batch_size: float
    baseline_ms: float
    speedup: float
    parallel_efficiency: float
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def frames_superseded(self) -> int:
        return int(self.dropped.get(SUPERSEDED, 0))

    def stage(self, name: str) -> Mapping[str, float]:
        return self.latency.get(name, _empty_percentiles())

    def as_dict(self) -> dict[str, Any]:
        """Flat key -> number/str mapping (diagnostic key-values, JSON). Keys:
        ``<stage>_<p50|p90|p95|p99|max|mean|min>_ms`` and ``<stage>_count``, ``dropped_<reason>``,
        ``backend_error_<reason>``, and every scalar field by name (plus ``frames_superseded``)."""
        out: dict[str, Any] = {
            "model": self.model,
            "backend": self.backend,
            "device": self.device,
            "hardware_id": self.hardware_id,
            "parallel_units": self.parallel_units,
            "uptime_s": self.uptime_s,
            "frames_received": self.frames_received,
            "frames_processed": self.frames_processed,
            "frames_dropped": self.frames_dropped,
            "frames_superseded": self.frames_superseded,
            "backend_switches": self.backend_switches,
            "jitter_ms": self.jitter_ms,
            "jitter_std_ms": self.jitter_std_ms,
            "input_rate_hz": self.input_rate_hz,
            "throughput_hz": self.throughput_hz,
            "output_rate_hz": self.output_rate_hz,
            "mean_batch_size": self.mean_batch_size,
            "baseline_ms": self.baseline_ms,
            "speedup": self.speedup,
            "parallel_efficiency": self.parallel_efficiency,
        }
        for stage_name, stats in self.latency.items():
            for key, value in stats.items():
                if key == "count":
                    out[f"{stage_name}_count"] = int(value)
                else:
                    out[f"{stage_name}_{key}_ms"] = value
        for reason, count in sorted(self.dropped.items()):
            out[f"dropped_{reason}"] = count
        for reason, count in sorted(self.backend_errors.items()):
            out[f"backend_error_{reason}"] = count
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out


class InferenceMetrics:
    """Thread-safe counters, latency windows and rates for one model + backend in a process.

    Producers: the scheduler / node calls ``record_received`` when a frame arrives and
    ``record_dropped(reason)`` when one is discarded; the Engine records stage latencies, batch
    sizes, processed frames and input drops; the publisher calls ``record_published``.
    Recording takes a lock and writes into preallocated rings (no allocation per record).
    """

    def __init__(self, window: int = 1024, rate_window_s: float = 5.0, model: str = ""):
        self._lock = threading.Lock()
        self._window = int(window)
        self._rate_window_s = float(rate_window_s)
        self.model = model
        self.backend = ""
        self.device = ""
        self.hardware_id = ""
        self.parallel_units = 0
        self.baseline_ms = 0.0
        self._baselines: dict[int, float] = {}  # batch size -> CPU baseline ms
        self._values: dict[str, float] = {}  # set_value: reported in the snapshot's extra
        self._boundary = None  # core.boundary.BoundaryMeter: chunk-boundary jump / jerk (attach_boundary)
        self.reset()

    def reset(self) -> None:
        """Zero every counter and window (backend identity and baseline are kept)."""
        with self._lock:
            self._started_ns = time.monotonic_ns()
            self.frames_received = 0
            self.frames_processed = 0
            self.backend_switches = 0
            self._dropped: dict[str, int] = {}
            self._events: dict[str, int] = {}
            self._backend_errors: dict[str, int] = {}
            self._stages = {name: LatencyWindow(self._window) for name in STAGES}
            self._batch_sizes = LatencyWindow(self._window)
            self._input_rate = RateMeter(self._rate_window_s)
            self._processed_rate = RateMeter(self._rate_window_s)
            self._output_rate = RateMeter(self._rate_window_s)

    # --- identity -----------------------------------------------------------------------------
    def set_backend(self, name: str, device: str = "", hardware_id: str = "", parallel_units: int = 0) -> None:
        with self._lock:
            self.backend = name
            self.device = device
            self.hardware_id = hardware_id or (f"{name}@{device}" if device else name)
            self.parallel_units = int(parallel_units or 0)

    def set_device(self, info: "DeviceInfo") -> None:
        """Identity from a backend's DeviceInfo (name, device, hardware_id, parallel units)."""
        self.set_backend(info.backend, info.device, info.hardware_id, info.parallel_units)

    def set_baseline_ms(self, baseline_ms: float, batch_size: int = 1) -> None:
        """The CPU baseline inference latency (ms) at ``batch_size`` that speedup is measured against.

        Speedup compares like with like: the snapshot takes the batch size the backend ran most often
        in the window and divides that size's baseline by that size's inference p50; with no baseline
        for that size, speedup is 0 (unknown) rather than a ratio of two different batch sizes."""
        with self._lock:
            if baseline_ms and baseline_ms > 0:
                self._baselines[int(batch_size)] = float(baseline_ms)
            else:
                self._baselines.pop(int(batch_size), None)
            self.baseline_ms = self._baselines.get(1, 0.0) or next(iter(self._baselines.values()), 0.0)

    def record_switch(self, new_backend: str = "") -> None:
        """A fallback switched backends (the new identity should follow via set_device)."""
        with self._lock:
            self.backend_switches += 1
            if new_backend:
                self.backend = new_backend

    # --- counters -------------------------------------------------------------------------------
    def record_received(self, count: int = 1, t_ns: int | None = None) -> None:
        with self._lock:
            self.frames_received += count
            self._input_rate.tick(t_ns, count)

    def record_dropped(self, reason: str, count: int = 1) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + count

    def set_value(self, name: str, value: float) -> None:
        """A named figure measured once (e.g. startup_speedup), reported in the snapshot's ``extra``."""
        with self._lock:
            self._values[name] = float(value)

    def attach_boundary(self, meter) -> None:
        """Report a core.boundary.BoundaryMeter's summary (chunk_jump_*, action_jerk_*, ...) in the
        snapshot's ``extra``, so the executed actions' smoothness is read where every other figure is."""
        with self._lock:
            self._boundary = meter

    def record_event(self, name: str, count: int = 1) -> None:
        """Something worth counting that is neither a drop nor an error (e.g. instruction_truncated);
        reported in the snapshot's ``extra`` as ``events_<name>``."""
        with self._lock:
            self._events[name] = self._events.get(name, 0) + count

    def record_backend_error(self, reason: str, dropped_frames: int) -> None:
        """A backend call failed: counts the error by its reason and the frames lost as backend_error."""
        with self._lock:
            self._backend_errors[reason] = self._backend_errors.get(reason, 0) + 1
            if dropped_frames:
                self._dropped[BACKEND_ERROR] = self._dropped.get(BACKEND_ERROR, 0) + dropped_frames

    def record_stage(self, stage: str, ms: float) -> None:
        """One latency sample (ms) for a stage in STAGES (or a custom stage, created on first use)."""
        with self._lock:
            window = self._stages.get(stage)
            if window is None:
                window = self._stages[stage] = LatencyWindow(self._window)
            window.add(ms)

    def record_batch(self, batch_size: int, preprocess_ms: float, infer_ms: float, postprocess_ms: float) -> None:
        """Stage latencies of one batch, and its size."""
        with self._lock:
            self._stages["preprocess"].add(preprocess_ms)
            self._stages["infer"].add(infer_ms)
            self._stages["postprocess"].add(postprocess_ms)
            self._batch_sizes.add(batch_size)

    def record_processed(self, count: int = 1, t_ns: int | None = None) -> None:
        """``count`` observations turned into chunks (ready to publish) at ``t_ns``."""
        with self._lock:
            self.frames_processed += count
            self._processed_rate.tick(t_ns, count)

    def record_published(self, chunks: "Iterable[ActionChunk]" = (), count: int | None = None,
                         now_wall_ns: int | None = None, now_ns: int | None = None) -> None:
        """Chunks published: ticks the output rate; end_to_end = wall clock now - chunk.stamp_ns."""
        wall = time.time_ns() if now_wall_ns is None else now_wall_ns
        n = 0
        with self._lock:
            window = self._stages["end_to_end"]
            for chunk in chunks:
                n += 1
                if chunk.stamp_ns > 0:
                    window.add((wall - chunk.stamp_ns) / 1e6)
            if count is not None:
                n = count
            if n:
                self._output_rate.tick(now_ns, n)

    # --- reading --------------------------------------------------------------------------------
    @property
    def frames_dropped(self) -> int:
        with self._lock:
            return sum(self._dropped.values())

    def dropped(self) -> dict[str, int]:
        with self._lock:
            return dict(self._dropped)

    def stage_percentiles(self, stage: str) -> dict[str, float]:
        with self._lock:
            window = self._stages.get(stage)
            return window.percentiles() if window is not None else _empty_percentiles()

    def stage_values(self, stage: str) -> np.ndarray:
        """The samples in a stage's window, oldest first (for reports and plots)."""
        with self._lock:
            window = self._stages.get(stage)
            return window.values() if window is not None else np.zeros(0)

    def snapshot(self, now_ns: int | None = None) -> MetricsSnapshot:
        now = time.monotonic_ns() if now_ns is None else now_ns
        with self._lock:
            latency = {name: window.percentiles() for name, window in self._stages.items()}
            total = self._stages["total"]
            jitter = latency["total"]["p99"] - latency["total"]["p50"]
            baseline_ms, infer_p50 = self._matching_baseline(latency["infer"]["p50"])
            s = speedup(baseline_ms, infer_p50)
            return MetricsSnapshot(
                model=self.model,
                backend=self.backend,
                device=self.device,
                hardware_id=self.hardware_id,
                parallel_units=self.parallel_units,
                uptime_s=(now - self._started_ns) / 1e9,
                frames_received=self.frames_received,
                frames_processed=self.frames_processed,
                frames_dropped=sum(self._dropped.values()),
                dropped=dict(self._dropped),
                backend_errors=dict(self._backend_errors),
                backend_switches=self.backend_switches,
                latency=latency,
                jitter_ms=jitter,
                jitter_std_ms=total.std(),
                input_rate_hz=self._input_rate.rate_hz(now),
                throughput_hz=self._processed_rate.rate_hz(now),
                output_rate_hz=self._output_rate.rate_hz(now),
                mean_batch_size=self._batch_sizes.mean(),
                baseline_ms=baseline_ms,
                speedup=s,
                parallel_efficiency=parallel_efficiency(s, self.parallel_units),
                extra={**self._values, **{f"events_{name}": count for name, count in sorted(self._events.items())},
                       **(self._boundary.summary() if self._boundary is not None else {})},
            )

    def _matching_baseline(self, infer_p50: float) -> tuple[float, float]:
        """(baseline ms, inference p50 ms) at the same batch size; call with the lock held.

        record_batch appends to the infer window and the batch-size window together, so the two rings
        are aligned sample by sample."""
        if not self._baselines:
            return 0.0, infer_p50
        sizes = self._batch_sizes.values()
        infer = self._stages["infer"].values()
        if len(sizes) == 0 or len(sizes) != len(infer):
            return self._baselines.get(1, 0.0), infer_p50
        rounded = np.rint(sizes).astype(np.int64)
        values, counts = np.unique(rounded, return_counts=True)
        batch = int(values[np.argmax(counts)])
        baseline = self._baselines.get(batch, 0.0)
        if not baseline:
            return 0.0, infer_p50
        return baseline, float(np.percentile(infer[rounded == batch], 50))

    def as_dict(self) -> dict[str, Any]:
        return self.snapshot().as_dict()
