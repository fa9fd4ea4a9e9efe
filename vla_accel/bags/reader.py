"""Read camera frames and instructions out of a rosbag2 bag (MCAP or sqlite3) without ROS.

``BagSource`` opens a bag directory (or a bare ``.mcap`` / ``.db3`` file), picks the camera and
instruction topics (from arguments, or by message type), and yields ``BagEvent``s in bag order:
frames as ``RawImage`` views over the message bytes (no copy; the same fields the live node's
conversion takes) and instructions as text. Single-file MCAP bags are read by ``mcap.py`` (a chunk
is read once, messages are views of it) and camera messages parsed by ``cdr.py``; other bags go
through rosbags. Messages that cannot even be deserialised are counted by reason and skipped; judging image content (encoding, size, JPEG integrity) is left to the core image
decoder so the bag replay and the live node reject exactly the same frames for the same reasons.
"""
from __future__ import annotations

import collections
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from vla_accel.bags import cdr, mcap, messages
from vla_accel.bags.messages import BagError
from vla_accel.core.types import RawImage

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.spec import ModelSpec

log = logging.getLogger(__name__)
FRAME = "frame"
STATE = "state"
JOINT_STATE = "sensor_msgs/msg/JointState"
# What rosbags raises on a truncated or corrupt CDR payload (struct.error, numpy and codec errors).
_DESERIALISE_ERRORS = (ValueError, IndexError, KeyError, AssertionError, struct.error, UnicodeDecodeError)
INSTRUCTION = "instruction"


@dataclass
class BagEvent:
    """One useful message: a camera frame or an instruction, in bag (log) time order.

    ``stamp_ns`` is the message's header stamp for frames (falls back to the log time when the
    recorder left it zero); ``log_ns`` is when the bag recorded it (the timeline for replay).
    """

    kind: str
    topic: str
    log_ns: int
    stamp_ns: int
    camera: str = ""
    image: RawImage | None = None
    text: str = ""
    state: np.ndarray | None = None  # JointState positions, in message order
    joint_names: tuple[str, ...] = ()
    frame_id: str = ""


@dataclass
class TopicSelection:
    """Which topic feeds which model camera, and where instructions come from."""

    cameras: dict[str, str]  # spec camera name -> topic
    instruction: str | None
    state: str | None = None  # sensor_msgs/JointState topic feeding the model's state input
    types: dict[str, str] = field(default_factory=dict)  # topic -> message type
    unused_images: tuple[str, ...] = ()  # image topics of the bag that feed no camera

    @property
    def primary_camera(self) -> str:
        return next(iter(self.cameras))


def open_reader(path: str | Path):
    """An opened rosbags reader; clear errors for missing paths and non-bags."""
    from rosbags.rosbag2 import Reader, ReaderError

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag not found: {path}", reason="bag_not_found")
    try:
        reader = Reader(path)
        reader.open()
    except (ReaderError, OSError, ValueError, KeyError) as exc:
        raise BagError(
            f"cannot open {path} as a rosbag2 bag (a directory with metadata.yaml, or a .mcap / .db3 "
            f"file): {exc}",
            reason="bad_bag",
        ) from exc
    return reader


def single_mcap_file(path: Path) -> Path | None:
    """The one uncompressed MCAP file of a bag (a bare .mcap file, or a bag directory holding just
    that), which ``mcap.McapMessages`` reads without copying; None for anything else."""
    if path.is_file():
        return path if path.suffix == ".mcap" else None
    try:
        import yaml

        info = yaml.safe_load((path / "metadata.yaml").read_text(encoding="utf-8"))["rosbag2_bagfile_information"]
        files = list(info.get("relative_file_paths") or [])
        storage = str(info.get("storage_identifier", ""))
        compressed = str(info.get("compression_mode") or "").lower() not in ("", "none")
    except (OSError, KeyError, TypeError, AttributeError, ImportError, ValueError) as exc:
        log.debug("bag %s: no fast MCAP path (%s)", path, exc)
        return None
    if storage != "mcap" or compressed or len(files) != 1 or not str(files[0]).endswith(".mcap"):
        return None
    candidate = path / Path(str(files[0])).name
    return candidate if candidate.is_file() else None


def raw_image_from_message(msg, typename: str) -> RawImage:
    """sensor_msgs Image / CompressedImage (rosbags or rclpy object) -> RawImage over its bytes.

    The live node's own conversion (replay itself parses frames with ``cdr.py``; the tests check
    that both give the same RawImage).
    """
    from vla_accel.runtime.conversions import compressed_msg_to_raw, image_msg_to_raw

    if typename == messages.COMPRESSED_IMAGE:
        return compressed_msg_to_raw(msg)
    return image_msg_to_raw(msg)


class BagSource:
    """A bag opened for replay. Use as a context manager; ``events()`` may be iterated repeatedly."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._reader = open_reader(self.path)
        self.topics: dict[str, str] = {c.topic: c.msgtype for c in self._reader.connections}
        self.counts: dict[str, int] = collections.Counter(
            {c.topic: c.msgcount for c in self._reader.connections}
        )
        self.skipped: collections.Counter[str] = collections.Counter()  # reason -> messages
        mcap_file = single_mcap_file(self.path)
        self._mcap = mcap.McapMessages.open(mcap_file) if mcap_file is not None else None
        # Built once per process (~0.1 s: the Kilted types plus our .msg files): here, with opening
        # the bag, rather than on the first message of a timed replay.
        messages.typestore()

    # --- topics ------------------------------------------------------------------------------
    def select_topics(
        self,
        spec: "ModelSpec",
        camera_topics: Sequence[str] = (),
        instruction_topic: str | None = None,
        state_topic: str | None = None,
    ) -> TopicSelection:
        """Map the model's cameras to topics.

        ``camera_topics`` entries are ``topic`` (assigned to the spec's cameras in order) or
        ``camera=topic``; when none are given, image topics are found by message type (sorted by
        name, raw and compressed alike) and assigned in order.
        """
        cameras: dict[str, str] = {}
        names = [c.name for c in spec.cameras]
        if camera_topics:
            positional = iter(names)
            for entry in camera_topics:
                if "=" in entry:
                    cam, topic = entry.split("=", 1)
                    if cam not in names:
                        raise BagError(
                            f"--camera-topic {entry!r}: model '{spec.name}' has no camera '{cam}'; "
                            f"cameras: {names}",
                            reason="bad_topic",
                        )
                else:
                    cam, topic = next(positional, None), entry
                    if cam is None:
                        raise BagError(
                            f"more camera topics than model '{spec.name}' has cameras ({names})",
                            reason="bad_topic",
                        )
                if topic not in self.topics:
                    raise BagError(
                        f"camera topic {topic!r} is not in {self.path}; topics: {self._describe_topics()}",
                        reason="missing_topic",
                    )
                if self.topics[topic] not in messages.IMAGE_TYPES:
                    raise BagError(
                        f"camera topic {topic!r} has type {self.topics[topic]}, expected "
                        f"{' or '.join(messages.IMAGE_TYPES)}",
                        reason="bad_topic",
                    )
                cameras[cam] = topic
        else:
            found = sorted(t for t, ty in self.topics.items() if ty in messages.IMAGE_TYPES)
            for cam, topic in zip(names, found):
                cameras[cam] = topic
        missing = [n for n in names if n not in cameras]
        if missing:
            raise BagError(
                f"no image topic for camera(s) {missing} of model '{spec.name}' in {self.path}; "
                f"topics: {self._describe_topics()}. Pass --camera-topic CAMERA=TOPIC.",
                reason="missing_topic",
            )
        # Keep the spec's camera order: the first camera's frames drive inference.
        cameras = {n: cameras[n] for n in names}

        if instruction_topic is not None:
            if self.topics.get(instruction_topic) != messages.STRING:
                raise BagError(
                    f"instruction topic {instruction_topic!r} is not a std_msgs/msg/String topic of "
                    f"{self.path}; topics: {self._describe_topics()}",
                    reason="missing_topic",
                )
        else:
            strings = sorted(t for t, ty in self.topics.items() if ty == messages.STRING)
            preferred = [t for t in strings if "instruction" in t]
            instruction_topic = (preferred or strings or [None])[0]
        if spec.state is None:
            state_topic = None
        elif state_topic is not None:
            if self.topics.get(state_topic) != JOINT_STATE:
                raise BagError(
                    f"state topic {state_topic!r} is not a {JOINT_STATE} topic of {self.path}; "
                    f"topics: {self._describe_topics()}",
                    reason="missing_topic",
                )
        else:
            joints = sorted(t for t, ty in self.topics.items() if ty == JOINT_STATE)
            state_topic = joints[0] if joints else None
        chosen = list(cameras.values()) + [t for t in (instruction_topic, state_topic) if t]
        unused = tuple(sorted(t for t, ty in self.topics.items()
                              if ty in messages.IMAGE_TYPES and t not in cameras.values()))
        if unused:
            log.warning("%s: image topic(s) %s feed no camera of model '%s' (it uses %s); choose with "
                        "--camera-topic CAMERA=TOPIC", self.path.name if hasattr(self.path, "name") else self.path,
                        ", ".join(unused), spec.name,
                        ", ".join(f"{cam} <- {topic}" for cam, topic in cameras.items()))
        return TopicSelection(
            cameras,
            instruction_topic,
            state_topic,
            {t: self.topics[t] for t in chosen},
            unused,
        )

    def _describe_topics(self) -> str:
        return ", ".join(f"{t} ({ty})" for t, ty in sorted(self.topics.items())) or "(none)"

    # --- messages ----------------------------------------------------------------------------
    def events(self, selection: TopicSelection) -> Iterator[BagEvent]:
        """Frames and instructions in bag order. Undecodable messages are counted in ``skipped``.

        Camera messages are parsed by ``cdr.py`` straight from the serialised bytes (the frame is a
        view of them, never a copy); JointState and String go through rosbags, given a memoryview
        so its ``rawdata[4:]`` does not copy the payload either.
        """
        from rosbags.serde import SerdeError

        undecodable = (*_DESERIALISE_ERRORS, SerdeError)
        store = messages.typestore()
        camera_of = {topic: cam for cam, topic in selection.cameras.items()}
        image_parsers = {messages.IMAGE: cdr.parse_image, messages.COMPRESSED_IMAGE: cdr.parse_compressed_image}
        state_topic = selection.state
        self.skipped.clear()
        for topic, log_ns, raw in self._raw_messages(selection):
            typename, log_ns = self.topics[topic], int(log_ns)
            camera = camera_of.get(topic)
            try:
                if camera is not None:
                    fields = image_parsers[typename](raw)
                else:
                    msg = store.deserialize_cdr(memoryview(raw), typename)
            except undecodable:
                # A truncated or corrupt CDR payload: skip it, count it, carry on.
                self.skipped["undecodable_message"] += 1
                continue
            if camera is not None:
                yield BagEvent(
                    kind=FRAME,
                    topic=topic,
                    log_ns=log_ns,
                    stamp_ns=fields.stamp_ns or log_ns,
                    camera=camera,
                    image=fields.image,
                    frame_id=fields.frame_id,
                )
            elif topic == state_topic:
                yield BagEvent(
                    kind=STATE,
                    topic=topic,
                    log_ns=log_ns,
                    stamp_ns=messages.stamp_to_ns(msg.header.stamp) or log_ns,
                    state=np.asarray(msg.position, dtype=np.float64),
                    joint_names=tuple(msg.name),
                )
            else:
                yield BagEvent(
                    kind=INSTRUCTION,
                    topic=topic,
                    log_ns=log_ns,
                    stamp_ns=log_ns,
                    text=str(msg.data),
                )

    def _raw_messages(self, selection: TopicSelection) -> Iterator[tuple[str, int, bytes | memoryview]]:
        """(topic, log time, serialised message) of the selected topics, in bag order."""
        if self._mcap is not None:
            yield from self._mcap.messages(selection.types)
            return
        wanted = [c for c in self._reader.connections if c.topic in selection.types]
        for connection, log_ns, raw in self._reader.messages(connections=wanted):
            yield connection.topic, log_ns, raw

    @property
    def start_ns(self) -> int:
        return int(self._reader.start_time)

    @property
    def duration_ns(self) -> int:
        return int(self._reader.duration)

    def message_count(self, selection: TopicSelection) -> int:
        return sum(self.counts[t] for t in selection.types)

    def close(self) -> None:
        if self._mcap is not None:
            self._mcap.close()
        self._reader.close()

    def __enter__(self) -> "BagSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
