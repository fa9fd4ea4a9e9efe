"""int8 calibration sets from what a robot recorded: a rosbag, or a folder of frames.

Bags go through the replay reader and the same observation assembly as the live node (camera
topics, instruction, joint states paired the same way, broken frames rejected for the same
reasons), then through the shared Preprocessor: the quantiser sees exactly the tensors inference
will see. Frames are taken evenly across the bag (``count`` of them), so a long recording gives a
spread of scenes rather than its first seconds.

A folder holds images (.png / .jpg / .jpeg, sorted by name, decoded by the core image decoder) and
optionally ``instructions.txt`` (one instruction per line, cycled over the frames) and
``states.npy`` (frames x state dims). Without states the robot state is drawn N(0, 0.5) and the
provenance says so.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from vla_accel.bags.messages import BagError
from vla_accel.errors import ModelFileError, VlaAccelError
from vla_accel.models.calibration_set import CalibrationSet, prepare_observations

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.spec import ModelSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_FINGERPRINT_FULL_BYTES = 256 << 20  # hash whole files up to this size; larger: size + head + tail


def _fingerprint(files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        size = path.stat().st_size
        h.update(f"{path.name}|{size}|".encode())
        with open(path, "rb") as handle:
            if size <= _FINGERPRINT_FULL_BYTES:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    h.update(block)
            else:
                h.update(handle.read(1 << 20))
                handle.seek(size - (1 << 20))
                h.update(handle.read())
    return h.hexdigest()[:16]


def is_bag(path: Path) -> bool:
    path = Path(path)
    if path.is_file():
        return path.suffix in (".mcap", ".db3")
    return path.is_dir() and ((path / "metadata.yaml").is_file()
                              or any(path.glob("*.mcap")) or any(path.glob("*.db3")))


def calibration_from_source(path: str | Path, spec: "ModelSpec", count: int = 32, batch: int = 1,
                            **kwargs) -> CalibrationSet:
    """A bag (directory with metadata.yaml / .mcap / .db3, or such a file) or a folder of frames."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFileError(f"calibration source {path} does not exist (give a rosbag or a folder of frames)",
                             reason="bad_calibration")
    if is_bag(path):
        return calibration_from_bag(path, spec, count, batch, **kwargs)
    if path.is_dir():
        return calibration_from_folder(path, spec, count, batch)
    raise ModelFileError(f"calibration source {path} is neither a rosbag nor a folder of frames",
                         reason="bad_calibration")


def calibration_from_bag(path: str | Path, spec: "ModelSpec", count: int = 32, batch: int = 1, *,
                         camera_topics: Sequence[str] = (), instruction_topic: str | None = None,
                         state_topic: str | None = None) -> CalibrationSet:
    """Up to ``count`` observations spread evenly over the bag, preprocessed as inference does."""
    from vla_accel.bags.observations import ObservationBuilder, RateMode
    from vla_accel.bags.reader import BagSource
    from vla_accel.core.metrics import InferenceMetrics

    if count < 1:
        raise ModelFileError(f"calibration needs at least 1 sample, got {count}", reason="bad_calibration")
    path = Path(path)
    metrics = InferenceMetrics()
    chosen = []
    instructions: dict[str, int] = {}
    try:
        with BagSource(path) as source:
            selection = source.select_topics(spec, camera_topics, instruction_topic, state_topic)
            primary_frames = int(source.counts.get(selection.cameras[selection.primary_camera], 0))
            stride = max(1, primary_frames // count)
            builder = ObservationBuilder(spec, selection, RateMode("every"), metrics)
            seen = 0
            for timed in builder.observations(source.events(selection)):
                if seen % stride == 0 and len(chosen) < count:
                    # prepared now: the frame is a view into the bag's read buffer
                    chosen.append(prepare_observations(spec, [timed.observation], 1)[0])
                    text = timed.observation.instruction
                    instructions[text] = instructions.get(text, 0) + 1
                seen += 1
            topics = {"cameras": dict(selection.cameras), "instruction": selection.instruction,
                      "state": selection.state}
            skipped = builder.skipped
            dropped = dict(metrics.snapshot().dropped)
            files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
    except BagError as exc:
        raise ModelFileError(f"calibration bag {path}: {exc}", reason="bad_calibration") from exc
    if not chosen:
        raise ModelFileError(
            f"calibration bag {path} gave no usable observation (camera frames {primary_frames}, "
            f"skipped {skipped}); check the topics (--camera-topic / --instruction-topic)",
            reason="bad_calibration")
    provenance = {
        "source": "rosbag", "path": str(path.resolve()), "fingerprint": _fingerprint(files),
        "topics": topics, "camera_frames": primary_frames, "observations": seen, "stride": stride,
        "skipped": {**skipped, **{f"camera: {k}": v for k, v in dropped.items()}},
        "instructions": instructions,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return CalibrationSet(chosen, provenance).rebatched(batch) if batch > 1 else CalibrationSet(chosen, provenance)


def calibration_from_folder(path: str | Path, spec: "ModelSpec", count: int = 32, batch: int = 1,
                            seed: int = 0) -> CalibrationSet:
    from vla_accel.core.image import decode_compressed
    from vla_accel.core.types import Observation
    from vla_accel.models.calibration_set import CALIBRATION_INSTRUCTIONS

    path = Path(path)
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ModelFileError(f"calibration folder {path} holds no {'/'.join(IMAGE_SUFFIXES)} image",
                             reason="bad_calibration")
    stride = max(1, len(images) // count)
    picked = images[::stride][:count]
    text_file = path / "instructions.txt"
    texts = [t.strip() for t in text_file.read_text(encoding="utf-8").splitlines() if t.strip()] \
        if text_file.is_file() else list(CALIBRATION_INSTRUCTIONS)
    states = None
    state_source = "none"
    if spec.state is not None:
        state_file = path / "states.npy"
        if state_file.is_file():
            states = np.load(state_file, allow_pickle=False).astype(np.float32)
            if states.ndim != 2 or states.shape[1] != spec.state.dims or states.shape[0] < len(images):
                raise ModelFileError(f"{state_file} must be (frames={len(images)}, {spec.state.dims}), "
                                     f"got {states.shape}", reason="bad_calibration")
            state_source = str(state_file.name)
        else:
            state_source = "synthetic N(0, 0.5)"
    rng = np.random.default_rng(seed)
    observations = []
    for index, image_path in enumerate(picked):
        suffix = image_path.suffix.lower().lstrip(".")
        try:
            rgb = decode_compressed(image_path.read_bytes(), "png" if suffix == "png" else "jpeg")
        except (VlaAccelError, OSError, ValueError) as exc:
            raise ModelFileError(f"calibration frame {image_path} cannot be decoded: {exc}",
                                 reason="bad_calibration") from exc
        state = None
        if spec.state is not None:
            row = images.index(image_path)
            state = states[row] if states is not None else rng.normal(0.0, 0.5, spec.state.dims).astype(np.float32)
        frames = {cam.name: rgb for cam in spec.cameras}
        observations.append(Observation(images=frames, instruction=texts[index % len(texts)],
                                        stamp_ns=index, state=state))
    batches = prepare_observations(spec, observations, batch)
    provenance = {"source": "folder", "path": str(path.resolve()), "fingerprint": _fingerprint(images),
                  "frames": len(images), "stride": stride, "instructions": sorted(set(texts)),
                  "state": state_source, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return CalibrationSet(batches, provenance)
