"""Message fields -> core types, stamps, and the actions a robot gets when inputs stop.

Everything here works on any object with the fields of the ROS message it names (rclpy messages,
rosbags' deserialised messages, hand-built test objects), so the node, the bag reader and the
tests share one conversion, and none of it imports ROS.

* Images: sensor_msgs/Image and CompressedImage become ``RawImage`` views over ``msg.data`` (no
  copy); decoding and validation (encoding, step, size, truncation, corrupt JPEG) happen in the core
  image module, so the node, bag replay and the CLI reject the same frames for the same reasons.
* Stamps: builtin_interfaces/Time <-> integer nanoseconds (one conversion for the package).
* First action: which standard controller message a chunk's first action goes out as
  (``twist`` for end-effector deltas and velocities, ``float64_array`` otherwise) and its twist.
* Stop actions: what to publish when inputs go stale or the node shuts down (``hold`` / ``zero``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vla_accel.core.image import normalize_encoding
from vla_accel.core.types import RawImage
from vla_accel.errors import ConfigError

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


def split_ns(ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) as builtin_interfaces/Time holds them."""
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return sec, nanosec


def ns_to_stamp(ns: int, stamp: Any) -> Any:
    """Write integer nanoseconds into a builtin_interfaces/Time (in place) and return it."""
    stamp.sec, stamp.nanosec = split_ns(ns)
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


def chunk_values_from_msg(msg: Any) -> np.ndarray:
    """vla_accel/ActionChunk message -> (steps, dims) float32 array (a view over msg.values)."""
    flat = np.frombuffer(msg.values, dtype=np.float32) if len(msg.values) else np.zeros(0, np.float32)
    return flat.reshape(int(msg.steps), int(msg.dims))


# --- first action ---------------------------------------------------------------------------------
def resolve_first_action_type(kind: str, space: str) -> str:
    """``auto`` -> twist for end-effector deltas / velocities, float64_array otherwise."""
    if kind not in FIRST_ACTION_TYPES:
        raise ConfigError(f"first_action_type must be one of {', '.join(FIRST_ACTION_TYPES)}, got {kind!r}", reason="bad_parameter")
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
        raise ConfigError(f"stop policy must be one of {', '.join(STOP_POLICIES)}, got {policy!r}", reason="bad_parameter")
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
