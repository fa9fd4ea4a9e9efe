"""The wiring every entry point shares: cameras -> observation assembler -> inference session.

``camera_inputs`` turns the configured topics and transports into one ``CameraInput`` per model
camera; ``build_assembler`` puts an ``ObservationAssembler`` over them. ``Runtime`` adds the
session: a frame goes in through ``on_frame`` (assembled, then submitted to the inference loop),
chunks come out through the ``on_chunks`` callback, and ``reports`` builds the status reports from
snapshots (reading resets no counter; ``mark_reported`` does, once a report is out).

The node, the demo without ROS and the node benchmark run a ``Runtime``; the bag replay runs
several backends over one set of observations, so it takes ``build_assembler`` alone.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Sequence

from vla_accel.errors import ConfigError
from vla_accel.runtime import parity
from vla_accel.runtime.config import RuntimeConfig
from vla_accel.runtime.health import HealthConfig, InputHealth, escalate
from vla_accel.runtime.inputs import Drop, ObservationAssembler
from vla_accel.runtime.session import InferenceSession
from vla_accel.runtime.speedup import annotate
from vla_accel.runtime.status import (
    annotate_decode,
    CameraInput,
    CameraView,
    DiagnosticsConfig,
    StatusReport,
    build_reports,
)

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.metrics import InferenceMetrics, MetricsSnapshot
    from vla_accel.core.spec import ModelSpec
    from vla_accel.core.types import Observation, RawImage


def camera_inputs(spec: "ModelSpec", topics: Sequence[str], transports: Sequence[str]) -> list[CameraInput]:
    """One CameraInput per model camera, in the spec's camera order. ``transports``: one entry for
    every camera, or one per camera (raw or compressed, see config.CAMERA_TRANSPORTS); a compressed
    camera's topic ends in /compressed (image_transport's naming)."""
    if len(topics) < len(spec.cameras):
        raise ConfigError(
            f"model {spec.name} has cameras {[c.name for c in spec.cameras]} but camera_topics has "
            f"{len(topics)} entr{'y' if len(topics) == 1 else 'ies'}: give one topic per camera",
            reason="bad_parameter")
    if len(transports) not in (1, len(spec.cameras)):
        raise ConfigError("camera_transports needs one entry, or one per camera", reason="bad_parameter")
    cameras = []
    for i, cam in enumerate(spec.cameras):
        transport = transports[i] if len(transports) > 1 else transports[0]
        topic = topics[i]
        if transport == "compressed" and not topic.endswith("/compressed"):
            topic += "/compressed"
        cameras.append(CameraInput(cam.name, topic, transport))
    return cameras


def build_assembler(spec: "ModelSpec", cameras: Sequence[CameraInput], metrics: "InferenceMetrics", *,
                    instruction_topic: str = "", instruction: str = "",
                    on_drop: Callable[[Drop], None] | None = None,
                    max_input_age_s: float | None = None, max_image_bytes: int | None = None) -> ObservationAssembler:
    """The assembler over ``cameras``, counting into ``metrics``."""
    return ObservationAssembler(spec, cameras, metrics, instruction_topic, instruction, on_drop=on_drop,
                                max_input_age_s=max_input_age_s, max_image_bytes=max_image_bytes)


class Runtime:
    """Cameras -> assembler -> session, configured by a RuntimeConfig.

    Phases: ``load_model()`` (cheap) -> ``make_inputs(topics, transports)`` -> ``load()`` (backend
    chain, baseline, engine, loop) -> ``start()`` -> ``on_frame(...)``* -> ``stop()``.
    """

    def __init__(self, config: RuntimeConfig, *, on_chunks: Callable[[list], None],
                 on_error: Callable[[BaseException], None] | None = None,
                 on_switch: Callable[[str, str, BaseException], None] | None = None,
                 on_drop: Callable[[Drop], None] | None = None, node_name: str = "vla_accel"):
        self.config = config
        self.node_name = node_name
        self.session = InferenceSession(config, on_chunks=on_chunks, on_error=on_error, on_switch=on_switch)
        self._on_drop = on_drop
        self.cameras: list[CameraInput] = []
        self.assembler: ObservationAssembler | None = None
        self.health: InputHealth | None = None

    # --- phases ---------------------------------------------------------------------------------
    def load_model(self) -> "ModelSpec":
        self.session.load_model()
        return self.session.spec

    def make_inputs(self, topics: Sequence[str], transports: Sequence[str] = ("raw",),
                    instruction_topic: str = "", state_topic: str = "") -> ObservationAssembler:
        """Cameras and the assembler over them, plus the drop / stall watch (``state_topic``: where
        the robot state comes from, named when the model needs it and frames wait for it)."""
        if self.session.spec is None:
            self.load_model()
        spec, c = self.session.spec, self.config
        self.cameras = camera_inputs(spec, topics, transports)
        self.assembler = build_assembler(spec, self.cameras, self.session.metrics,
                                         instruction_topic=instruction_topic, instruction=c.instruction,
                                         on_drop=self._on_drop, max_input_age_s=c.stale_image_timeout_s,
                                         max_image_bytes=c.max_image_bytes)
        self.health = InputHealth(HealthConfig(
            drop_warn_ratio=c.drop_warn_ratio, stall_error_s=c.stall_error_s,
            state_topic=state_topic if spec.state is not None else "",
            state_joints=tuple(spec.state.names) if spec.state is not None else ()))
        return self.assembler

    def load(self) -> None:
        self.session.load()

    def start(self) -> None:
        self.session.start()

    def stop(self, timeout: float = 2.0) -> bool:
        return self.session.stop(timeout)

    # --- inputs ---------------------------------------------------------------------------------
    def on_frame(self, camera: str, image: "RawImage", stamp_ns: int, frame_id: str = "",
                 received_ns: int | None = None,
                 admit: "Callable[[Observation], bool] | None" = None) -> "Observation | None":
        """One camera frame: assembled with the latest other inputs and, when it makes an
        observation that ``admit`` (default: every one) lets through, submitted to the inference loop.
        Returns that observation (None: stored, dropped or not admitted; the admitter counts its own)."""
        observation = self.assembler.on_frame(camera, image, stamp_ns, frame_id, received_ns)
        if observation is not None and admit is not None and not admit(observation):
            return None
        if observation is not None:
            self.session.submit(observation)
        return observation

    def set_instruction(self, text: object) -> bool:
        return self.assembler.set_instruction(text)

    def set_joint_state(self, names: Sequence[str], positions: Sequence[float]) -> bool:
        return self.assembler.set_joint_state(names, positions)

    # --- health ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.session.state.status == "running"

    def status_config(self) -> DiagnosticsConfig:
        c = self.config
        return DiagnosticsConfig(node_name=self.node_name, target_latency_ms=c.target_latency_ms,
                                 min_input_rate_hz=c.min_input_rate_hz, stale_image_timeout_s=c.stale_image_timeout_s,
                                 stale_instruction_timeout_s=c.stale_instruction_timeout_s)

    def camera_snapshots(self, now_ns: int | None = None) -> list[CameraView]:
        return [c.snapshot(now_ns) for c in self.cameras]

    def reports(self, cameras: Sequence[CameraView] | None = None,
                snap: "MetricsSnapshot | None" = None) -> list[StatusReport]:
        """Every status report now (``cameras`` / ``snap``: the snapshots to report; default: taken
        now). Reading resets no counter: call ``mark_reported`` with the same camera snapshots once
        the reports are out. The drop / stall window advances with each call (one per report)."""
        session = self.session
        state = session.state
        views = self.camera_snapshots() if cameras is None else list(cameras)
        instruction = self.assembler.instruction_view() if self.assembler is not None else None
        snap = session.metrics.snapshot() if snap is None else snap
        reports = build_reports(snap, state, views, instruction, self.status_config())
        reports[0] = annotate(reports[0], snap, self.config.speedup_baseline, session.speedup_timing)
        engine = getattr(session, "engine", None)
        if engine is not None:
            pre = engine.preprocessor
            reports[0] = annotate_decode(reports[0], pre.jpeg_reduced_decode, pre.decode_counts())
        if session.parity:
            reports[1] = parity.annotate(reports[1], session.parity, state.active)
        if self.health is not None and state.status == "running":
            window = self.health.update(time.monotonic_ns(), snap.frames_received, snap.frames_processed,
                                        snap.dropped)
            reports[0] = escalate(reports[0], self.health.assess(window))
        return reports

    def mark_reported(self, cameras: Sequence[CameraView]) -> None:
        for camera, view in zip(self.cameras, cameras):
            camera.clear(view)
