"""A small, deterministic sample bag for replay tests and demos (generated on demand, not committed).

The scene is a coloured square moving across a gradient background, seen by two cameras:

* ``/camera/image_raw`` (sensor_msgs/Image) cycling through rgb8 640x480, bgr8 320x240, mono8
  160x120 and rgb8 641x479 with 5 bytes of row padding (step != width * 3);
* ``/wrist_camera/image_raw/compressed`` (sensor_msgs/CompressedImage, JPEG 320x240);

or, with ``primary="jpeg"``, a JPEG primary camera instead of the raw one:
``/camera/image_raw/compressed`` (sensor_msgs/CompressedImage, 4:2:0 JPEG at ``primary_size``, 640x480
by default, the way USB and RealSense cameras stream it); its broken frames are a JPEG cut short and a
frame in a format the core does not decode (``tiff``);

plus ``/vla/instruction`` (std_msgs/String) and ``/joint_states`` (sensor_msgs/JointState).

A few messages are broken on purpose, each the way real bags break, and ``SampleManifest`` says
which, so tests can check that each is skipped and counted under the right reason:
truncated pixel data, an unsupported encoding, a corrupt JPEG, an empty instruction and a CDR payload
cut short (which cannot even be deserialised).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla_accel.bags import messages
from vla_accel.bags.messages import BagError

CAMERA_TOPIC = "/camera/image_raw"
CAMERA_JPEG_TOPIC = "/camera/image_raw/compressed"  # the primary camera of a primary="jpeg" sample
PRIMARY_KINDS = ("raw", "jpeg")
WRIST_TOPIC = "/wrist_camera/image_raw/compressed"
INSTRUCTION_TOPIC = "/vla/instruction"
JOINT_STATES_TOPIC = "/joint_states"
START_NS = 1_700_000_000 * 1_000_000_000  # a realistic wall-clock epoch for stamps
JOINT_NAMES = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "joint7", "gripper")

# (encoding, width, height, row padding bytes) cycled over the raw camera's frames
RAW_LAYOUTS = (("rgb8", 640, 480, 0), ("bgr8", 320, 240, 0), ("mono8", 160, 120, 0), ("rgb8", 641, 479, 5))


@dataclass
class SampleManifest:
    """What was written: message counts per topic and the broken messages by expected reason."""

    path: Path
    frames: int
    rate_hz: float
    counts: dict[str, int] = field(default_factory=dict)
    # reason -> number of camera frames the core decoder must reject for it
    broken_frames: dict[str, int] = field(default_factory=dict)
    # reason -> number of messages that must be skipped before inference (instructions, CDR)
    broken_messages: dict[str, int] = field(default_factory=dict)
    instructions: list[tuple[int, str]] = field(default_factory=list)  # (log_ns, text)


def scene_rgb(width: int, height: int, t: float) -> np.ndarray:
    """The synthetic scene at time ``t`` seconds: HxWx3 uint8 RGB, a pure function of its inputs."""
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[..., 0] = (40 + 120 * xs + 0 * ys).astype(np.uint8)
    img[..., 1] = (60 + 100 * ys + 0 * xs).astype(np.uint8)
    img[..., 2] = (90 + 60 * (1 - xs) * ys).astype(np.uint8)
    # the object: a red-orange square moving on a Lissajous path, its hue drifting with time
    side = max(4, min(width, height) // 6)
    cx = int((0.5 + 0.35 * np.sin(2 * np.pi * 0.25 * t)) * (width - side))
    cy = int((0.5 + 0.35 * np.sin(2 * np.pi * 0.4 * t + 1.0)) * (height - side))
    colour = (230, int(60 + 80 * (0.5 + 0.5 * np.sin(t))), 30)
    img[cy : cy + side, cx : cx + side] = colour
    return img


def _raw_payload(rgb: np.ndarray, encoding: str, padding: int) -> tuple[np.ndarray, int]:
    if encoding == "bgr8":
        pixels = rgb[..., ::-1]
    elif encoding == "mono8":
        pixels = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
        pixels = pixels[..., None]
    else:
        pixels = rgb
    height, width, channels = pixels.shape
    step = width * channels + padding
    rows = np.zeros((height, step), dtype=np.uint8)
    rows[:, : width * channels] = pixels.reshape(height, width * channels)
    return rows.reshape(-1), step


def _encode_jpeg(rgb: np.ndarray, subsampling: str = "444") -> bytes:
    try:
        import simplejpeg

        return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=90, colorspace="RGB",
                                      colorsubsampling=subsampling)
    except ImportError:
        import io

        from PIL import Image as PILImage

        buf = io.BytesIO()
        PILImage.fromarray(rgb).save(buf, format="JPEG", quality=90,
                                     subsampling={"444": "4:4:4", "422": "4:2:2", "420": "4:2:0"}[subsampling])
        return buf.getvalue()


def make_sample_bag(
    path: str | Path,
    *,
    frames: int = 24,
    rate_hz: float = 10.0,
    storage: str = "mcap",
    broken: bool = True,
    joint_states: bool = True,
    primary: str = "raw",
    primary_size: tuple[int, int] = (640, 480),
) -> SampleManifest:
    """Write the sample bag to ``path`` (a new directory) and return its manifest.

    ``primary``: ``raw`` (sensor_msgs/Image cycling through RAW_LAYOUTS) or ``jpeg`` (a
    CompressedImage camera of ``primary_size`` = (width, height) on CAMERA_JPEG_TOPIC)."""
    from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

    path = Path(path)
    if path.exists():
        raise BagError(f"{path} exists already; choose a new path for the sample bag", reason="bag_exists")
    if frames < 1 or rate_hz <= 0:
        raise BagError(f"sample bag needs frames >= 1 and rate > 0, got {frames}, {rate_hz}", reason="bad_argument")
    if primary not in PRIMARY_KINDS:
        raise BagError(f"primary camera must be one of {', '.join(PRIMARY_KINDS)}, got {primary!r}",
                       reason="bad_argument")
    jpeg_width, jpeg_height = (int(v) for v in primary_size)
    if not (16 <= jpeg_width <= 8192 and 16 <= jpeg_height <= 8192):
        raise BagError(f"primary_size must be between 16 and 8192 pixels per side, got {primary_size}",
                       reason="bad_argument")
    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise BagError(f"storage must be one of {sorted(plugins)}, got {storage!r}", reason="bad_argument")

    store = messages.typestore()
    types = store.types
    Image, CompressedImage = types[messages.IMAGE], types[messages.COMPRESSED_IMAGE]
    String, JointState = types[messages.STRING], types["sensor_msgs/msg/JointState"]
    manifest = SampleManifest(path=path, frames=frames, rate_hz=rate_hz)
    counts: collections.Counter[str] = collections.Counter()
    broken_frames: collections.Counter[str] = collections.Counter()
    broken_messages: collections.Counter[str] = collections.Counter()
    period_ns = int(round(1e9 / rate_hz))

    # which frame indices get broken, spread over the bag (only when the bag is long enough)
    truncated_at, unknown_at, corrupt_jpeg_at, cut_cdr_at = (5, 9, 13, 17) if broken and frames > 17 else (-1,) * 4
    instructions = [(0, "pick up the orange block")]
    if broken and frames > 8:
        instructions.append((frames // 3, ""))  # empty: skipped, the previous instruction stays
    if frames > 4:
        instructions.append((frames // 2, "put the block in the bowl"))

    try:
        writer = Writer(path, version=9, storage_plugin=plugins[storage])
        writer.open()
    except WriterError as exc:
        raise BagError(f"cannot create bag {path}: {exc}", reason="bag_write_failed") from exc
    try:
        if primary == "jpeg":
            conn_raw = writer.add_connection(CAMERA_JPEG_TOPIC, messages.COMPRESSED_IMAGE, typestore=store)
        else:
            conn_raw = writer.add_connection(CAMERA_TOPIC, messages.IMAGE, typestore=store)
        conn_jpeg = writer.add_connection(WRIST_TOPIC, messages.COMPRESSED_IMAGE, typestore=store)
        conn_text = writer.add_connection(INSTRUCTION_TOPIC, messages.STRING, typestore=store)
        conn_joints = (writer.add_connection(JOINT_STATES_TOPIC, "sensor_msgs/msg/JointState", typestore=store)
                       if joint_states else None)

        def write(conn, log_ns: int, msg) -> None:
            writer.write(conn, log_ns, store.serialize_cdr(msg, conn.msgtype))
            counts[conn.topic] += 1

        instruction_at = dict(instructions)
        for i in range(frames):
            t = i / rate_hz
            stamp_ns = START_NS + i * period_ns
            if i in instruction_at:
                text = instruction_at[i]
                write(conn_text, stamp_ns - 2_000_000, String(data=text))
                manifest.instructions.append((stamp_ns - 2_000_000, text))
                if not text.strip():
                    broken_messages["empty_instruction"] += 1

            positions = np.array([0.3 * np.sin(t + k) for k in range(len(JOINT_NAMES))], dtype=np.float64)
            if conn_joints is not None:
                write(conn_joints, stamp_ns - 1_500_000, JointState(
                    header=messages.header(stamp_ns - 1_500_000, "base_link"), name=list(JOINT_NAMES),
                    position=positions, velocity=np.zeros(len(JOINT_NAMES)), effort=np.zeros(len(JOINT_NAMES))))

            # wrist JPEG first (1 ms before the main frame) so each main frame pairs with it
            wrist_rgb = scene_rgb(320, 240, t + 0.05)
            jpeg = _encode_jpeg(wrist_rgb)
            if i == corrupt_jpeg_at:
                # keep the JPEG start marker, destroy the rest: decoders must reject it, not crash
                jpeg = jpeg[:64] + bytes(range(256)) * 4
                broken_frames["corrupt_compressed"] += 1
            write(
                conn_jpeg,
                stamp_ns - 1_000_000,
                CompressedImage(
                    header=messages.header(stamp_ns - 1_000_000, "wrist_camera"),
                    format="rgb8; jpeg compressed rgb8",
                    data=np.frombuffer(jpeg, dtype=np.uint8),
                ),
            )

            if primary == "jpeg":
                raw = _primary_jpeg(store, CompressedImage, scene_rgb(jpeg_width, jpeg_height, t), stamp_ns,
                                    i, truncated_at, unknown_at, cut_cdr_at, broken_frames, broken_messages)
                writer.write(conn_raw, stamp_ns, raw)
                counts[CAMERA_JPEG_TOPIC] += 1
                continue
            encoding, width, height, padding = RAW_LAYOUTS[i % len(RAW_LAYOUTS)]
            data, step = _raw_payload(scene_rgb(width, height, t), encoding, padding)
            if i == truncated_at:
                data = data[: len(data) // 2]  # a frame cut short (lost packets, bad driver)
                broken_frames["truncated"] += 1
            if i == unknown_at:
                encoding = "yuv422"  # a real ROS encoding the core does not decode
                broken_frames["unknown_encoding"] += 1
            msg = Image(
                header=messages.header(stamp_ns, "camera"),
                height=height,
                width=width,
                encoding=encoding,
                is_bigendian=0,
                step=step,
                data=data,
            )
            raw = store.serialize_cdr(msg, messages.IMAGE)
            if i == cut_cdr_at:
                raw = raw[: len(raw) // 3]  # the message itself is cut: it cannot be deserialised
                broken_messages["undecodable_message"] += 1
            writer.write(conn_raw, stamp_ns, raw)
            counts[CAMERA_TOPIC] += 1
    finally:
        writer.close()
    manifest.counts = dict(counts)
    manifest.broken_frames = dict(broken_frames)
    manifest.broken_messages = dict(broken_messages)
    return manifest


def _primary_jpeg(store, compressed_type, rgb: np.ndarray, stamp_ns: int, i: int, truncated_at: int, unknown_at: int,
                  cut_cdr_at: int, broken_frames, broken_messages) -> bytes:
    """One serialized CompressedImage of the JPEG primary camera (4:2:0, as cameras stream MJPEG)."""
    data, fmt = _encode_jpeg(rgb, subsampling="420"), "rgb8; jpeg compressed rgb8"
    if i == truncated_at:
        data = data[: len(data) // 2]  # cut short: no end marker, the cheap check rejects it
        broken_frames["corrupt_compressed"] += 1
    if i == unknown_at:
        fmt = "tiff"  # a format the core does not decode
        broken_frames["unknown_encoding"] += 1
    msg = compressed_type(header=messages.header(stamp_ns, "camera"), format=fmt,
                          data=np.frombuffer(data, dtype=np.uint8))
    raw = store.serialize_cdr(msg, messages.COMPRESSED_IMAGE)
    if i == cut_cdr_at:
        raw = raw[: len(raw) // 3]
        broken_messages["undecodable_message"] += 1
    return raw
