"""Representative inputs for post-training int8 quantisation, with where they came from.

A ``CalibrationSet`` is a list of preprocessed input batches (the spec's tensor names, made by the
shared ``Preprocessor`` exactly as inference makes them) plus its provenance (source kind, path,
topics, frame counts, a fingerprint of the source, the instructions seen). Every integer exporter
takes the same set (LiteRT full-integer, ONNX Runtime static QDQ, OpenVINO / NNCF, TensorRT's
calibrator), stores the provenance beside the model it made, and re-exports when a different set
is asked for (``digest``).

Sources: ``synthetic`` here (generated tabletop scenes, no data needed); a rosbag or a folder of
frames through ``vla_accel.bags.calibration`` (``vla-accel export --calibration BAG_OR_DIR``).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from vla_accel.errors import ModelFileError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.spec import ModelSpec
    from vla_accel.core.types import Observation


@dataclass
class CalibrationSet:
    batches: list[dict[str, np.ndarray]]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return sum(int(next(iter(b.values())).shape[0]) for b in self.batches) if self.batches else 0

    def digest(self) -> str:
        """SHA-256 (16 hex) over every input tensor: names an export made from exactly this set."""
        h = hashlib.sha256()
        for batch in self.batches:
            for name in sorted(batch):
                arr = np.ascontiguousarray(batch[name])
                h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
                h.update(memoryview(arr).cast("B"))
        return h.hexdigest()[:16]

    def rebatched(self, batch: int) -> "CalibrationSet":
        """The same samples regrouped into batches of ``batch`` (a fixed-batch export needs its own;
        a last partial batch is dropped)."""
        if not self.batches:
            return self
        names = list(self.batches[0])
        merged = {n: np.concatenate([b[n] for b in self.batches]) for n in names}
        total = merged[names[0]].shape[0]
        if total < batch:
            raise ModelFileError(f"calibration set has {total} samples, fewer than the export batch {batch}",
                                 reason="bad_calibration")
        out = [{n: np.ascontiguousarray(merged[n][i:i + batch]) for n in names}
               for i in range(0, total - batch + 1, batch)]
        return CalibrationSet(out, dict(self.provenance))

    def record(self) -> dict[str, Any]:
        """What an export stores beside the model (JSON-safe)."""
        return {**self.provenance, "samples": self.samples, "inputs_digest": self.digest()}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.batches)


def prepare_observations(spec: "ModelSpec", observations: Sequence["Observation"], batch: int = 1,
                         ) -> list[dict[str, np.ndarray]]:
    """Observations -> input batches through the shared Preprocessor (what inference does).
    A rejected observation raises: a calibration set must not silently lose frames."""
    from vla_accel.core.preprocess import Preprocessor

    if not observations:
        raise ModelFileError("calibration set is empty: no usable observation", reason="bad_calibration")
    pre = Preprocessor(spec, max_batch=batch, memory="dynamic")
    out = []
    for start in range(0, len(observations) - batch + 1, batch):
        prepared = pre.prepare(list(observations[start:start + batch]))
        try:
            if prepared.rejected:
                raise ModelFileError(f"calibration frame rejected by preprocessing: {prepared.rejected[0][1]}",
                                     reason="bad_calibration")
            out.append({name: np.array(prepared.inputs[name], copy=True) for name in spec.input_names})
        finally:
            prepared.release()
    if not out:
        raise ModelFileError(f"calibration set has {len(observations)} observations, fewer than the batch {batch}",
                             reason="bad_calibration")
    return out


def synthetic_calibration(spec: "ModelSpec", count: int, batch: int = 1, seed: int = 7) -> CalibrationSet:
    """Generated tabletop scenes and instructions (``representative_inputs``): the default when no
    recorded data is given."""

    batches = list(representative_inputs(spec, max(1, count // batch), batch=batch, seed=seed))
    return CalibrationSet(batches, {"source": "synthetic", "seed": seed,
                                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


CALIBRATION_INSTRUCTIONS = (
    "pick up the red block",
    "put the cup on the plate",
    "open the top drawer",
    "push the green button",
    "move the sponge to the left",
    "close the gripper",
    "stack the blue cube on the yellow cube",
    "wipe the table with the towel",
)


def synthetic_scene(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An HxWx3 uint8 RGB tabletop-like scene: a lit gradient, a table edge and a few coloured
    objects, with sensor noise, so activation ranges resemble a camera's rather than noise's."""
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    base = rng.uniform(40, 200, size=3).astype(np.float32)
    tilt = rng.uniform(-60, 60, size=(2, 3)).astype(np.float32)
    img = base + tilt[0] * xs + tilt[1] * ys
    edge = int(rng.uniform(0.3, 0.7) * height)
    img[edge:] *= rng.uniform(0.5, 0.9)
    for _ in range(int(rng.integers(1, 5))):
        h = int(rng.integers(max(2, height // 12), max(3, height // 3)))
        w = int(rng.integers(max(2, width // 12), max(3, width // 3)))
        y = int(rng.integers(0, max(1, height - h)))
        x = int(rng.integers(0, max(1, width - w)))
        img[y : y + h, x : x + w] = rng.uniform(0, 255, size=3)
    img += rng.normal(0.0, 4.0, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def representative_inputs(spec: "ModelSpec", count: int, batch: int = 1, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """``count`` input batches made the way the node makes them: synthetic scenes and instructions
    through the shared Preprocessor (resize, normalise, tokenise), plus plausible robot states."""
    from vla_accel.core.preprocess import Preprocessor
    from vla_accel.core.types import Observation

    rng = np.random.default_rng(seed)
    pre = Preprocessor(spec, max_batch=batch, memory="dynamic")
    for index in range(int(count)):
        observations = []
        for row in range(batch):
            images = {cam.name: synthetic_scene(cam.height, cam.width, rng) for cam in spec.cameras}
            state = None
            if spec.state is not None:
                state = rng.normal(0.0, 0.5, size=spec.state.dims).astype(np.float32)
            instruction = CALIBRATION_INSTRUCTIONS[(index * batch + row) % len(CALIBRATION_INSTRUCTIONS)]
            observations.append(Observation(images=images, instruction=instruction, stamp_ns=index, state=state))
        prepared = pre.prepare(observations)
        try:
            if prepared.rejected:
                raise ModelFileError(f"representative frame rejected: {prepared.rejected[0][1]}", reason="bad_calibration")
            yield {name: np.array(prepared.inputs[name], copy=True) for name in spec.input_names}
        finally:
            prepared.release()
