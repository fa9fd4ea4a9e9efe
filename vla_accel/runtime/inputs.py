"""Turn what arrives on the node's topics into Observations (no rclpy: tested on plain data).

One frame of the model's first camera triggers an observation; the other cameras contribute their
latest frame (a rig's cameras are not hardware-synchronised, so waiting for matching stamps would
only add latency). The latest valid instruction and joint state are attached. Every frame is
decoded / validated here, at the input, so a malformed one is dropped with its reason and its
camera before it can take the place of a good frame in the latest-frame slot:

* raw images become zero-copy views over the message buffer (core.image.decode_image);
* compressed images get cheap checks here (signature, end marker, header: core.image.check_compressed)
  and are decoded in the prepare stage, so superseded frames are never decoded; a frame whose data
  is damaged past its header is dropped there (counted in metrics with its reason).

Drops are counted in the engine's InferenceMetrics (``record_received`` + ``record_dropped``, so the
numbers on /diagnostics and /vla/stats agree) and in the camera's own counters (per-camera status).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from vla_accel.core.image import COMPRESSED_ENCODINGS, check_compressed, decode_image, normalize_encoding
from vla_accel.core.tokenizer import validate_instruction
from vla_accel.core.types import Observation, RawImage
from vla_accel.errors import ConfigError, InputError, StateError
from vla_accel.runtime.status import CameraInput, InstructionView

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.metrics import InferenceMetrics
    from vla_accel.core.spec import ModelSpec

MISSING_INSTRUCTION = "missing_instruction"
MISSING_STATE = "missing_state"
MISSING_CAMERA = "missing_camera"
STALE_CAMERA = "stale_camera"
STALE_STATE = "stale_state"
IMAGE_TOO_LARGE = "image_too_large"


def image_nbytes(data: object) -> int:
    """Size in bytes of a frame's buffer (bytes, memoryview, array.array or numpy array)."""
    nbytes = getattr(data, "nbytes", None)
    if nbytes is not None:
        return int(nbytes)
    itemsize = getattr(data, "itemsize", 1)
    return len(data) * itemsize  # type: ignore[arg-type]


@dataclass(frozen=True)
class Drop:
    """A frame or message that was not used, and why (for rate-limited logging)."""

    source: str  # camera name, "instruction" or "joint_states"
    reason: str
    message: str


class ObservationAssembler:
    """Thread-safe: image, instruction and joint-state callbacks may run on different threads."""

    def __init__(self, spec: "ModelSpec", cameras: Sequence[CameraInput], metrics: "InferenceMetrics",
                 instruction_topic: str = "", initial_instruction: str = "",
                 on_drop: Callable[[Drop], None] | None = None, max_input_age_s: float | None = None,
                 max_image_bytes: int | None = None):
        if [c.name for c in cameras] != [c.name for c in spec.cameras]:
            raise ConfigError(f"cameras {[c.name for c in cameras]} do not match the spec's "
                             f"{[c.name for c in spec.cameras]}")
        self.spec = spec
        self.cameras = {c.name: c for c in cameras}
        self.primary = spec.cameras[0].name
        self.metrics = metrics
        self.max_image_bytes = max_image_bytes
        self.instruction_topic = instruction_topic
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._latest_images: dict[str, np.ndarray | RawImage] = {}  # compressed frames stay undecoded
        # Secondary cameras and the joint state are attached by their latest value; with
        # max_input_age_s one older than that (against the triggering frame) drops the observation
        # (stale_camera / stale_state) rather than acting on a frozen view of the world.
        self._max_age_ns = int(max_input_age_s * 1e9) if max_input_age_s and max_input_age_s > 0 else None
        self._latest_images_ns: dict[str, int] = {}
        self._state_ns = 0
        self._instruction = ""
        self._instruction_ns = 0
        self.instructions_received = 0
        self.instruction_drops: dict[str, int] = {}
        self._state: np.ndarray | None = None
        self.state_drops: dict[str, int] = {}
        if initial_instruction:
            self.set_instruction(initial_instruction)

    # --- instruction and state ------------------------------------------------------------------
    def set_instruction(self, text: object, now_ns: int | None = None) -> bool:
        """Validate and keep ``text``; False (counted per reason, reported) when it is rejected."""
        try:
            valid = validate_instruction(text, self.spec)
        except InputError as exc:
            with self._lock:
                self.instruction_drops[exc.reason] = self.instruction_drops.get(exc.reason, 0) + 1
            self._report(Drop("instruction", exc.reason, str(exc)))
            return False
        with self._lock:
            self._instruction = valid
            self._instruction_ns = time.monotonic_ns() if now_ns is None else now_ns
            self.instructions_received += 1
        return True

    def instruction_view(self, now_ns: int | None = None) -> InstructionView:
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        with self._lock:
            age = (now_ns - self._instruction_ns) / 1e9 if self._instruction_ns else None
            return InstructionView(self.instruction_topic, self._instruction, age, self.instructions_received,
                                   dict(self.instruction_drops))

    def set_joint_state(self, names: Sequence[str], positions: Sequence[float], now_ns: int | None = None) -> bool:
        """sensor_msgs/JointState (names, positions) -> the model's state vector."""
        state_spec = self.spec.state
        if state_spec is None:
            return False
        try:
            vector = joint_state_vector(state_spec.dims, state_spec.names, names, positions)
        except StateError as exc:
            with self._lock:
                self.state_drops[exc.reason] = self.state_drops.get(exc.reason, 0) + 1
            self._report(Drop("joint_states", exc.reason, str(exc)))
            return False
        with self._lock:
            self._state = vector
            self._state_ns = time.monotonic_ns() if now_ns is None else now_ns
        return True

    # --- frames ---------------------------------------------------------------------------------
    def on_frame(self, camera: str, image: RawImage, stamp_ns: int, frame_id: str = "",
                 received_ns: int | None = None) -> Observation | None:
        """A frame arrived. Returns the Observation to submit (primary camera, everything present),
        or None (frame stored for later, or dropped and counted)."""
        received_ns = time.monotonic_ns() if received_ns is None else received_ns
        cam = self.cameras[camera]
        cam.record_frame(received_ns)
        primary = camera == self.primary
        if self.max_image_bytes and (size := image_nbytes(image.data)) > self.max_image_bytes:
            # Before decoding: nothing of an oversized frame is kept (no view, no decode buffer sized to it).
            cam.record_drop(IMAGE_TOO_LARGE)
            if primary:
                self._count_dropped(IMAGE_TOO_LARGE, received_ns)
            self._report(Drop(camera, IMAGE_TOO_LARGE, f"camera '{camera}': frame of {size} bytes "
                                                       f"({image.width}x{image.height} {image.encoding}) is over "
                                                       f"max_image_bytes {self.max_image_bytes}"))
            return None
        try:
            if isinstance(image, RawImage) and normalize_encoding(image.encoding) in COMPRESSED_ENCODINGS:
                # JPEG/PNG: only cheap checks here, on the receiving (executor) thread; the frame is
                # decoded in the prepare stage, on the loop's thread, so a frame superseded in the
                # latest-frame slot is never decoded.
                rgb = check_compressed(image)
            else:
                spec_cam = self.spec.camera(camera)
                rgb = decode_image(image, (2 * spec_cam.height, 2 * spec_cam.width))
        except InputError as exc:
            cam.record_drop(exc.reason)
            if primary:
                self._count_dropped(exc.reason, received_ns)
            self._report(Drop(camera, exc.reason, f"camera '{camera}': {exc}"))
            return None
        if not primary:
            with self._lock:
                self._latest_images[camera] = rgb
                self._latest_images_ns[camera] = received_ns
            return None
        with self._lock:
            instruction = self._instruction
            state = self._state
            state_ns = self._state_ns
            images = {camera: rgb}
            missing = [c for c in self.cameras if c != camera and c not in self._latest_images]
            images.update({c: self._latest_images[c] for c in self.cameras if c in self._latest_images and c != camera})
            stale = [] if self._max_age_ns is None else [
                c for c in images if c != camera and received_ns - self._latest_images_ns[c] > self._max_age_ns]
        reason, message = None, ""
        if missing:
            reason, message = MISSING_CAMERA, f"no frame yet from camera(s) {missing}"
        elif stale:
            reason, message = STALE_CAMERA, f"camera(s) {stale} sent nothing for over {self._max_age_ns / 1e9:g} s"
        elif not instruction:
            reason, message = MISSING_INSTRUCTION, f"no instruction yet: publish a std_msgs/String on {self.instruction_topic}"
        elif self.spec.state is not None and state is None:
            reason, message = MISSING_STATE, "the model needs the robot state: no sensor_msgs/JointState received yet"
        elif self.spec.state is not None and self._max_age_ns is not None and received_ns - state_ns > self._max_age_ns:
            reason, message = STALE_STATE, f"no sensor_msgs/JointState for over {self._max_age_ns / 1e9:g} s"
        if reason:
            self._count_dropped(reason, received_ns)
            self._report(Drop(camera, reason, message))
            return None
        return Observation(images=images, instruction=instruction, stamp_ns=stamp_ns, state=state,
                           received_ns=received_ns, frame_id=frame_id)

    def _count_dropped(self, reason: str, received_ns: int) -> None:
        # A frame that never reaches the InferenceLoop is still a received frame (the loop counts
        # the ones it gets), so received = processed + dropped holds.
        self.metrics.record_received(1, t_ns=received_ns)
        self.metrics.record_dropped(reason)

    def _report(self, drop: Drop) -> None:
        if self._on_drop is not None:
            self._on_drop(drop)


def joint_state_vector(dims: int, wanted: Sequence[str], names: Sequence[str], positions: Sequence[float]) -> np.ndarray:
    """Pick the model's state from a JointState: by name when the spec names its joints and the
    message carries names, else the first ``dims`` positions. Raises StateError."""
    positions = np.asarray(positions, dtype=np.float64)
    if wanted and len(names):
        index = {n: i for i, n in enumerate(names)}
        absent = [n for n in wanted if n not in index]
        if absent:
            raise StateError(f"joint state lacks joints {absent} the model needs", reason="bad_state")
        if len(positions) != len(names):
            raise StateError(f"joint state has {len(names)} names but {len(positions)} positions",
                             reason="bad_state")
        vector = positions[[index[n] for n in wanted]]
    else:
        if positions.shape[0] < dims:
            raise StateError(f"joint state has {positions.shape[0]} positions; the model needs {dims}",
                             reason="bad_state")
        vector = positions[:dims]
    if not np.all(np.isfinite(vector)):
        raise StateError("joint state has non-finite positions", reason="bad_state")
    return vector.astype(np.float32)
