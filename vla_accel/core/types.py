"""Plain data types that flow through the engine. No ROS, no heavy runtimes.

``RawImage`` mirrors sensor_msgs/Image (and CompressedImage through ``format``) without depending on
it, so the ROS layer can wrap ``msg.data`` without a copy and the core can be tested on arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

# Encodings accepted for raw images (sensor_msgs/image_encodings names).
RAW_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
# Formats accepted for compressed images (sensor_msgs/CompressedImage.format, lower-cased prefix).
COMPRESSED_FORMATS = ("jpeg", "png")


@dataclass
class RawImage:
    """One camera frame as it arrived.

    Raw: ``encoding`` in RAW_ENCODINGS, ``height``/``width``/``step`` as in sensor_msgs/Image and
    ``data`` any buffer (bytes, memoryview, numpy array) of at least step*height bytes.
    Compressed: ``encoding`` is "jpeg" or "png" (``height``/``width``/``step`` are 0 until decoded).
    """

    data: object
    encoding: str
    height: int = 0
    width: int = 0
    step: int = 0
    is_bigendian: bool = False

    @property
    def compressed(self) -> bool:
        return self.encoding in COMPRESSED_FORMATS


@dataclass
class Observation:
    """What the model sees at one instant, for one stream (robot or camera rig).

    ``images`` maps camera name (ModelSpec camera ``name``) to a RawImage or to an already decoded
    HxWx3 uint8 RGB array. ``stamp_ns`` is the source frame's stamp (it is copied onto the chunk).
    ``received_ns`` is the monotonic clock when the frame entered the process (for age metrics).
    """

    images: Mapping[str, RawImage | np.ndarray]
    instruction: str
    stamp_ns: int
    state: np.ndarray | None = None
    stream: str = "default"
    received_ns: int = 0
    frame_id: str = ""


@dataclass
class ActionChunk:
    """A sequence of ``steps`` actions starting at the source frame's stamp, ``dt`` seconds apart.

    ``values`` has shape (steps, dims), float32, already un-normalised and clipped.
    ``timings_ms`` holds the stage times that produced it (preprocess, infer, postprocess, total).
    """

    stamp_ns: int
    dt: float
    names: tuple[str, ...]
    values: np.ndarray
    space: str
    model: str = ""
    backend: str = ""
    stream: str = "default"
    frame_id: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return int(self.values.shape[0])

    @property
    def dims(self) -> int:
        return int(self.values.shape[1])

    def time_of_step(self, i: int) -> int:
        """Stamp (ns) at which step ``i`` is meant to execute."""
        return self.stamp_ns + int(round(i * self.dt * 1e9))
