"""Bag events -> observations, assembled by the runtime's ``ObservationAssembler`` (the node's own).

The node's assembler (``vla_accel.runtime.inputs``, pure Python, no rclpy) decides what an observation
is: each frame of the model's first camera triggers one, with the latest valid frame of every other
camera, the latest valid instruction and the latest joint state; malformed frames, empty
instructions and bad joint states are dropped and counted by reason. Replaying through the same
class means a bag replay and the live node accept, reject and pair exactly the same inputs.

Rate modes (``RateMode.parse``):
  * ``every``: every primary frame, in bag order (deterministic; the regression default);
  * ``rate:HZ``: the first primary frame at or after each tick of a HZ clock in bag time
    (deterministic subsampling; the frames between ticks are counted as ``subsampled``);
  * ``live``: every frame, but fed at its recorded time through the latest-frame policy, so frames
    the backend cannot keep up with are superseded (not deterministic: it depends on the machine).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from vla_accel.bags.reader import FRAME, INSTRUCTION, STATE, BagEvent, TopicSelection
from vla_accel.core.types import Observation
from vla_accel.errors import VlaAccelError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.metrics import InferenceMetrics
    from vla_accel.core.spec import ModelSpec

STREAM = "bag"


@dataclass(frozen=True)
class RateMode:
    kind: str  # every | rate | live
    hz: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "RateMode":
        value = (text or "every").strip().lower()
        if value in ("every", "live"):
            return cls(value)
        if value.startswith("rate:"):
            try:
                hz = float(value.split(":", 1)[1])
            except ValueError:
                hz = -1.0
            if hz > 0 and np.isfinite(hz):
                return cls("rate", hz)
        raise VlaAccelError(
            f"--rate-mode must be every, rate:HZ (HZ > 0, e.g. rate:5) or live; got {text!r}",
            reason="bad_argument",
        )

    def __str__(self) -> str:
        return f"rate:{self.hz:g}" if self.kind == "rate" else self.kind


@dataclass
class TimedObservation:
    observation: Observation
    log_ns: int  # bag time of the triggering frame (the replay timeline)


class ObservationBuilder:
    """Feeds bag events to an ObservationAssembler; ``skipped`` counts what never reached the engine
    apart from the primary-camera drops, which the assembler counts in ``metrics`` like the node."""

    def __init__(self, spec: "ModelSpec", selection: TopicSelection, rate: RateMode, metrics: "InferenceMetrics"):
        from vla_accel.runtime.status import CameraInput
        from vla_accel.runtime.wiring import build_assembler

        self.selection = selection
        self.rate = rate
        self.cameras = [CameraInput(cam, topic, "bag") for cam, topic in selection.cameras.items()]
        self.assembler = build_assembler(spec, self.cameras, metrics, instruction_topic=selection.instruction or "")
        self.primary = self.assembler.primary
        self.frames = 0  # primary frames seen
        self.subsampled = 0
        self._next_tick_ns: int | None = None
        self._period_ns = int(round(1e9 / rate.hz)) if rate.kind == "rate" else 0

    @property
    def skipped(self) -> dict[str, int]:
        out: collections.Counter[str] = collections.Counter(self.assembler.instruction_drops)
        out.update(self.assembler.state_drops)
        for cam in self.cameras:
            if cam.name != self.primary:  # primary drops are in metrics (they cost an observation)
                out.update({f"{reason} ({cam.name} camera)": n for reason, n in cam.dropped.items()})
        if self.subsampled:
            out["subsampled"] = self.subsampled
        return dict(out)

    def feed(self, event: BagEvent) -> TimedObservation | None:
        if event.kind == INSTRUCTION:
            self.assembler.set_instruction(event.text)
            return None
        if event.kind == STATE:
            self.assembler.set_joint_state(list(event.joint_names), event.state)
            return None
        if event.kind != FRAME:
            return None
        if event.camera == self.primary:
            self.frames += 1
            if self._period_ns and not self._on_tick(event.log_ns):
                self.subsampled += 1
                return None
        observation = self.assembler.on_frame(event.camera, event.image, event.stamp_ns, event.frame_id)
        if observation is None:
            return None
        observation.stream = STREAM
        return TimedObservation(observation, event.log_ns)

    def _on_tick(self, log_ns: int) -> bool:
        if self._next_tick_ns is None:
            self._next_tick_ns = log_ns
        if log_ns < self._next_tick_ns:
            return False
        # next tick strictly after this frame (gaps in the bag skip ticks instead of bursting)
        missed = (log_ns - self._next_tick_ns) // self._period_ns + 1
        self._next_tick_ns += missed * self._period_ns
        return True

    def observations(self, events: Iterable[BagEvent]) -> Iterator[TimedObservation]:
        for event in events:
            timed = self.feed(event)
            if timed is not None:
                yield timed
