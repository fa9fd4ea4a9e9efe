"""The VLA inference node: camera frames + instruction (+ joint states) -> action chunks.

    python -m vla_accel.ros.vla_node --ros-args -p backend:=onnxruntime -p model:=tiny
    ros2 run vla_accel vla_node --ros-args --params-file config/cpu.yaml

Topics (defaults; see vla_accel/ros/params.py): subscribes /camera/image_raw (sensor_msgs/Image, or
CompressedImage on <topic>/compressed), /vla/instruction (std_msgs/String), /joint_states; publishes
/vla/action_chunk (vla_accel/ActionChunk, header.stamp = the source frame's stamp), /vla/action
(TwistStamped or Float64MultiArray), /vla/stats (vla_accel/InferenceStats) and /diagnostics.

Lifecycle: this plain node runs its phases itself: declare parameters -> configure (load model and
backend; on failure it stays up and reports ERROR on /diagnostics) -> activate (subscribe, start the
loop) -> shutdown (publish the on_shutdown action, stop the loop, join threads). vla_accel.ros.managed_node
maps the same phases onto rclpy.lifecycle transitions for systems with a lifecycle manager.

Everything that runs without ROS is vla_accel.runtime (typed config, observation assembly, session,
status reports), wired once by runtime.wiring.Runtime; this node declares parameters, converts
messages, publishes, and maps ROS timers onto the runtime.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.duration import Duration
from rclpy.exceptions import NameValidationException, ParameterException
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_accel.core.ratelimit import RateLimitedLogger
from vla_accel.core.scheduling import QUEUED
from vla_accel.errors import VlaAccelError
from vla_accel.msg import ActionChunk as ActionChunkMsg
from vla_accel.msg import InferenceStats
from vla_accel.ros import conversions, params
from vla_accel.ros.teardown import bounded_teardown, exit_process
from vla_accel.runtime import execution_output
from vla_accel.runtime import status
from vla_accel.runtime.conversions import compressed_msg_to_raw, resolve_first_action_type, stamp_to_ns, stop_action
from vla_accel.runtime.inputs import ObservationAssembler
from vla_accel.runtime.wiring import Runtime

log = logging.getLogger("vla_accel.vla_node")
RELIABLE_INPUT_DEPTH = 30
LOST_IN_TRANSPORT = "lost_in_transport"


class VlaNode(Node):
    def __init__(self, overrides: dict[str, Any] | None = None, node_name: str = "vla_node"):
        super().__init__(node_name)
        self.values = params.declare_all(self, overrides)
        self.config = params.runtime_config(self.values)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.drop_log = RateLimitedLogger(log, 5.0)
        self.runtime: Runtime | None = None
        self.session = None
        self.assembler: ObservationAssembler | None = None
        self.cameras: list[status.CameraInput] = []
        self.streamer = None
        self.execution: execution_output.ExecutionOutput | None = None  # async execution, trajectory, limits
        self.trajectory_pub = None
        self.output_enabled = True  # False: inference paused and nothing published (a deactivated managed node)
        self.bridge = None
        self._stream_lock = threading.Lock()
        self._last_action: np.ndarray | None = None
        self._stale = False
        self._diag_key: tuple = ()
        self._force_diagnostics = threading.Event()
        # Node overhead per chunk: image callback entry -> chunk (and first action) published, minus
        # inference and minus queueing behind a busy worker; recorded as the metrics stage "node_overhead"
        # (see _on_chunks).
        self._overhead_lock = threading.Lock()
        self._entry_ns: dict[int, int] = {}  # source stamp -> callback entry (monotonic ns)
        # Messages the delivering thread refills for every chunk (one thread delivers: the serial worker,
        # or the pipeline's post stage; publish() serialises synchronously, so reuse is safe). Building
        # nested rosidl messages is Python attribute work on every frame, after inference evicted the
        # caches; refilling skips the constructors. Timers and shutdown build their own messages.
        self._chunk_msg = ActionChunkMsg()
        self._first_action_msg: Any = None
        self._camera_subs: list = []
        self._activated_at: float | None = None
        self._unmatched_warned = False
        self._make_publishers()

    # --- phases ---------------------------------------------------------------------------------
    def configure(self) -> bool:
        """Load model and backend. False (node stays up, diagnostics ERROR) when nothing can run."""
        self.runtime = Runtime(self.config, on_chunks=self._on_chunks, on_error=self._on_loop_error,
                               on_switch=self._on_switch, on_drop=self._on_drop)
        self.session = self.runtime.session
        try:
            self.runtime.load_model()
            self.execution = execution_output.ExecutionOutput.from_values(self.values, self.session.spec.action)
            self._make_inputs()
            self.runtime.load()
            self.execution.attach_program(getattr(self.session.spec, "program", None), self.session.engine.postprocessor,
                                          lambda: getattr(self.session.chain.active, "_runner", None))
        except VlaAccelError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            if self.session.state.status != "failed":
                from dataclasses import replace
                self.session.state = replace(self.session.state, status="failed", error=str(exc))
            self._publish_diagnostics()
            return False
        s = self.session
        self.get_logger().info(
            f"model {s.bundle.name} on {s.chain.active_name}@{s.device} (candidates {s.candidates}); "
            f"CPU baseline {s.metrics.baseline_ms:.2f} ms; load times (ms) "
            + ", ".join(f"{k} {v:.0f}" for k, v in s.load_times_ms.items()))
        return True

    def activate(self) -> None:
        """Subscribe and start inference."""
        values, spec = self.values, self.session.spec
        # Reliable input: a queue of about a second of 30 Hz frames, so a busy executor (inference holding
        # the CPU) catches up instead of the reader history overwriting frames it already received.
        qos = qos_profile_sensor_data if values["input_qos"] == "sensor_data" else QoSProfile(depth=RELIABLE_INPUT_DEPTH)
        self.bridge = conversions.make_cv_bridge()  # optional: exotic raw encodings only
        for cam in self.cameras:
            events = SubscriptionEventCallbacks(
                message_lost=lambda info, c=cam: self._on_frames_lost(c, info.total_count_change),
                incompatible_qos=lambda info, c=cam: self.get_logger().error(
                    f"camera '{c.name}': a publisher on {c.topic} has incompatible QoS (policy id "
                    f"{info.last_policy_kind}): input_qos is {values['input_qos']}; a reliable subscriber does not "
                    f"match a best-effort publisher"))
            if cam.transport == "compressed":
                sub = self.create_subscription(CompressedImage, cam.topic,
                                               lambda m, c=cam.name: self._on_image(c, m, compressed=True), qos,
                                               event_callbacks=events)
            else:
                sub = self.create_subscription(Image, cam.topic, lambda m, c=cam.name: self._on_image(c, m), qos,
                                               event_callbacks=events)
            self._camera_subs.append((cam, sub))
        self._activated_at = time.monotonic()
        self.create_subscription(String, values["instruction_topic"], self._on_instruction, QoSProfile(depth=10))
        if spec.state is not None:
            self.create_subscription(JointState, values["joint_states_topic"], self._on_joint_state, qos)
        if values["stream_actions"] or (self.execution is not None and self.execution.executor is not None):
            from vla_accel.core.streaming import ActionStreamer

            self.streamer = ActionStreamer(spec.action, mode=values["streaming_mode"])
            rate = values["control_rate_hz"] or 1.0 / spec.action.dt
            self.create_timer(1.0 / rate, self._on_control_tick)
        self.runtime.start()
        if spec.state is not None:
            self.get_logger().warning(
                f"model {spec.name} needs the robot state: frames are dropped (missing_state) until a "
                f"sensor_msgs/JointState arrives on {values['joint_states_topic']} with joints "
                f"{', '.join(spec.state.names) or f'{spec.state.dims} positions'}")
        self.get_logger().info(
            "listening: " + ", ".join(f"{c.name}={c.topic} ({c.transport})" for c in self.cameras)
            + f"; instruction {values['instruction_topic']}")

    def shutdown(self) -> None:
        """Publish the on_shutdown action (robot stops or holds), stop the loop, join its threads."""
        t0 = time.monotonic()
        try:
            self._publish_stop(self.values["on_shutdown"], "shutdown", wait_acked=True)
        finally:
            if self.runtime is not None and not self.runtime.stop(timeout=2.0):
                self.get_logger().error("inference threads did not stop within 2 s")
        # A last /diagnostics with the final counters: inputs counted since the last periodic one
        # (up to stats_period_s of them) would otherwise never reach the monitors.
        if self.context.ok():  # not after an external rclpy.shutdown(): publishing would raise
            # Stats and diagnostics from one snapshot, so the last figures on both topics agree.
            snap = self.session.metrics.snapshot() if self.session is not None else None
            if snap is not None and self.session.state.status == "running":
                self.stats_pub.publish(conversions.fill_stats_msg(InferenceStats(), snap,
                                                                  self.get_clock().now().nanoseconds))
            self._publish_diagnostics(snap)
            try:
                self.diag_pub.wait_for_all_acked(Duration(seconds=0.3))
            except (AttributeError, RuntimeError) as exc:  # best effort, as for the stop action
                log.debug("wait_for_all_acked: %s", exc)
        self.get_logger().info(f"stopped in {time.monotonic() - t0:.2f} s")

    # --- set-up helpers -------------------------------------------------------------------------
    def _make_publishers(self) -> None:
        values = self.values
        reliable = QoSProfile(depth=10)
        self.chunk_pub = self.create_publisher(ActionChunkMsg, values["action_chunk_topic"], reliable)
        self.stats_pub = self.create_publisher(InferenceStats, values["stats_topic"], reliable)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", reliable)
        self.action_pub = None
        self.create_timer(values["stats_period_s"], self._on_stats_tick)
        self.create_timer(0.1, self._on_watchdog_tick)

    def _make_inputs(self) -> None:
        values, spec = self.values, self.session.spec
        self.assembler = self.runtime.make_inputs(values["camera_topics"], values["camera_transports"],
                                                  values["instruction_topic"], values["joint_states_topic"])
        self.cameras = self.runtime.cameras
        kind = resolve_first_action_type(values["first_action_type"], spec.action.space)
        self.action_kind = kind
        if kind == "twist":
            from geometry_msgs.msg import TwistStamped

            self.action_pub = self.create_publisher(TwistStamped, values["action_topic"], QoSProfile(depth=10))
        elif kind == "float64_array":
            self.action_pub = self.create_publisher(Float64MultiArray, values["action_topic"], QoSProfile(depth=10))
        if values["joint_trajectory_topic"]:
            self.trajectory_pub = self.create_publisher(JointTrajectory, values["joint_trajectory_topic"],
                                                        QoSProfile(depth=10))
        if values["robot_description_topic"] and not values["robot_description"]:
            from rclpy.qos import DurabilityPolicy

            self.execution.wait_for_description(values["robot_description_topic"])
            self.create_subscription(String, values["robot_description_topic"], self._on_robot_description,
                                     QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))

    # --- callbacks: inputs ----------------------------------------------------------------------
    def _on_image(self, camera: str, msg: Any, compressed: bool = False) -> None:
        entry_ns = time.monotonic_ns()
        stamp_ns = stamp_to_ns(msg.header.stamp)
        if camera == self.assembler.primary:
            # noted before the frame is submitted, so a chunk can never come back before its entry time
            with self._overhead_lock:
                self._entry_ns[stamp_ns] = entry_ns
                if len(self._entry_ns) > 64:  # dropped and superseded frames never come back: bound the map
                    self._entry_ns.pop(next(iter(self._entry_ns)))
        raw = compressed_msg_to_raw(msg) if compressed else conversions.image_msg_to_frame(msg, self.bridge)
        self.runtime.on_frame(camera, raw, stamp_ns, msg.header.frame_id, entry_ns, admit=self._admit)

    def _admit(self, observation: Any) -> bool:
        """Whether an assembled observation goes to inference: not while a managed node is inactive,
        and with async execution only when the executing chunk needs a successor (counted there)."""
        if not self.output_enabled:
            return False
        if self.execution is not None and self.execution.executor is not None:
            # The node's clock only where execution paces frames: rclpy's Clock.now() builds a Time
            # object on every call, a cost on every frame's path for nothing otherwise.
            return self.execution.want_frame(self.get_clock().now().nanoseconds, observation.stamp_ns)
        return True

    def _on_frames_lost(self, cam: status.CameraInput, count: int) -> None:
        """Frames the middleware reports lost before they reached the callback: counted, not silent."""
        for _ in range(max(0, int(count))):
            cam.record_drop(LOST_IN_TRANSPORT)
        if cam.name == self.session.spec.cameras[0].name and count > 0:
            self.session.metrics.record_received(int(count))
            self.session.metrics.record_dropped(LOST_IN_TRANSPORT, int(count))
        self.drop_log.warning(f"{cam.name}:{LOST_IN_TRANSPORT}", "camera '%s': %d frame(s) lost before delivery",
                              cam.name, count)

    def _on_instruction(self, msg: String) -> None:
        if self.assembler is None:
            return
        previous = self.assembler.instruction_view().text
        if self.assembler.set_instruction(msg.data) and msg.data != previous:
            self.get_logger().info(f"instruction: {msg.data[:200]!r}")

    def _on_robot_description(self, msg: String) -> None:
        problem = self.execution.set_robot_description(msg.data)
        if problem:
            self.get_logger().error(f"robot description rejected, nothing is sent to the robot: {problem}")
        else:
            self.get_logger().info("robot description received: joint limits applied")
        self._force_diagnostics.set()

    def _on_joint_state(self, msg: JointState) -> None:
        if self.assembler is not None:
            self.assembler.set_joint_state(list(msg.name), msg.position)

    def _on_drop(self, drop) -> None:
        self.drop_log.warning(f"{drop.source}:{drop.reason}", "dropped %s input [%s]: %s",
                              drop.source, drop.reason, drop.message)

    def _on_set_parameters(self, changes) -> SetParametersResult:
        staged, reason = params.stage_changes(self.values, [(c.name, c.value) for c in changes],
                                              running=self.session is not None)
        if staged is None:
            return SetParametersResult(successful=False, reason=reason)
        if self.session is not None and self.session.engine is not None:
            try:
                self.session.apply_clip(staged["action_clip_low"], staged["action_clip_high"])
            except VlaAccelError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        if staged["instruction"] != self.values["instruction"] and staged["instruction"] and self.assembler:
            self.assembler.set_instruction(staged["instruction"])
        self.values = staged
        self.config = params.runtime_config(staged)
        if self.runtime is not None:
            self.runtime.config = self.config  # health goals and stale timeouts apply to the next report
        return SetParametersResult(successful=True)

    # --- callbacks: outputs (the loop's worker thread) ------------------------------------------
    def _on_chunks(self, chunks) -> None:
        if not self.output_enabled:
            self.session.metrics.record_event("chunks_withheld_inactive", len(chunks))
            return
        if self._stale:
            # Inputs went stale (e.g. the instruction timed out) and the hold was published: chunks
            # computed meanwhile must not override it. Counted, not silent.
            self.session.metrics.record_event("chunks_withheld_stale", len(chunks))
            return
        device = self.session.device
        execution = self.execution
        # The clock only when something here reads it (async execution or a trajectory to plan).
        timed = execution is not None and (execution.executor is not None or self.trajectory_pub is not None)
        for chunk in chunks:
            executed = chunk
            if timed:
                now_ns = self.get_clock().now().nanoseconds
                executed = execution.on_chunk(chunk, now_ns)
                if (executed is not None and self.trajectory_pub is not None and not self.values["dry_run"]
                        and not execution.blocked):
                    plan = self.execution.trajectory(executed, now_ns)
                    if plan is not None:
                        self.trajectory_pub.publish(execution_output.fill_joint_trajectory(
                            JointTrajectory(), plan, JointTrajectoryPoint))
            t = chunk.timings_ms
            msg = conversions.fill_chunk_msg(
                self._chunk_msg, chunk, device=device, inference_latency_ms=t.get("infer", 0.0),
                total_latency_ms=t.get("total", 0.0), batch_size=int(t.get("batch_size", 1)))
            self.chunk_pub.publish(msg)
            if executed is None or (self.execution is not None and self.execution.executor is not None):
                pass  # executed by ChunkExecutor (sampled on the control timer), or entirely in the past
            elif self.streamer is not None:
                with self._stream_lock:
                    self.streamer.push(chunk)
            elif not self.values["dry_run"]:
                self._publish_action(chunk.values[0], chunk.stamp_ns, chunk.frame_id, chunk.dt, reuse=True)
            with self._overhead_lock:
                entry_ns = self._entry_ns.pop(chunk.stamp_ns, None)
            if entry_ns is not None:
                # Into the metrics, so /diagnostics shows it and `vla-accel bench node` reads it there.
                # Everything from callback entry to published counts (conversion, validation, hand-off
                # to the worker and its wake-up, preprocessing, postprocessing, message, publishing)
                # except the backend call itself and the time the frame queued behind earlier batches
                # while the worker was busy (scheduling.QUEUED: that is their inference, not ours).
                elapsed_ms = (time.monotonic_ns() - entry_ns) / 1e6
                self.session.metrics.record_stage(
                    status.NODE_OVERHEAD, elapsed_ms - t.get("infer", 0.0) - t.get(QUEUED, 0.0))
        self.session.metrics.record_published(chunks)

    def _publish_action(self, action: np.ndarray, stamp_ns: int, frame_id: str, dt: float, reuse: bool = False) -> None:
        """Publish one action. ``reuse``: refill the delivering thread's message (only that thread
        may pass it); timers and shutdown run on other threads and build a fresh one."""
        if self.action_pub is None:
            return
        spec = self.session.spec.action
        if self.execution is not None:
            if self.execution.blocked:
                return  # no valid robot description yet: nothing reaches the robot (diagnostics say why)
            action = self.execution.limit_action(np.asarray(action, dtype=np.float32), dt)
        msg = self._first_action_msg if reuse else None
        if self.action_kind == "twist":
            from geometry_msgs.msg import TwistStamped

            msg = TwistStamped() if msg is None else msg
            conversions.fill_twist(msg, action, spec.names, spec.space, dt, stamp_ns, frame_id)
        else:
            msg = Float64MultiArray() if msg is None else msg
            conversions.fill_float64_array(msg, action, spec.names, MultiArrayDimension)
        if reuse:
            self._first_action_msg = msg
        self.action_pub.publish(msg)
        self._last_action = np.array(action, dtype=np.float32)

    def _publish_stop(self, policy: str, why: str, wait_acked: bool = False) -> None:
        """Publish the stop / hold action. ``wait_acked`` (shutdown only, off the executor's callbacks):
        wait for reliable subscribers' acknowledgements, so the hold is delivered before the process
        exits. Never from a callback: the wait would stall the executor and overflow input queues."""
        if self.session is None or self.session.spec is None or self.values["dry_run"]:
            return
        spec = self.session.spec.action
        action = stop_action(policy, spec.space, spec.names, self._last_action, spec.dims)
        if action is None or self.action_pub is None:
            return
        self._publish_action(action, self.get_clock().now().nanoseconds, "", spec.dt)
        self.get_logger().info(f"{why}: published a {policy} action on {self.values['action_topic']}")
        if not wait_acked:
            return
        try:
            self.action_pub.wait_for_all_acked(Duration(seconds=0.5))
        except (AttributeError, RuntimeError) as exc:  # best effort: the message is already sent
            log.debug("wait_for_all_acked: %s", exc)

    def _on_loop_error(self, exc: BaseException) -> None:
        self.drop_log.error(f"loop:{getattr(exc, 'reason', type(exc).__name__)}", "inference error: %s", exc)

    def _on_switch(self, old: str, new: str, error: BaseException) -> None:
        self._force_diagnostics.set()

    # --- timers ---------------------------------------------------------------------------------
    def _on_control_tick(self) -> None:
        if not self.output_enabled:
            return
        now_ns = self.get_clock().now().nanoseconds
        if self.execution is not None and self.execution.executor is not None:
            action = self.execution.sample(now_ns)  # measured (jump, jerk) even in a dry run
            if self.values["dry_run"]:
                return
        elif self.values["dry_run"]:
            return
        else:
            with self._stream_lock:
                action = self.streamer.sample(now_ns)
        if action is not None:
            self._publish_action(action, now_ns, "", self.session.spec.action.dt)

    def _check_matched(self) -> None:
        """Once: say which camera topic has matched no publisher and delivered no frame 10 s after
        subscribing, and what to check (a camera that sent frames and has since stopped is a stale input)."""
        if self._unmatched_warned or self._activated_at is None or time.monotonic() - self._activated_at < 10.0:
            return
        self._unmatched_warned = True
        for cam, sub in self._camera_subs:
            if sub.get_publisher_count() == 0 and cam.last_received_ns == 0:
                import os

                self.get_logger().warning(
                    f"camera '{cam.name}': {cam.topic} has matched no publisher 10 s after subscribing. Check "
                    f"ROS_DOMAIN_ID (here {os.environ.get('ROS_DOMAIN_ID', '0 (unset)')}), "
                    f"FASTDDS_BUILTIN_TRANSPORTS (here {os.environ.get('FASTDDS_BUILTIN_TRANSPORTS', 'unset')}; "
                    f"it must be the same in every process), the topic name and QoS (input_qos "
                    f"{self.values['input_qos']}: a best-effort publisher does not match a reliable subscriber)")

    def _on_watchdog_tick(self) -> None:
        self._check_matched()
        if self.assembler is None or self.session is None or self.session.state.status != "running":
            return
        now = time.monotonic_ns()
        ages = [c.snapshot(now).age_s for c in self.cameras[:1]]  # reading resets nothing
        ins = self.assembler.instruction_view(now)
        stale = ages[0] is None or ages[0] > self.values["stale_image_timeout_s"] or (
            self.values["stale_instruction_timeout_s"] > 0 and ins.age_s is not None
            and ins.age_s > self.values["stale_instruction_timeout_s"])
        if stale and not self._stale and ages[0] is not None:
            self._publish_stop(self.values["on_stale"], "inputs stale")
        if stale != self._stale:
            self._force_diagnostics.set()
        self._stale = stale
        if self._force_diagnostics.is_set():
            self._publish_diagnostics()

    def _on_stats_tick(self) -> None:
        snap = None
        if self.session is not None and self.session.state.status == "running":
            if self.execution is not None:
                self.execution.report(self.session.metrics)
            snap = self.session.metrics.snapshot()
            msg = conversions.fill_stats_msg(InferenceStats(), snap, self.get_clock().now().nanoseconds)
            self.stats_pub.publish(execution_output.fill_stats(msg, snap.extra))
        self._publish_diagnostics(snap)  # the same snapshot: /vla/stats and /diagnostics agree

    def diagnostic_reports(self, snap=None, cameras: list | None = None) -> list:
        """The node's status reports now. ``snap``: the metrics snapshot to report (the one /vla/stats
        got); ``cameras``: the camera snapshots to report. Default: taken now; nothing is reset."""
        if self.runtime is not None:
            snap = self.session.metrics.snapshot() if snap is None else snap
            reports = self.runtime.reports(cameras, snap)
            if self.execution is not None:
                reports.append(self.execution.status(snap.extra, self.runtime.node_name, reports[0].hardware_id))
            return reports
        from vla_accel.core.metrics import InferenceMetrics

        config = status.DiagnosticsConfig(node_name="vla_accel")
        metrics = InferenceMetrics(model=self.values["model"])
        return status.build_reports(metrics.snapshot(), status.BackendState(status="loading"), [], None, config)

    def _publish_diagnostics(self, snap=None) -> None:
        self._force_diagnostics.clear()
        views = [c.snapshot() for c in self.cameras]  # reading resets nothing
        reports = self.diagnostic_reports(snap, views)
        key = status.state_key(reports)
        if self._diag_key and key != self._diag_key:
            changed = [r.name + "=" + status.LEVEL_NAMES[r.level] for r in reports]
            self.get_logger().info("diagnostics changed: " + ", ".join(changed))
        self._diag_key = key
        self.diag_pub.publish(conversions.to_diagnostic_array(reports, self.get_clock().now().nanoseconds))
        if self.runtime is not None:
            self.runtime.mark_reported(views)  # their drops are reported now


def make_executor(kind: str) -> Any:
    """The executor named by the ``executor`` parameter.

    ``events``: rclpy's C++ EventsExecutor (rclpy.experimental, Jazzy and newer). The image callback
    hands each frame to the inference worker thread; SingleThreadedExecutor then spends ~0.2 ms of
    Python rebuilding its wait set while holding the GIL, so the worker wakes only when the executor
    blocks again (measured by `vla-accel bench node`). The EventsExecutor waits in C++ with the GIL
    released. Where it does not exist (Humble) the node falls back to SingleThreadedExecutor."""
    if kind == "events":
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:
            log.warning("rclpy.experimental.EventsExecutor is not available in this ROS distribution: "
                        "using SingleThreadedExecutor (node overhead ~0.2 ms higher per frame)")
        else:
            return EventsExecutor()
    return SingleThreadedExecutor()


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT / SIGTERM; publishes the on_shutdown action on the way out."""
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] [%(name)s]: %(message)s")
    # Our own signal handling: rclpy's handler would shut the context down before the `finally`
    # below could publish the stop action (teleop_twist_keyboard's lesson).
    rclpy.init(args=sys.argv if args is None else args,
               signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    node = None
    executor = None
    try:
        node = VlaNode()
        if node.configure():
            node.activate()
        # Added once every subscription and timer exists: the EventsExecutor registers a node's
        # entities when the node is added (entities created later were sometimes never served).
        executor = make_executor(node.values["executor"])
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # shutting down below
    except (VlaAccelError, ParameterException, NameValidationException) as exc:
        hint = ""
        if isinstance(exc, ParameterException):
            hint = " (ROS parses unquoted true/false/on/off/yes/no as booleans and digits as numbers)"
        print(f"vla_node: invalid configuration: {exc}{hint}", file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.shutdown()  # the on_shutdown action first: what the robot must get
        bounded_teardown("vla_node", node, executor, done="the on_shutdown action was published before it")
    return 0


def run() -> None:
    """Entry point of `python -m vla_accel.ros.vla_node` and `ros2 run vla_accel vla_node`."""
    exit_process(main())


if __name__ == "__main__":
    run()
