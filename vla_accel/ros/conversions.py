"""Core types -> ROS messages (the messages are passed in or imported where they are built).

* Images: for raw encodings the core cannot decode (16-bit, YUV, Bayer, ...), cv_bridge when it is
  installed; every other frame is a zero-copy view (vla_accel.runtime.conversions).
* Chunks: ``ActionChunk`` (core) -> vla_accel/ActionChunk (msg), values assigned as one float32
  ``array.array`` (the generated setter's fast path; a numpy array or list is iterated per element).
* First action: the standard controller message a robot can consume directly.
  - ``twist`` (geometry_msgs/TwistStamped) for end-effector deltas and velocities: MoveIt Servo takes
    TwistStamped commands; deltas are divided by the chunk's dt so the twist is a velocity.
  - ``float64_array`` (std_msgs/Float64MultiArray) for joint spaces and everything else: the message
    ros2_control's forward_command_controller (position / velocity / effort groups) subscribes to.
* Health: status reports -> diagnostic_msgs/DiagnosticArray, a metrics snapshot ->
  vla_accel/InferenceStats.
"""
from __future__ import annotations

import array
from typing import Any, Sequence

import numpy as np

from vla_accel.core.image import RAW_ENCODINGS, normalize_encoding
from vla_accel.core.metrics import MetricsSnapshot
from vla_accel.core.types import ActionChunk, RawImage
from vla_accel.runtime.conversions import image_msg_to_raw, ns_to_stamp, twist_components
from vla_accel.runtime.status import StatusReport


# --- images ---------------------------------------------------------------------------------------
def make_cv_bridge() -> Any:
    """A cv_bridge.CvBridge when the ROS package is importable, else None. It is only used for raw
    encodings the core does not decode (16-bit, YUV, Bayer, ...); the numpy view stays the default."""
    from vla_accel.core.optional import module_available

    if not module_available("cv_bridge"):
        return None
    from cv_bridge import CvBridge

    return CvBridge()


def image_msg_to_frame(msg: Any, bridge: Any = None) -> RawImage | np.ndarray:
    """sensor_msgs/Image -> a RawImage view, or, for encodings the core cannot decode and when a
    cv_bridge is given, the RGB array cv_bridge converts it to. A frame cv_bridge cannot convert
    either is returned as the RawImage, which the core then rejects as unknown_encoding."""
    raw = image_msg_to_raw(msg)
    if bridge is None or normalize_encoding(raw.encoding) in RAW_ENCODINGS:
        return raw
    from cv_bridge import CvBridgeError

    try:
        return np.ascontiguousarray(bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
    except CvBridgeError:
        return raw


# --- chunks ---------------------------------------------------------------------------------------
def float32_array(values: np.ndarray) -> array.array:
    """A flat float32 array.array holding ``values`` (one memcpy, no per-element checks)."""
    out = array.array("f")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return out


def fill_chunk_msg(
    msg: Any,
    chunk: ActionChunk,
    *,
    device: str = "",
    inference_latency_ms: float = 0.0,
    total_latency_ms: float = 0.0,
    batch_size: int = 1,
) -> Any:
    """Fill a vla_accel/ActionChunk message from a core ActionChunk (header.stamp = source frame stamp)."""
    ns_to_stamp(chunk.stamp_ns, msg.header.stamp)
    msg.header.frame_id = chunk.frame_id
    msg.model = chunk.model
    msg.backend = chunk.backend
    msg.device = device
    msg.action_space = chunk.space
    msg.names = list(chunk.names)
    msg.dt = float(chunk.dt)
    msg.steps = chunk.steps
    msg.dims = chunk.dims
    msg.values = float32_array(chunk.values)
    msg.inference_latency_ms = float(inference_latency_ms)
    msg.total_latency_ms = float(total_latency_ms)
    msg.batch_size = int(batch_size)
    return msg


# --- first action ---------------------------------------------------------------------------------
def fill_twist(msg: Any, action: np.ndarray, names: Sequence[str], space: str, dt: float, stamp_ns: int, frame_id: str) -> Any:
    """Fill a geometry_msgs/TwistStamped from one action row."""
    linear, angular = twist_components(action, names, space, dt)
    ns_to_stamp(stamp_ns, msg.header.stamp)
    msg.header.frame_id = frame_id
    msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = linear
    msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = angular
    return msg


def fill_float64_array(msg: Any, action: np.ndarray, names: Sequence[str], dim_cls: Any) -> Any:
    """Fill a std_msgs/Float64MultiArray (one labelled dimension) from one action row."""
    dim = dim_cls()
    dim.label = ",".join(names)
    dim.size = int(action.shape[0])
    dim.stride = int(action.shape[0])
    msg.layout.dim = [dim]
    msg.layout.data_offset = 0
    msg.data = array.array("d", np.asarray(action, dtype=np.float64).tobytes())
    return msg


# --- health ---------------------------------------------------------------------------------------
def to_diagnostic_array(reports: Sequence[StatusReport], stamp_ns: int) -> Any:
    """diagnostic_msgs/DiagnosticArray with the header stamp set (rqt_robot_monitor needs it)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    out = DiagnosticArray()
    ns_to_stamp(stamp_ns, out.header.stamp)
    for report in reports:
        status = DiagnosticStatus()
        status.level = bytes([report.level])  # a byte field: b'\x00' in these bindings
        status.name = report.name
        status.message = report.message
        status.hardware_id = report.hardware_id
        status.values = [KeyValue(key=k, value=v) for k, v in report.values]
        out.status.append(status)
    return out


def fill_stats_msg(msg: Any, snap: MetricsSnapshot, stamp_ns: int) -> Any:
    """vla_accel/InferenceStats from a snapshot (every field a plain number for rqt_plot)."""
    ns_to_stamp(stamp_ns, msg.header.stamp)
    infer, total = snap.stage("infer"), snap.stage("total")
    msg.backend, msg.device, msg.model = snap.backend, snap.device, snap.model
    msg.latency_p50_ms = float(infer["p50"])
    msg.latency_p95_ms = float(infer["p95"])
    msg.latency_p99_ms = float(infer["p99"])
    msg.latency_max_ms = float(infer["max"])
    msg.total_p50_ms = float(total["p50"])
    msg.total_p99_ms = float(total["p99"])
    msg.end_to_end_p50_ms = float(snap.stage("end_to_end")["p50"])
    msg.age_at_start_p50_ms = float(snap.stage("age_at_start")["p50"])
    msg.jitter_ms = float(snap.jitter_ms)
    msg.throughput_hz = float(snap.throughput_hz)
    msg.input_rate_hz = float(snap.input_rate_hz)
    msg.output_rate_hz = float(snap.output_rate_hz)
    msg.speedup = float(snap.speedup)
    msg.parallel_efficiency = float(snap.parallel_efficiency)
    msg.mean_batch_size = float(snap.mean_batch_size)
    msg.frames_received = int(snap.frames_received)
    msg.frames_processed = int(snap.frames_processed)
    msg.frames_dropped = int(snap.frames_dropped)
    msg.frames_superseded = int(snap.frames_superseded)
    msg.backend_switches = int(snap.backend_switches)
    if hasattr(msg, "prefix_p50_ms"):  # fields added at the end of the message (older builds lack them)
        msg.prefix_p50_ms = float(snap.stage("prefix")["p50"])
        msg.step_p50_ms = float(snap.stage("step")["p50"])
        msg.program_p50_ms = float(snap.stage("program_total")["p50"])
        msg.program_steps = int(snap.extra.get("program_steps", 0))
    return msg
