"""Message types for bags: the standard ROS 2 (Kilted) types plus vla_accel's own messages.

rosbags ships the standard types; ``vla_accel/ActionChunk`` and ``vla_accel/InferenceStats`` are
registered from the package's own ``msg/*.msg`` text, so the bags we write embed the real message
definitions (``ros2 bag info`` and Foxglove can decode them without our Python code) and the CDR we
write is byte-compatible with what rclpy publishes for the built messages.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vla_accel.errors import VlaAccelError

if TYPE_CHECKING:  # pragma: no cover
    from rosbags.typesys.store import Typestore

PACKAGE = "vla_accel"
OWN_MESSAGES = ("ActionChunk", "InferenceStats")
ACTION_CHUNK = "vla_accel/msg/ActionChunk"
INFERENCE_STATS = "vla_accel/msg/InferenceStats"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)


class BagError(VlaAccelError):
    """A bag cannot be opened, read or written (missing, wrong format, missing topics)."""

    reason = "bad_bag"


def msg_dir_candidates() -> list[Path]:
    """Where ``ActionChunk.msg`` may live: the source tree, then installed ROS share folders."""
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "msg"]  # checkout: <repo>/vla_accel/bags/messages.py
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        candidates.append(Path(prefix) / "share" / PACKAGE / "msg")
    candidates.append(Path(sys.prefix) / "share" / PACKAGE / "msg")
    return candidates


def find_msg_dir() -> Path:
    for candidate in msg_dir_candidates():
        if all((candidate / f"{name}.msg").is_file() for name in OWN_MESSAGES):
            return candidate
    looked = ", ".join(str(c) for c in msg_dir_candidates())
    raise BagError(
        f"cannot find vla_accel's message definitions ({', '.join(OWN_MESSAGES)}.msg); looked in: "
        f"{looked}. Run from the source checkout, or source the ROS build (scripts/build_ros.sh, "
        "then `source .ros_build/env.sh`) so share/vla_accel/msg is on AMENT_PREFIX_PATH.",
        reason="missing_msg_definitions",
    )


@functools.lru_cache(maxsize=1)
def typestore() -> "Typestore":
    """The Kilted typestore with vla_accel's messages registered (built once per process)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    msg_dir = find_msg_dir()
    types = {}
    for name in OWN_MESSAGES:
        text = (msg_dir / f"{name}.msg").read_text(encoding="utf-8")
        types.update(get_types_from_msg(text, f"{PACKAGE}/msg/{name}"))
    store.register(types)
    return store


def message_class(typename: str):
    """The rosbags dataclass for a type name, e.g. ``message_class(ACTION_CHUNK)``."""
    return typestore().types[typename]


def stamp_from_ns(stamp_ns: int):
    Time = message_class("builtin_interfaces/msg/Time")
    return Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def header(stamp_ns: int, frame_id: str = ""):
    Header = message_class("std_msgs/msg/Header")
    return Header(stamp=stamp_from_ns(stamp_ns), frame_id=frame_id)
