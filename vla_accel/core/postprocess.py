"""Model outputs -> ActionChunks (shared by every backend).

The network outputs normalised actions (B, steps, dims). Un-normalisation follows the spec's
``action.normalization``, per dimension where ``mask`` is true (all dimensions when no mask):

* ``q01_q99``: a = (x + 1) / 2 * (q99 - q01) + q01   (x in [-1, 1] maps onto [q01, q99])
* ``mean_std``: a = x * std + mean
* ``none``: a = x

then every value is clipped to ``clip_low`` / ``clip_high`` when the spec gives them. Masked-out
dimensions (e.g. a binary gripper) pass through unchanged before clipping.

Non-finite model outputs raise BackendError(reason="non_finite_output"): a backend that starts
producing NaN mid-stream must fail the batch (and trigger a fallback) rather than publish NaN
actions to a robot.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from vla_accel.core.types import ActionChunk, Observation
from vla_accel.errors import BackendError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.spec import ModelSpec


class Postprocessor:
    """Un-normalises and clips raw action outputs and wraps them into ActionChunks."""

    def __init__(self, spec: "ModelSpec"):
        self.spec = spec
        action = spec.action
        dims = action.dims
        mask = np.asarray(action.mask, dtype=bool) if action.mask else np.ones(dims, dtype=bool)
        # a = x * scale + offset per dimension; masked-out dimensions get scale 1, offset 0.
        scale = np.ones(dims, dtype=np.float64)
        offset = np.zeros(dims, dtype=np.float64)
        if action.normalization in ("q01_q99", "min_max"):
            low = np.asarray(action.low, dtype=np.float64)
            high = np.asarray(action.high, dtype=np.float64)
            scale = np.where(mask, (high - low) / 2.0, 1.0)
            offset = np.where(mask, (high + low) / 2.0, 0.0)
        elif action.normalization == "mean_std":
            scale = np.where(mask, np.asarray(action.std, dtype=np.float64), 1.0)
            offset = np.where(mask, np.asarray(action.mean, dtype=np.float64), 0.0)
        self.scale = scale.astype(np.float32)
        self.offset = offset.astype(np.float32)
        self.clip_low = np.asarray(action.clip_low, dtype=np.float32) if action.clip_low else None
        self.clip_high = np.asarray(action.clip_high, dtype=np.float32) if action.clip_high else None

    def unnormalize(self, raw: np.ndarray, expected_batch: int | None = None) -> np.ndarray:
        """(B, steps, dims) normalised -> new float32 array of un-normalised, clipped actions.

        Raises BackendError: bad_output_shape (wrong rank/steps/dims, or a batch size other than
        ``expected_batch``), non_finite_output (any NaN/inf in ``raw``).
        """
        action = self.spec.action
        raw = np.asarray(raw)
        if raw.ndim == 2 and raw.shape[1] == action.steps * action.dims:
            raw = raw.reshape(raw.shape[0], action.steps, action.dims)
        if raw.ndim != 3 or raw.shape[1:] != (action.steps, action.dims):
            raise BackendError(
                f"model output '{action.output}' has shape {raw.shape}; expected (B, {action.steps}, "
                f"{action.dims}) from the spec",
                reason="bad_output_shape",
            )
        if expected_batch is not None and raw.shape[0] != expected_batch:
            raise BackendError(
                f"model output '{action.output}' has batch {raw.shape[0]} for {expected_batch} inputs",
                reason="bad_output_shape",
            )
        if raw.dtype.kind != "f":
            raise BackendError(f"model output '{action.output}' has dtype {raw.dtype}; expected float",
                               reason="bad_output_shape")
        values = raw.astype(np.float32, copy=True)
        finite = np.isfinite(values)
        if not finite.all():
            bad_rows = sorted(set(np.nonzero(~finite)[0].tolist()))
            raise BackendError(
                f"model output '{action.output}' has {int((~finite).sum())} non-finite values "
                f"(batch rows {bad_rows}); refusing to publish them",
                reason="non_finite_output",
            )
        np.multiply(values, self.scale, out=values)
        np.add(values, self.offset, out=values)
        if self.clip_low is not None:
            np.clip(values, self.clip_low, self.clip_high, out=values)
        return values

    def to_chunks(
        self,
        values: np.ndarray,
        observations: Sequence[Observation],
        model: str = "",
        backend: str = "",
        timings: Mapping[str, float] | Sequence[Mapping[str, float]] | None = None,
    ) -> list[ActionChunk]:
        """One ActionChunk per observation: stamp, stream and frame_id from the source observation.

        ``values`` are un-normalised (B, steps, dims); chunk i holds ``values[i]`` (a view of the
        batch array, which is fresh per batch). ``timings`` is one dict for the whole batch or one
        per observation; each chunk gets its own copy.
        """
        if len(values) != len(observations):
            raise BackendError(
                f"{len(values)} action rows for {len(observations)} observations", reason="bad_output_shape"
            )
        action = self.spec.action
        chunks = []
        for i, obs in enumerate(observations):
            if timings is None:
                timing: dict[str, float] = {}
            elif isinstance(timings, Mapping):
                timing = dict(timings)
            else:
                timing = dict(timings[i])
            chunks.append(
                ActionChunk(
                    stamp_ns=obs.stamp_ns,
                    dt=float(action.dt),
                    names=tuple(self.spec.action_names),
                    values=values[i],
                    space=action.space,
                    model=model,
                    backend=backend,
                    stream=obs.stream,
                    frame_id=obs.frame_id,
                    timings_ms=timing,
                )
            )
        return chunks

    def __call__(self, raw: np.ndarray, observations: Sequence[Observation], model: str = "",
                 backend: str = "", timings: Mapping[str, float] | None = None) -> list[ActionChunk]:
        return self.to_chunks(self.unnormalize(raw, len(observations)), observations, model, backend, timings)
