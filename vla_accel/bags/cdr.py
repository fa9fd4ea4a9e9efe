"""Zero-copy CDR parsing of camera messages (sensor_msgs Image and CompressedImage).

rosbags' ``Typestore.deserialize_cdr`` starts with ``rawdata[4:]``, which copies the whole payload
when it is given ``bytes`` (a 640x480 rgb8 frame: 0.9 MB per message), then builds the message
dataclasses. For the two image types the replay only needs the stamp, frame id, geometry, encoding
and a view of the pixel bytes, so this module reads those fields straight from the serialised
message with ``struct.unpack_from`` and returns the pixels as a ``memoryview`` slice of the
message buffer: nothing is copied, and the view keeps the buffer alive.

Layout (OMG CDR, as rosbag2 stores it): a 4-byte encapsulation header (``00 00`` big endian or
``00 01`` little endian, then two option bytes); every primitive is aligned to its own size,
counted from the end of that header. Strings are a uint32 length that includes a NUL terminator,
then the bytes; ``uint8[]`` is a uint32 count, then the bytes.

* std_msgs/Header: builtin_interfaces/Time (int32 sec, uint32 nanosec), string frame_id
* sensor_msgs/Image: Header, uint32 height, uint32 width, string encoding, uint8 is_bigendian,
  uint32 step, uint8[] data
* sensor_msgs/CompressedImage: Header, string format, uint8[] data

Malformed payloads raise ``CdrError`` (a ValueError) with the same acceptance rules as rosbags:
unknown encapsulation, fields running past the end, a string without its terminator, more than 3
trailing bytes (CDR pads a message to 4 bytes, no more). ``test/test_bags.py`` checks every field
against rosbags on the sample bag's messages, both byte orders, and cut or padded payloads.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from vla_accel.core.image import normalize_encoding
from vla_accel.core.types import RawImage

_HEADER_SIZE = 4  # encapsulation: 2 bytes representation id, 2 bytes options
_LITTLE = {b"\x00\x01": True, b"\x00\x00": False}
_U32 = {True: struct.Struct("<I"), False: struct.Struct(">I")}
_STAMP = {True: struct.Struct("<iI"), False: struct.Struct(">iI")}


class CdrError(ValueError):
    """A serialised message that does not parse (cut short, bad lengths, unknown encapsulation)."""


@dataclass
class ImageFields:
    """What replay needs from an Image / CompressedImage message; ``image.data`` views the buffer."""

    stamp_ns: int
    frame_id: str
    image: RawImage


class _Cursor:
    """Reads CDR primitives from a memoryview; ``pos`` counts from the end of the encapsulation."""

    __slots__ = ("body", "pos", "little", "u32")

    def __init__(self, raw: bytes | bytearray | memoryview):
        view = raw if isinstance(raw, memoryview) else memoryview(raw)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        if len(view) < _HEADER_SIZE:
            raise CdrError(f"CDR payload of {len(view)} bytes is shorter than its 4-byte header")
        little = _LITTLE.get(bytes(view[:2]))
        if little is None:
            raise CdrError(f"unsupported CDR encapsulation {bytes(view[:2]).hex()} (expected CDR_BE or CDR_LE)")
        self.body = view[_HEADER_SIZE:]
        self.pos = 0
        self.little = little
        self.u32 = _U32[little]

    def _need(self, size: int, what: str) -> None:
        if self.pos + size > len(self.body):
            raise CdrError(f"CDR payload cut short: {what} needs {size} bytes at offset {self.pos}, "
                           f"{len(self.body) - self.pos} left")

    def align(self, size: int) -> None:
        self.pos = (self.pos + size - 1) & -size

    def uint32(self, what: str) -> int:
        self.align(4)
        self._need(4, what)
        (value,) = self.u32.unpack_from(self.body, self.pos)
        self.pos += 4
        return value

    def uint8(self, what: str) -> int:
        self._need(1, what)
        value = self.body[self.pos]
        self.pos += 1
        return value

    def stamp_ns(self) -> int:
        self.align(4)
        self._need(8, "header.stamp")
        sec, nanosec = _STAMP[self.little].unpack_from(self.body, self.pos)
        self.pos += 8
        return sec * 1_000_000_000 + nanosec

    def string(self, what: str) -> str:
        length = self.uint32(what)
        if length < 1:
            raise CdrError(f"{what}: CDR string length 0 (the length counts the NUL terminator)")
        self._need(length, what)
        end = self.pos + length
        if self.body[end - 1] != 0:
            raise CdrError(f"{what}: CDR string is missing its NUL terminator")
        text = bytes(self.body[self.pos:end - 1]).decode("utf-8")
        self.pos = end
        return text

    def byte_sequence(self, what: str) -> memoryview:
        count = self.uint32(what)
        self._need(count, what)
        data = self.body[self.pos:self.pos + count]
        self.pos += count
        return data

    def finish(self, typename: str) -> None:
        # rosbags' rule: at most 3 bytes of padding after the last field.
        if len(self.body) - self.pos > 3:
            raise CdrError(f"{typename}: {len(self.body) - self.pos} bytes after the last field")


def parse_image(raw: bytes | bytearray | memoryview) -> ImageFields:
    """sensor_msgs/msg/Image CDR -> stamp, frame id and a RawImage viewing the pixel bytes."""
    cursor = _Cursor(raw)
    stamp_ns = cursor.stamp_ns()
    frame_id = cursor.string("header.frame_id")
    height = cursor.uint32("height")
    width = cursor.uint32("width")
    encoding = cursor.string("encoding")
    is_bigendian = cursor.uint8("is_bigendian")
    step = cursor.uint32("step")
    data = cursor.byte_sequence("data")
    cursor.finish("sensor_msgs/msg/Image")
    image = RawImage(data=data, encoding=encoding.strip(), height=height, width=width, step=step,
                     is_bigendian=bool(is_bigendian))
    return ImageFields(stamp_ns, frame_id, image)


def parse_compressed_image(raw: bytes | bytearray | memoryview) -> ImageFields:
    """sensor_msgs/msg/CompressedImage CDR -> stamp, frame id and a RawImage viewing the bytes."""
    cursor = _Cursor(raw)
    stamp_ns = cursor.stamp_ns()
    frame_id = cursor.string("header.frame_id")
    fmt = cursor.string("format")
    data = cursor.byte_sequence("data")
    cursor.finish("sensor_msgs/msg/CompressedImage")
    return ImageFields(stamp_ns, frame_id, RawImage(data=data, encoding=normalize_encoding(fmt)))
