"""Health and status: per-input counters and the status reports built from a MetricsSnapshot
(what /diagnostics shows in rqt_robot_monitor, what the demo prints).

Conventions of ros/diagnostics' diagnostic_updater: one status per concern, named
"<node>: <concern>" (``vla_accel: inference``, ``vla_accel: backend``, ``vla_accel: input <camera>``,
``vla_accel: input instruction``), ``hardware_id`` always set (backend@device), levels
OK / WARN / ERROR / STALE, published about once a second and at once when a level or the backend
changes (the node calls ``state_key`` to notice). Values are strings, as DiagnosticStatus wants.

Levels:
* inference: ERROR when no backend could load; STALE when no frame arrived for the stale timeout;
  WARN when total latency p99 exceeds target_latency_ms or the input rate is below
  min_input_rate_hz; OK otherwise.
* backend: ERROR when no backend is running; WARN when a fallback is running instead of the first
  choice; OK otherwise.
* input <camera>: STALE when no frame for the stale timeout (or never); WARN when its rate is below
  min_input_rate_hz or it had drops in the last period; OK otherwise.
* input instruction: WARN when none was received yet; STALE when older than its stale timeout.

The ROS messages are built from these reports in vla_accel.ros.conversions.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from vla_accel.core.metrics import MetricsSnapshot, RateMeter

OK, WARN, ERROR, STALE = 0, 1, 2, 3
# Metrics stage recorded by the node: image callback entry -> chunk published, minus inference.
NODE_OVERHEAD = "node_overhead"
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}


@dataclass(frozen=True)
class StatusReport:
    """One DiagnosticStatus, as plain data."""

    name: str
    level: int
    message: str
    hardware_id: str
    values: tuple[tuple[str, str], ...]

    def value(self, key: str) -> str | None:
        for k, v in self.values:
            if k == key:
                return v
        return None


@dataclass(frozen=True)
class DiagnosticsConfig:
    node_name: str = "vla_accel"
    target_latency_ms: float = 0.0  # 0 = no latency goal
    min_input_rate_hz: float = 0.0  # 0 = no rate goal
    stale_image_timeout_s: float = 1.0
    stale_instruction_timeout_s: float = 0.0  # 0 = an instruction never goes stale


@dataclass(frozen=True)
class BackendState:
    """What the node knows about backend selection (the metrics know what runs; this knows why)."""

    status: str  # loading | running | failed
    candidates: tuple[str, ...] = ()
    active: str = ""
    device: str = ""
    precision: str = ""
    error: str = ""  # why loading failed, or the last switch's error
    last_switch: str = ""  # "onnxruntime -> torch: <reason>"


class CameraInput:
    """Per-camera input bookkeeping (rate, last frame, drops by reason); thread-safe.

    Like diagnostic_updater's FrequencyStatus: ``record_frame`` / ``record_drop`` count,
    ``snapshot`` reads without changing anything (a watchdog may read it as often as it likes), and
    ``clear(view)`` marks the drops of a published report as reported, so the next report's
    ``new_drops`` counts only what came after it.
    """

    def __init__(self, name: str, topic: str, transport: str, rate_window_s: float = 5.0):
        self.name = name
        self.topic = topic
        self.transport = transport
        self._lock = threading.Lock()
        self._rate = RateMeter(rate_window_s)
        self.received = 0
        self.last_received_ns = 0
        self.dropped: dict[str, int] = {}
        self._dropped_reported = 0

    def record_frame(self, now_ns: int | None = None) -> None:
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        with self._lock:
            self.received += 1
            self.last_received_ns = now_ns
            self._rate.tick(now_ns)

    def record_drop(self, reason: str) -> None:
        with self._lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def snapshot(self, now_ns: int | None = None) -> "CameraView":
        """The camera's counters now; reading resets nothing."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        with self._lock:
            total_dropped = sum(self.dropped.values())
            return CameraView(
                name=self.name, topic=self.topic, transport=self.transport, received=self.received,
                rate_hz=self._rate.rate_hz(now_ns),
                age_s=(now_ns - self.last_received_ns) / 1e9 if self.last_received_ns else None,
                dropped=dict(self.dropped), new_drops=total_dropped - self._dropped_reported,
            )

    def clear(self, reported: "CameraView") -> None:
        """The drops counted in ``reported`` (a snapshot that was published) are reported; drops
        recorded after that snapshot stay new."""
        with self._lock:
            self._dropped_reported = max(self._dropped_reported, sum(reported.dropped.values()))


@dataclass(frozen=True)
class CameraView:
    name: str
    topic: str
    transport: str
    received: int
    rate_hz: float
    age_s: float | None  # None: no frame yet
    dropped: Mapping[str, int] = field(default_factory=dict)
    new_drops: int = 0  # drops since the previous report


@dataclass(frozen=True)
class InstructionView:
    topic: str
    text: str  # "" when none yet
    age_s: float | None
    received: int
    dropped: Mapping[str, int] = field(default_factory=dict)


def _ms(value: float) -> str:
    return f"{value:.2f}"


def _hz(value: float) -> str:
    return f"{value:.1f}"


def inference_status(snap: MetricsSnapshot, backend: BackendState, cameras: Sequence[CameraView],
                     config: DiagnosticsConfig, hardware_id: str) -> StatusReport:
    infer, total, e2e = snap.stage("infer"), snap.stage("total"), snap.stage("end_to_end")
    values: list[tuple[str, str]] = [
        ("latency p50 (ms)", _ms(infer["p50"])),
        ("latency p90 (ms)", _ms(infer["p90"])),
        ("latency p99 (ms)", _ms(infer["p99"])),
        ("latency max (ms)", _ms(infer["max"])),
        ("total latency p50 (ms)", _ms(total["p50"])),
        ("total latency p99 (ms)", _ms(total["p99"])),
        ("end-to-end latency p50 (ms)", _ms(e2e["p50"])),
        ("jitter (ms)", _ms(snap.jitter_ms)),
        ("node overhead p50 (ms)", _ms(snap.stage(NODE_OVERHEAD)["p50"])),
        ("node overhead p99 (ms)", _ms(snap.stage(NODE_OVERHEAD)["p99"])),
        ("throughput (Hz)", _hz(snap.throughput_hz)),
        ("input rate (Hz)", _hz(snap.input_rate_hz)),
        ("output rate (Hz)", _hz(snap.output_rate_hz)),
        ("speedup over CPU", f"{snap.speedup:.2f}" if snap.speedup > 0 else "n/a"),
        ("CPU baseline latency (ms)", _ms(snap.baseline_ms) if snap.baseline_ms > 0 else "n/a"),
        # The live speedup divides the start-up baseline by live latency, so load on the robot's CPU
        # lowers it; this one timed both side by side at start-up.
        ("speedup at start-up (side by side)",
         f"{snap.extra['startup_speedup']:.2f}" if snap.extra.get("startup_speedup") else "n/a"),
        ("parallel efficiency", f"{snap.parallel_efficiency:.3f}" if snap.parallel_efficiency > 0 else "n/a"),
        ("mean batch size", f"{snap.mean_batch_size:.2f}"),
        ("frames received", str(snap.frames_received)),
        ("frames processed", str(snap.frames_processed)),
        ("frames dropped", str(snap.frames_dropped)),
    ]
    values += [(f"dropped: {reason}", str(count)) for reason, count in sorted(snap.dropped.items())]
    values += [
        ("backend", snap.backend or backend.active),
        ("device", snap.device or backend.device),
        ("model", snap.model),
        ("backend switches", str(snap.backend_switches)),
    ]
    if snap.stage("program_total")["count"]:
        # policy programs: prefix once per chunk, the step graph N times, the whole program
        values += [("prefix p50 (ms)", _ms(snap.stage("prefix")["p50"])),
                   ("step p50 (ms)", _ms(snap.stage("step")["p50"])),
                   ("program p50 (ms)", _ms(snap.stage("program_total")["p50"])),
                   ("steps per chunk", f"{snap.extra.get('program_steps', 0):.0f}")]
    if config.target_latency_ms > 0:
        values.append(("target latency (ms)", _ms(config.target_latency_ms)))

    newest_age = min((c.age_s for c in cameras if c.age_s is not None), default=None)
    if backend.status == "failed":
        level, message = ERROR, f"no backend could load: {backend.error}"
    elif backend.status == "loading":
        level, message = STALE, "loading the model and backend"
    elif newest_age is None or newest_age > config.stale_image_timeout_s:
        level = STALE
        message = "no camera frames yet" if newest_age is None else f"no camera frame for {newest_age:.1f} s"
    elif config.target_latency_ms > 0 and total["count"] > 0 and total["p99"] > config.target_latency_ms:
        level = WARN
        message = f"latency p99 {total['p99']:.1f} ms over the {config.target_latency_ms:g} ms target"
    elif config.min_input_rate_hz > 0 and snap.input_rate_hz < config.min_input_rate_hz:
        level = WARN
        message = f"input rate {snap.input_rate_hz:.1f} Hz below {config.min_input_rate_hz:g} Hz"
    else:
        level = OK
        message = f"{_hz(snap.throughput_hz)} Hz, latency p50 {infer['p50']:.1f} ms"
    return StatusReport(f"{config.node_name}: inference", level, message, hardware_id, tuple(values))


def backend_status(snap: MetricsSnapshot, backend: BackendState, config: DiagnosticsConfig,
                   hardware_id: str) -> StatusReport:
    values = [
        ("backend", snap.backend or backend.active or "none"),
        ("device", snap.device or backend.device or "none"),
        ("model", snap.model),
        ("precision", backend.precision),
        ("candidates", ", ".join(backend.candidates)),
        ("backend switches", str(snap.backend_switches)),
        ("parallel units", str(snap.parallel_units)),
    ]
    values += [(f"backend error: {reason}", str(n)) for reason, n in sorted(snap.backend_errors.items())]
    if backend.last_switch:
        values.append(("last switch", backend.last_switch))
    if backend.error:
        values.append(("error", backend.error))
    if backend.status == "failed":
        level, message = ERROR, f"no backend could load: {backend.error}"
    elif backend.status == "loading":
        level, message = STALE, "loading"
    elif backend.candidates and backend.active and backend.active != backend.candidates[0]:
        level = WARN
        message = f"running on fallback {backend.active} ({backend.candidates[0]} unavailable or failed)"
    else:
        level, message = OK, f"running on {hardware_id}"
    return StatusReport(f"{config.node_name}: backend", level, message, hardware_id, tuple(values))


def camera_status(cam: CameraView, config: DiagnosticsConfig, hardware_id: str) -> StatusReport:
    values = [
        ("topic", cam.topic),
        ("transport", cam.transport),
        ("rate (Hz)", _hz(cam.rate_hz)),
        ("frames received", str(cam.received)),
        ("last frame age (s)", f"{cam.age_s:.2f}" if cam.age_s is not None else "never"),
        ("frames dropped", str(sum(cam.dropped.values()))),
    ]
    values += [(f"dropped: {reason}", str(n)) for reason, n in sorted(cam.dropped.items())]
    if cam.age_s is None:
        level, message = STALE, f"no frame received on {cam.topic}"
    elif cam.age_s > config.stale_image_timeout_s:
        level, message = STALE, f"no frame for {cam.age_s:.1f} s on {cam.topic}"
    elif config.min_input_rate_hz > 0 and cam.rate_hz < config.min_input_rate_hz:
        level, message = WARN, f"{cam.rate_hz:.1f} Hz, below {config.min_input_rate_hz:g} Hz"
    elif cam.new_drops:
        worst = max(cam.dropped.items(), key=lambda kv: kv[1])[0]
        level, message = WARN, f"{cam.new_drops} frame(s) dropped since the last report (mostly {worst})"
    else:
        level, message = OK, f"{cam.rate_hz:.1f} Hz"
    return StatusReport(f"{config.node_name}: input {cam.name}", level, message, hardware_id, tuple(values))


def instruction_status(ins: InstructionView, config: DiagnosticsConfig, hardware_id: str) -> StatusReport:
    shown = ins.text if len(ins.text) <= 120 else ins.text[:117] + "..."
    values = [
        ("topic", ins.topic),
        ("instruction", shown),
        ("instructions received", str(ins.received)),
        ("age (s)", f"{ins.age_s:.1f}" if ins.age_s is not None else "never"),
    ]
    values += [(f"dropped: {reason}", str(n)) for reason, n in sorted(ins.dropped.items())]
    if not ins.text:
        level, message = WARN, f"no instruction yet: publish a std_msgs/String on {ins.topic}"
    elif config.stale_instruction_timeout_s > 0 and ins.age_s is not None \
            and ins.age_s > config.stale_instruction_timeout_s:
        level, message = STALE, f"instruction is {ins.age_s:.0f} s old"
    else:
        level, message = OK, shown
    return StatusReport(f"{config.node_name}: input instruction", level, message, hardware_id, tuple(values))


def annotate_decode(report: StatusReport, jpeg_reduced_decode: bool, paths: Mapping[str, int]) -> StatusReport:
    """The JPEG decode setting and the compressed frames decoded per path (core.image.decode_path),
    added to a report: reduced decoding moves pixel values slightly, so what ran is always shown."""
    values = [("jpeg decode", "reduced (DCT scale covering the model input)" if jpeg_reduced_decode else "full")]
    values += [(f"decoded: {path}", str(n)) for path, n in sorted(paths.items())]
    return StatusReport(report.name, report.level, report.message, report.hardware_id, report.values + tuple(values))


def build_reports(snap: MetricsSnapshot, backend: BackendState, cameras: Sequence[CameraView],
                  instruction: InstructionView | None, config: DiagnosticsConfig) -> list[StatusReport]:
    """Every status of the node, in display order."""
    device = snap.device or backend.device
    name = snap.backend or backend.active or "none"
    hardware_id = snap.hardware_id or (f"{name}@{device}" if device else name)
    reports = [inference_status(snap, backend, cameras, config, hardware_id),
               backend_status(snap, backend, config, hardware_id)]
    reports += [camera_status(cam, config, hardware_id) for cam in cameras]
    if instruction is not None:
        reports.append(instruction_status(instruction, config, hardware_id))
    return reports


def state_key(reports: Sequence[StatusReport]) -> tuple:
    """Changes when a level or the hardware in use changes: the node publishes at once then."""
    return tuple((r.name, r.level, r.hardware_id) for r in reports)


def format_reports(reports: Sequence[StatusReport], keys: Sequence[str] = ()) -> str:
    """A terminal rendering like rqt_robot_monitor's list (used by `vla-accel demo`)."""
    lines = []
    for r in reports:
        lines.append(f"[{LEVEL_NAMES.get(r.level, r.level):5}] {r.name} ({r.hardware_id}): {r.message}")
        for k, v in r.values:
            if not keys or k in keys or k.startswith("dropped:"):
                lines.append(f"          {k}: {v}")
    return "\n".join(lines)
