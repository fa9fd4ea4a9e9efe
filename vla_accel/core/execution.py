"""Executing action chunks asynchronously: when to infer, where a new chunk takes over, how it joins.

The robot executes the current chunk while the next one is inferred. ``ChunkExecutor`` decides

* **when to start the next inference**: when the share of the current chunk left falls to
  ``threshold`` (LeRobot's ``chunk_size_threshold``), and in any case early enough that the new chunk
  arrives before the current one runs out (remaining time <= delay estimate + one control period):
  a threshold too small for the measured delay would otherwise never take effect and the robot
  would hold between chunks;
* **where the new chunk takes over**: step ``i`` of a chunk belongs to ``stamp + i*dt`` on the source
  clock. A chunk that arrives ``d`` after its frame was taken has its first ``ceil(d / dt)`` steps in
  the past; they are skipped (counted in ``stale_steps_skipped``), never replayed. ``d`` is measured
  per chunk and kept as a running estimate (``DelayEstimator``: a high quantile of recent delays);
* **how it joins** (``mode``): ``naive`` (hard switch at the first live step), ``ensemble`` (ACT's
  temporal ensemble), ``blend`` (cross-fade over ``blend_time_s``), ``rtc`` (real-time chunking: the
  steps that execute during inference are frozen to the current chunk and the rest of the overlap is
  guided toward continuing it: inside the denoising loop for flow-matching programs through
  ``rtc_plan`` -> ``RtcPlan.guide``, by prefix freezing plus blending for single-pass programs).

Every output goes through a ``BoundaryMeter`` (jump at each switch, jerk of the executed sequence).
``plan_trajectory`` turns a chunk into the points of a joint trajectory that all lie in the future.
Pure: no threads, no clock reads (times are passed in), so replays and tests drive it exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from vla_accel.core.boundary import BoundaryMeter
from vla_accel.core.metrics import LatencyWindow
from vla_accel.core.rtc import RTC_SCHEDULES, RtcPlan, blend_chunk
from vla_accel.core.spec import ActionSpec
from vla_accel.core.streaming import ActionStreamer, StreamSample
from vla_accel.core.types import ActionChunk
from vla_accel.errors import ConfigError, ExecutionError

EXECUTION_MODES = ("naive", "ensemble", "blend", "rtc")
_STREAM_MODE = {"naive": "latest", "ensemble": "ensemble", "blend": "blend", "rtc": "latest"}
JOINT_SPACES = ("joint_position", "joint_velocity", "joint_delta")


def first_live_step(stamp_ns: int, now_ns: int, dt: float, lead_s: float = 0.0) -> int:
    """The first step of a chunk stamped ``stamp_ns`` whose time ``stamp + i*dt`` is not before
    ``now + lead`` (steps before it are in the past)."""
    ahead = (int(now_ns) - int(stamp_ns)) / 1e9 + float(lead_s)
    return max(0, math.ceil(ahead / float(dt) - 1e-9))


def chunk_value_at(values: np.ndarray, stamp_ns: int, dt: float, t_ns: int) -> np.ndarray:
    """A chunk's action at ``t_ns`` (linear between steps, clamped at both ends), as the streamer plays it."""
    vals = np.asarray(values, dtype=np.float64)
    u = (int(t_ns) - int(stamp_ns)) / 1e9 / float(dt)
    last = vals.shape[0] - 1
    if u <= 0:
        return vals[0]
    if u >= last:
        return vals[last]
    i = int(math.floor(u))
    frac = u - i
    return vals[i] * (1.0 - frac) + vals[i + 1] * frac


class DelayEstimator:
    """Running estimate of the inference delay (source frame stamp -> chunk ready, seconds): the
    ``quantile`` of the last ``window`` measurements, ``initial_s`` before the first one."""

    def __init__(self, initial_s: float = 0.0, window: int = 32, quantile: float = 90.0):
        if not (math.isfinite(initial_s) and initial_s >= 0):
            raise ConfigError(f"initial delay must be >= 0 seconds, got {initial_s!r}")
        self.initial_s = float(initial_s)
        self.quantile = float(quantile)
        self._window = LatencyWindow(window)

    def record(self, delay_s: float) -> None:
        if math.isfinite(delay_s) and delay_s >= 0:
            self._window.add(float(delay_s))

    @property
    def samples(self) -> int:
        return self._window.total_count

    @property
    def estimate_s(self) -> float:
        if len(self._window) == 0:
            return self.initial_s
        return float(np.percentile(self._window.values(), self.quantile))


@dataclass(frozen=True)
class ExecutionConfig:
    mode: str = "naive"
    threshold: float = 0.5  # start the next inference when this share of the current chunk is left
    control_period_s: float = 0.05
    initial_delay_s: float = 0.0
    blend_time_s: float = 0.2
    ensemble_decay: float = 0.01
    rtc_schedule: str = "exp"
    rtc_blend_steps: int = 0  # 0 = the whole overlap after the frozen prefix
    rtc_max_guidance: float = 5.0

    def validate(self) -> "ExecutionConfig":
        if self.mode not in EXECUTION_MODES:
            raise ExecutionError(f"execution mode must be one of {', '.join(EXECUTION_MODES)}, got {self.mode!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ExecutionError(f"execution threshold must be in [0, 1], got {self.threshold!r}")
        if not (math.isfinite(self.control_period_s) and self.control_period_s > 0):
            raise ExecutionError(f"control period must be > 0 s, got {self.control_period_s!r}")
        if self.rtc_schedule not in RTC_SCHEDULES:
            raise ExecutionError(f"rtc schedule must be one of {', '.join(RTC_SCHEDULES)}, got {self.rtc_schedule!r}")
        if self.rtc_blend_steps < 0 or self.rtc_max_guidance < 0:
            raise ExecutionError("rtc_blend_steps and rtc_max_guidance must be >= 0")
        return self


class ChunkExecutor:
    """Async chunk execution for one output stream (see the module docstring). Call from one thread."""

    def __init__(self, action_spec: ActionSpec, config: ExecutionConfig, *, hold: str | None = None,
                 guided: bool = False):
        self.spec = action_spec
        self.config = config.validate()
        # guided: the program applies RTC inside its denoising loop (flow matching), so push() must not
        # blend again; otherwise (single-pass) rtc mode blends the new chunk with the plan.
        self.guided = guided
        self.streamer = ActionStreamer(action_spec, _STREAM_MODE[config.mode], blend_time_s=config.blend_time_s,
                                       ensemble_decay=config.ensemble_decay, hold=hold)
        self.delay = DelayEstimator(config.initial_delay_s)
        self.meter = BoundaryMeter(action_spec.dims, config.control_period_s)
        self.current: ActionChunk | None = None
        self._switch_from: ActionChunk | None = None
        self._switch_at_ns: int | None = None
        self._in_flight_since: int | None = None
        self.inferences_started = 0
        self.chunks_executed = 0
        self.chunks_late = 0  # every step already in the past on arrival: discarded
        self.stale_steps_skipped = 0
        self.early_starts = 0  # started before the threshold so the chunk would not run dry

    # --- when to infer --------------------------------------------------------------------------
    @property
    def in_flight(self) -> bool:
        return self._in_flight_since is not None

    def remaining_s(self, now_ns: int) -> float:
        if self.current is None:
            return 0.0
        end = self.current.stamp_ns + self.current.steps * self.current.dt * 1e9
        return max(0.0, (end - now_ns) / 1e9)

    def should_start_inference(self, now_ns: int) -> bool:
        """True when the next inference should start now (none in flight, and the current chunk is
        down to ``threshold`` of its length or would run out before a new one can arrive)."""
        if self._in_flight_since is not None:
            return False
        if self.current is None:
            return True
        remaining = self.remaining_s(now_ns)
        duration = self.current.steps * self.current.dt
        if remaining <= self.config.threshold * duration:
            return True
        if remaining <= self.delay.estimate_s + self.config.control_period_s:
            self.early_starts += 1
            return True
        return False

    def inference_started(self, now_ns: int) -> None:
        self._in_flight_since = int(now_ns)
        self.inferences_started += 1

    def inference_failed(self) -> None:
        """The inference in flight produced no chunk (dropped, backend error): allow the next one."""
        self._in_flight_since = None

    def rtc_plan(self, new_stamp_ns: int, steps: int | None = None) -> RtcPlan | None:
        """The RTC plan for a chunk about to be inferred from a frame stamped ``new_stamp_ns``: the
        current chunk's continuation, frozen over the estimated delay. None without a current chunk
        or outside rtc mode."""
        if self.config.mode != "rtc" or self.current is None:
            return None
        cur = self.current
        blend = self.config.rtc_blend_steps or None
        return RtcPlan.from_previous(cur.values, cur.stamp_ns, cur.dt, new_stamp_ns, steps or self.spec.steps,
                                     self.delay.estimate_s, self.config.rtc_schedule, blend)

    # --- chunks in, actions out -----------------------------------------------------------------
    def push(self, chunk: ActionChunk, now_ns: int) -> ActionChunk | None:
        """A chunk ready at ``now_ns``. Returns the chunk as it will execute (blended in rtc mode for
        single-pass programs), or None when every step of it is already in the past (counted)."""
        self._in_flight_since = None
        delay_s = (int(now_ns) - chunk.stamp_ns) / 1e9
        self.delay.record(delay_s)
        live = first_live_step(chunk.stamp_ns, now_ns, chunk.dt)
        if live >= chunk.steps:
            self.chunks_late += 1
            return None
        self.stale_steps_skipped += live
        if self.config.mode == "rtc" and not self.guided and self.current is not None:
            cur = self.current
            # Freeze what actually executed until now (the measured delay of this chunk).
            plan = RtcPlan.from_previous(cur.values, cur.stamp_ns, cur.dt, chunk.stamp_ns, chunk.steps, delay_s,
                                         self.config.rtc_schedule, self.config.rtc_blend_steps or None)
            chunk = replace(chunk, values=blend_chunk(chunk.values, plan))
        if not self.streamer.push(chunk, now_ns):
            return None
        self._switch_from = self.current
        self._switch_at_ns = int(now_ns)
        self.current = chunk
        self.chunks_executed += 1
        return chunk

    def sample(self, t_ns: int) -> StreamSample | None:
        """The action for control time ``t_ns`` (None before the first chunk); measured for jump/jerk."""
        detail = self.streamer.sample_detail(t_ns)
        if detail is None:
            return None
        if self._switch_at_ns is not None and t_ns >= self._switch_at_ns:
            old = self._switch_from
            if old is not None and not detail.holding:
                before = chunk_value_at(old.values, old.stamp_ns, old.dt, t_ns)
                self.meter.record_switch(before, detail.values)
            self._switch_at_ns = None
            self._switch_from = None
        self.meter.record_output(detail.values)
        return detail

    def counters(self) -> dict[str, float]:
        return {
            "execution_inferences_started": self.inferences_started,
            "execution_chunks_executed": self.chunks_executed,
            "execution_chunks_late": self.chunks_late,
            "execution_stale_steps_skipped": self.stale_steps_skipped,
            "execution_early_starts": self.early_starts,
            "execution_delay_estimate_ms": self.delay.estimate_s * 1e3,
            "execution_hold_samples": self.streamer.hold_samples,
        }


# --- joint trajectories ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TrajectoryPlan:
    """A joint trajectory from a chunk: ``header_stamp_ns`` (the source frame's stamp) and, per point,
    ``time_from_start_s`` = i * dt for the live steps i >= ``first_step``; ``positions`` and/or
    ``velocities`` (points, joints)."""

    header_stamp_ns: int
    joint_names: tuple[str, ...]
    first_step: int
    time_from_start_s: np.ndarray
    positions: np.ndarray | None
    velocities: np.ndarray | None

    @property
    def points(self) -> int:
        return int(self.time_from_start_s.shape[0])


def trajectory_joint_names(action_spec: ActionSpec, mapping: Sequence[str] = ()) -> tuple[str, ...]:
    """Joint names for a joint trajectory: ``mapping`` (one controller joint name per action dimension)
    or the action spec's names. Only joint action spaces can become a joint trajectory."""
    if action_spec.space not in JOINT_SPACES:
        raise ExecutionError(
            f"a JointTrajectory needs a joint action space ({', '.join(JOINT_SPACES)}); model actions are "
            f"'{action_spec.space}': use the TwistStamped output (MoveIt Servo) instead")
    names = tuple(mapping) if mapping else tuple(action_spec.names)
    if len(names) != action_spec.dims:
        raise ExecutionError(f"trajectory_joint_names has {len(names)} names; the action has {action_spec.dims} "
                             f"dimensions {tuple(action_spec.names)}")
    if len(set(names)) != len(names):
        raise ExecutionError(f"trajectory_joint_names must be unique, got {names}")
    return names


def plan_trajectory(chunk: ActionChunk, joint_names: Sequence[str], now_ns: int, lead_s: float = 0.0,
                    joint_state: np.ndarray | None = None) -> TrajectoryPlan | None:
    """The live part of ``chunk`` as trajectory points, each at ``stamp + i*dt`` with ``i`` from the
    first step not before ``now + lead_s`` (``lead_s``: the expected transport delay to the
    controller), so no point lies in the past when it is received. None when nothing is left.

    joint_position: positions; joint_velocity: velocities; joint_delta: positions = the source frame's
    joint state + the cumulative deltas (``joint_state`` required)."""
    first = first_live_step(chunk.stamp_ns, now_ns, chunk.dt, lead_s)
    if first >= chunk.steps:
        return None
    values = np.asarray(chunk.values, dtype=np.float64)
    positions = velocities = None
    if chunk.space == "joint_position":
        positions = values[first:]
    elif chunk.space == "joint_velocity":
        velocities = values[first:]
    elif chunk.space == "joint_delta":
        if joint_state is None:
            raise ExecutionError("joint_delta actions need the joint state of the source frame for a trajectory")
        positions = (np.asarray(joint_state, dtype=np.float64)[: values.shape[1]] + np.cumsum(values, axis=0))[first:]
    else:
        raise ExecutionError(f"a JointTrajectory needs a joint action space, got '{chunk.space}'")
    times = np.arange(first, chunk.steps, dtype=np.float64) * chunk.dt
    return TrajectoryPlan(chunk.stamp_ns, tuple(joint_names), first, times, positions, velocities)
