"""The node's chunk execution outputs, without rclpy: async execution, JointTrajectory, URDF limits.

``ExecutionOutput.from_values(values, action_spec, metrics)`` reads the execution parameters
(vla_accel.ros.params), parses the robot description and checks the joint names at configure time
(``RobotDescriptionError`` / ``ExecutionError``: the node reports ERROR and publishes nothing), and
then, from the node's threads:

* ``want_frame(now)``: with ``async_execution``, a frame starts an inference only when the executor
  asks for the next chunk (``execution_threshold`` of the chunk left, or the delay estimate says the
  chunk would run out first); other frames are skipped and counted (``events_execution_frames_skipped``);
* ``on_chunk(chunk, now)``: the chunk as it will execute (delay-compensated, RTC-blended); fills the
  JointTrajectory (``fill_joint_trajectory``) so every point lands at ``stamp + i*dt`` in the future;
* ``sample(now)``: the control-rate action; ``limit_action`` applies the URDF limits to a single
  action for the Float64MultiArray output;
* ``report(metrics)`` / ``status(...)`` / ``fill_stats``: counters into the metrics, the ``execution``
  diagnostic status (WARN when a switch jumps more than ``jump_warn_threshold``), /vla/stats fields.
Message classes are passed in, so tests build messages without a graph.
"""
from __future__ import annotations

import array
import threading
from typing import Any, Mapping

import numpy as np

from vla_accel.core.execution import (ChunkExecutor, ExecutionConfig, TrajectoryPlan, chunk_value_at,
                                      plan_trajectory, trajectory_joint_names)
from vla_accel.core.limits import JointLimiter, parse_urdf_limits
from vla_accel.core.spec import ActionSpec
from vla_accel.core.types import ActionChunk
from vla_accel.errors import ExecutionError, RobotDescriptionError
from vla_accel.runtime.status import ERROR, OK, WARN, StatusReport

EXECUTION_STATUS = "execution"


def fill_joint_trajectory(msg: Any, plan: TrajectoryPlan, point_cls: Any) -> Any:
    """trajectory_msgs/JointTrajectory from a plan: header.stamp = the source frame's stamp,
    time_from_start = i * dt per live step, positions / velocities where the plan has them."""
    sec, nanosec = divmod(int(plan.header_stamp_ns), 1_000_000_000)
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    msg.joint_names = list(plan.joint_names)
    points = []
    for k in range(plan.points):
        point = point_cls()
        ns = int(round(plan.time_from_start_s[k] * 1e9))
        point.time_from_start.sec, point.time_from_start.nanosec = divmod(ns, 1_000_000_000)
        if plan.positions is not None:
            point.positions = array.array("d", plan.positions[k].tobytes())
        if plan.velocities is not None:
            point.velocities = array.array("d", plan.velocities[k].tobytes())
        points.append(point)
    msg.points = points
    return msg


class ExecutionOutput:
    def __init__(self, action_spec: ActionSpec, config: ExecutionConfig | None, *, joint_names: tuple[str, ...] = (),
                 limiter: JointLimiter | None = None, lead_s: float = 0.0, jump_warn: float = 0.0,
                 dry_run: bool = False, max_in_flight_s: float = 1.0):
        self.spec = action_spec
        self.executor = ChunkExecutor(action_spec, config) if config is not None else None
        self.joint_names = joint_names
        self.limiter = limiter
        self.lead_s = float(lead_s)
        self.jump_warn = float(jump_warn)
        self.dry_run = dry_run
        self.max_in_flight_s = float(max_in_flight_s)
        self.lock = threading.Lock()
        self.frames_skipped = 0
        self.inferences_lost = 0
        self.trajectories = 0
        self.trajectories_empty = 0  # every step already past on arrival
        self._last_plan: TrajectoryPlan | None = None
        self._last_action: np.ndarray | None = None
        self._program: Any = None  # flow-matching ProgramSpec when RTC runs inside its loop
        self._post: Any = None
        self._runner_of: Any = None
        self.guided_inferences = 0
        # Non-empty: nothing may reach the robot (waiting for the robot description, or it is malformed).
        self.blocked = ""
        self.limit_names: tuple[str, ...] = ()

    @classmethod
    def from_values(cls, values: Mapping[str, Any], action_spec: ActionSpec,
                    robot_description: str | None = None) -> "ExecutionOutput":
        """Build from the node's parameters; raises RobotDescriptionError / ExecutionError (configure)."""
        config = None
        if values.get("async_execution"):
            rate = values.get("control_rate_hz") or 0.0
            config = ExecutionConfig(
                mode=values.get("execution_mode", "naive"), threshold=values.get("execution_threshold", 0.5),
                control_period_s=1.0 / rate if rate else action_spec.dt,
                rtc_schedule=values.get("rtc_schedule", "exp"),
                rtc_max_guidance=values.get("rtc_max_guidance", 5.0)).validate()
        names: tuple[str, ...] = ()
        if values.get("joint_trajectory_topic") and action_spec.space == "joint_delta":
            raise ExecutionError("joint_trajectory_topic with joint_delta actions needs the source frame's joint "
                                 "state, which the node does not attach to chunks: use a joint_position model")
        if values.get("joint_trajectory_topic"):
            names = trajectory_joint_names(action_spec, values.get("trajectory_joint_names") or ())
        text = values.get("robot_description", "") if robot_description is None else robot_description
        limiter = None
        limit_names = names or (tuple(action_spec.names) if action_spec.space.startswith("joint_") else ())
        if text:
            if limit_names:
                limiter = JointLimiter(limit_names, parse_urdf_limits(text))
            else:
                parse_urdf_limits(text)  # still validated: a malformed URDF is an error at configure
        out = cls(action_spec, config, joint_names=names, limiter=limiter,
                  lead_s=values.get("trajectory_lead_s", 0.0), jump_warn=values.get("jump_warn_threshold", 0.0),
                  dry_run=bool(values.get("dry_run", False)))
        out.limit_names = limit_names
        return out

    # --- robot description from a topic -----------------------------------------------------------
    def wait_for_description(self, topic: str) -> None:
        """Limits will come from ``topic``: until a valid description arrives nothing reaches the robot."""
        self.blocked = f"waiting for the robot description on {topic}: nothing is sent to the robot"

    def set_robot_description(self, text: str) -> str:
        """A robot description received at run time: "" when applied, else why not (the robot stays
        blocked, never unlimited)."""
        try:
            limits = parse_urdf_limits(text)
            limiter = JointLimiter(self.limit_names, limits) if self.limit_names else None
        except RobotDescriptionError as exc:
            self.blocked = f"{exc}: nothing is sent to the robot"
            return str(exc)
        with self.lock:
            self.limiter = limiter
            self.blocked = ""
        return ""

    def attach_program(self, program: Any, postprocessor: Any, runner_of: Any) -> bool:
        """rtc mode with a flow-matching program: guide its denoising loop (core.rtc) instead of blending.
        ``runner_of()`` returns the running backend's ProgramRunner (None when the backend has none, e.g.
        after a fallback; that inference then falls back to prefix freezing plus blending)."""
        if (self.executor is None or self.executor.config.mode != "rtc" or program is None
                or getattr(program, "kind", "") != "flow_matching"):
            return False
        self._program, self._post, self._runner_of = program, postprocessor, runner_of
        return True

    def _prepare_guide(self, stamp_ns: int | None) -> None:
        """Called with the lock held, just before the one inference in flight is handed over."""
        runner = self._runner_of() if self._runner_of is not None else None
        guided = runner is not None and hasattr(runner, "guide") and stamp_ns is not None
        self.executor.guided = guided
        if not guided:
            return
        plan = self.executor.rtc_plan(stamp_ns)
        flow = self._program.flow
        runner.guide = None if plan is None else plan.guide(
            flow.t_start, flow.t_end, self.executor.config.rtc_max_guidance,
            scale=self._post.scale, offset=self._post.offset)
        self.guided_inferences += int(plan is not None)

    # --- inputs -----------------------------------------------------------------------------------
    def want_frame(self, now_ns: int, stamp_ns: int | None = None) -> bool:
        if self.executor is None:
            return True
        with self.lock:
            ex = self.executor
            # A frame handed over but never turned into a chunk (superseded, dropped, backend error) must not
            # block the next inference: give up on it after a few delay estimates.
            patience = max(self.max_in_flight_s, 3.0 * ex.delay.estimate_s)
            if ex.in_flight and (now_ns - ex._in_flight_since) / 1e9 > patience:
                ex.inference_failed()  # its frame was dropped or failed: do not wait forever
                self.inferences_lost += 1
            if ex.should_start_inference(now_ns):
                ex.inference_started(now_ns)
                if self._program is not None:
                    self._prepare_guide(stamp_ns)
                return True
            self.frames_skipped += 1
            return False

    # --- chunks in --------------------------------------------------------------------------------
    def on_chunk(self, chunk: ActionChunk, now_ns: int) -> ActionChunk | None:
        """The chunk as it will execute, or None when it is entirely in the past."""
        if self.executor is None:
            return chunk
        with self.lock:
            return self.executor.push(chunk, now_ns)

    def trajectory(self, chunk: ActionChunk, now_ns: int, joint_state: np.ndarray | None = None) -> TrajectoryPlan | None:
        """The live points of ``chunk`` (limits applied), or None when nothing lies in the future."""
        plan = plan_trajectory(chunk, self.joint_names, now_ns, self.lead_s, joint_state)
        if plan is None:
            self.trajectories_empty += 1
            return None
        if self.limiter is not None:
            if plan.positions is not None:
                start = None
                if self._last_plan is not None and self._last_plan.positions is not None:
                    # Continue from where the previous trajectory is at this trajectory's first point.
                    first_ns = plan.header_stamp_ns + plan.time_from_start_s[0] * 1e9
                    prev = self._last_plan
                    start = chunk_value_at(prev.positions, int(prev.header_stamp_ns + prev.time_from_start_s[0] * 1e9),
                                           chunk.dt, int(first_ns) - int(round(chunk.dt * 1e9)))
                plan = _replace_plan(plan, positions=self.limiter.limit_positions(plan.positions, chunk.dt, start))
            if plan.velocities is not None:
                plan = _replace_plan(plan, velocities=self.limiter.limit_velocities(plan.velocities))
        self._last_plan = plan
        self.trajectories += 1
        return plan

    # --- control rate -----------------------------------------------------------------------------
    def sample(self, now_ns: int) -> np.ndarray | None:
        with self.lock:
            detail = self.executor.sample(now_ns) if self.executor is not None else None
        return None if detail is None else detail.values

    def limit_action(self, action: np.ndarray, dt: float) -> np.ndarray:
        """URDF limits on one action of a joint space (positions: clip + velocity from the last one)."""
        if self.limiter is None:
            return action
        if self.spec.space == "joint_position":
            out = self.limiter.limit_positions(action[None], dt, self._last_action)[0]
        elif self.spec.space == "joint_velocity":
            out = self.limiter.limit_velocities(action[None])[0]
        else:
            return action
        self._last_action = out
        return out.astype(np.float32)

    # --- reporting --------------------------------------------------------------------------------
    def counters(self) -> dict[str, float]:
        out: dict[str, float] = {"execution_frames_skipped": self.frames_skipped,
                                 "execution_inferences_lost": self.inferences_lost,
                                 "trajectories_published": self.trajectories,
                                 "trajectories_all_past": self.trajectories_empty,
                                 "execution_rtc_guided_inferences": self.guided_inferences}
        if self.executor is not None:
            out.update(self.executor.counters())
        if self.limiter is not None:
            out.update(self.limiter.counters())
        return out

    def report(self, metrics: Any) -> None:
        """Counters into the metrics (snapshot extra); attach the boundary meter once."""
        if self.executor is not None and getattr(metrics, "_boundary", None) is not self.executor.meter:
            metrics.attach_boundary(self.executor.meter)
        for key, value in self.counters().items():
            metrics.set_value(key, value)

    def status(self, extra: Mapping[str, Any], node_name: str, hardware_id: str) -> StatusReport:
        jump = float(extra.get("chunk_jump_max", 0.0))
        values = [(k, f"{float(extra.get(k, 0.0)):.6g}") for k in (
            "chunk_switches", "chunk_jump_max", "chunk_jump_last", "chunk_jump_p95", "action_jerk_p95",
            "action_step_max", "execution_delay_estimate_ms", "execution_stale_steps_skipped",
            "execution_chunks_late", "execution_early_starts", "execution_frames_skipped", "execution_inferences_lost",
            "trajectories_published", "trajectories_all_past", "limits_position_clipped", "limits_velocity_limited")]
        values.append(("mode", self.executor.config.mode if self.executor is not None else "first_action"))
        values.append(("dry_run", str(self.dry_run).lower()))
        level, message = OK, "ok"
        if self.blocked:
            level, message = (WARN if self.blocked.startswith("waiting") else ERROR), self.blocked
        elif self.jump_warn > 0 and jump > self.jump_warn:
            level, message = WARN, f"chunk switch jumped {jump:.4g} (> jump_warn_threshold {self.jump_warn:g})"
        clipped = int(extra.get("limits_position_clipped", 0)) + int(extra.get("limits_velocity_limited", 0))
        if clipped and level == OK:
            message = f"{clipped} value(s) limited by the robot description"
        if self.dry_run:
            message += " (dry run: nothing sent to the robot)"
        return StatusReport(f"{node_name}: {EXECUTION_STATUS}", level, message, hardware_id, tuple(values))


def fill_stats(msg: Any, extra: Mapping[str, Any]) -> Any:
    """The execution fields of vla_accel/InferenceStats (appended to the message)."""
    msg.chunk_switches = int(extra.get("chunk_switches", 0))
    msg.chunk_jump_max = float(extra.get("chunk_jump_max", 0.0))
    msg.chunk_jump_last = float(extra.get("chunk_jump_last", 0.0))
    msg.action_jerk_p95 = float(extra.get("action_jerk_p95", 0.0))
    msg.execution_delay_estimate_ms = float(extra.get("execution_delay_estimate_ms", 0.0))
    msg.stale_steps_skipped = int(extra.get("execution_stale_steps_skipped", 0))
    msg.limits_position_clipped = int(extra.get("limits_position_clipped", 0))
    msg.limits_velocity_limited = int(extra.get("limits_velocity_limited", 0))
    return msg


def _replace_plan(plan: TrajectoryPlan, **changes: Any) -> TrajectoryPlan:
    from dataclasses import replace

    return replace(plan, **changes)
