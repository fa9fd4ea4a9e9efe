"""Message <-> core type conversions for the ROS layer (numpy and plain Python; messages passed in).

* Images: sensor_msgs/Image and CompressedImage become ``RawImage`` views over ``msg.data`` (no
  copy); decoding and validation (encoding, step, size, truncation, corrupt JPEG) happen once, in the
  core image module, so the node, bag replay and the CLI reject the same frames for the same reasons.
* Chunks: ``ActionChunk`` (core) -> vla_accel/ActionChunk (msg), values assigned as one float32
  ``array.array`` (the generated setter's fast path; a numpy array or list is iterated per element).
* First action: the standard controller message a robot can consume directly.
  - ``twist`` (geometry_msgs/TwistStamped) for end-effector deltas and velocities: MoveIt Servo takes
    TwistStamped commands; deltas are divided by the chunk's dt so the twist is a velocity.
  - ``float64_array`` (std_msgs/Float64MultiArray) for joint spaces and everything else: the message
    ros2_control's forward_command_controller (position / velocity / effort groups) subscribes to.
* Stop actions: what to publish when inputs go stale or the node shuts down (``hold`` / ``zero``).
"""
from __future__ import annotations

import array
from typing import Any, Sequence

import numpy as np

from vla_accel.core.image import RAW_ENCODINGS, normalize_encoding
from vla_accel.core.types import ActionChunk, RawImage

FIRST_ACTION_TYPES = ("auto", "twist", "float64_array", "none")
STOP_POLICIES = ("hold", "zero", "none")
# Spaces whose values are rates or increments: "hold still" is all zeros.
INCREMENTAL_SPACES = ("eef_delta", "eef_velocity", "joint_velocity", "joint_delta")
TWIST_SPACES = ("eef_delta", "eef_velocity")
_LINEAR_NAMES = ("x", "y", "z")
_ANGULAR_NAMES = ("roll", "pitch", "yaw")


# --- time -----------------------------------------------------------------------------------------
def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int, stamp: Any) -> Any:
    """Write integer nanoseconds into a builtin_interfaces/Time (in place) and return it."""
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    stamp.sec = sec
    stamp.nanosec = nanosec
    return stamp


# --- images ---------------------------------------------------------------------------------------
def _buffer_view(data: Any) -> Any:
    """A zero-copy view of a message's uint8[] field (array.array in rclpy, bytes from rosbags)."""
    try:
        return memoryview(data)
    except TypeError:  # a plain list (hand-built messages): one copy is unavoidable
        return np.asarray(data, dtype=np.uint8)


def image_msg_to_raw(msg: Any) -> RawImage:
    """sensor_msgs/Image -> RawImage viewing msg.data; nothing is validated or decoded here."""
    return RawImage(
        data=_buffer_view(msg.data),
        encoding=str(msg.encoding).strip(),
        height=int(msg.height),
        width=int(msg.width),
        step=int(msg.step),
        is_bigendian=bool(msg.is_bigendian),
    )


def compressed_msg_to_raw(msg: Any) -> RawImage:
    """sensor_msgs/CompressedImage -> RawImage (compressed) viewing msg.data."""
    # "jpeg", "png" or image_transport's "rgb8; jpeg compressed bgr8"; the core maps it (one rule for
    # the node, bags and the CLI) and rejects unknown formats as unknown_encoding.
    return RawImage(data=_buffer_view(msg.data), encoding=normalize_encoding(msg.format))


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


def chunk_values_from_msg(msg: Any) -> np.ndarray:
    """vla_accel/ActionChunk message -> (steps, dims) float32 array (a view over msg.values)."""
    flat = np.frombuffer(msg.values, dtype=np.float32) if len(msg.values) else np.zeros(0, np.float32)
    return flat.reshape(int(msg.steps), int(msg.dims))


# --- first action ---------------------------------------------------------------------------------
def resolve_first_action_type(kind: str, space: str) -> str:
    """``auto`` -> twist for end-effector deltas / velocities, float64_array otherwise."""
    if kind not in FIRST_ACTION_TYPES:
        raise ValueError(f"first_action_type must be one of {', '.join(FIRST_ACTION_TYPES)}, got {kind!r}")
    if kind == "auto":
        return "twist" if space in TWIST_SPACES else "float64_array"
    return kind


def twist_components(action: np.ndarray, names: Sequence[str], space: str, dt: float) -> tuple[list[float], list[float]]:
    """(linear xyz, angular rpy) velocities from one action row.

    Dimensions are picked by name (x, y, z, roll, pitch, yaw) and otherwise by position (the first six
    dimensions, the OpenVLA / Octo eef convention). Deltas are divided by dt to become velocities.
    """
    lowered = [n.lower() for n in names]

    def pick(wanted: tuple[str, ...], offset: int) -> list[float]:
        out = []
        for i, name in enumerate(wanted):
            if name in lowered:
                out.append(float(action[lowered.index(name)]))
            elif offset + i < action.shape[0]:
                out.append(float(action[offset + i]))
            else:
                out.append(0.0)
        return out

    linear, angular = pick(_LINEAR_NAMES, 0), pick(_ANGULAR_NAMES, 3)
    if space == "eef_delta" and dt > 0:
        linear = [v / dt for v in linear]
        angular = [v / dt for v in angular]
    return linear, angular


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


# --- stop actions ---------------------------------------------------------------------------------
def stop_action(policy: str, space: str, names: Sequence[str], last_action: np.ndarray | None, dims: int) -> np.ndarray | None:
    """The single action to publish when inputs go stale or the node stops.

    ``hold``: keep the robot where it is. For rates and increments that is zero motion, but absolute
    channels (a gripper command) keep their last value so a closed gripper does not drop its object.
    For absolute spaces (joint positions, poses) it repeats the last published action; with no
    action published yet there is nothing safe to repeat, so nothing is published (None).
    ``zero``: all zeros. ``none``: None (publish nothing).
    """
    if policy not in STOP_POLICIES:
        raise ValueError(f"stop policy must be one of {', '.join(STOP_POLICIES)}, got {policy!r}")
    if policy == "none":
        return None
    if policy == "zero":
        return np.zeros(dims, dtype=np.float32)
    if space in INCREMENTAL_SPACES:
        out = np.zeros(dims, dtype=np.float32)
        if last_action is not None:
            for i, name in enumerate(names[:dims]):
                if "gripper" in name.lower():
                    out[i] = last_action[i]
        return out
    if last_action is None:
        return None
    return np.asarray(last_action, dtype=np.float32).copy()
