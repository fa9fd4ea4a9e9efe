"""Real-time chunking (RTC): a new chunk that continues the one being executed.

While a new chunk is inferred the robot keeps executing the current one, so the first ``d`` steps of
the new chunk (``d`` = inference delay / dt) will never run: they are *frozen* to what the current
chunk does at those instants. The steps after them should continue smoothly from there instead of
jumping to an independent prediction. RTC (Black, Galliker, Levine 2025: "Real-Time Execution of
Action Chunking Flow Policies") treats this as inpainting inside the flow-matching loop: at every
integration step the velocity is corrected toward the target continuation ``Y`` with per-step
weights ``W`` (1 on the frozen prefix, decaying over the rest of the overlap, 0 after it):

    A_hat = x + (t_end - t) * v            # the loop's current guess of the final chunk
    v'    = v + g(tau) / (t_end - t_start) * J^T (W * (Y - A_hat))

with ``tau`` the progress from noise (0) to data (1), ``g(tau) = min(max_guidance,
(1 - tau) / (tau * r2))``, ``r2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2)``. ``J`` is the Jacobian of
``A_hat`` with respect to ``x``: without autograd through the step graph (an exported ONNX / TFLite /
TensorRT graph has none) it is taken as the identity, which keeps the direction of the correction and
leaves its scale to ``max_guidance``; a runner that has autograd passes ``vjp``. After the loop
``finish`` writes the frozen prefix exactly (those steps are executed from the current chunk anyway).

Time convention: the program's own (vla_accel.core.program): ``x <- x + (t_next - t) * v`` from
``t_start`` (noise) to ``t_end`` (data); pi0 / SmolVLA run 1 -> 0, GR00T 0 -> 1.

Hook for a flow-matching runner (one call per Euler step, plain arithmetic, so numpy arrays or torch
tensors on any device)::

    guide = plan.guide(t_start, t_end, max_guidance)      # or None: no RTC for this call
    for t, t_next in zip(times[:-1], times[1:]):
        v = step_graph(x, t, prefix_features)
        if guide is not None:
            v = guide.velocity(x, v, t)
        x = euler_step(x, v, t, t_next)
    if guide is not None:
        x = guide.finish(x)

Single-pass programs have no loop to guide: ``blend_chunk`` freezes the prefix and cross-fades the
rest of the overlap with the same weights (prefix freezing plus blending).

Pure numpy (no torch import); arrays are converted to the loop's tensor type on first use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from vla_accel.errors import ConfigError

RTC_SCHEDULES = ("exp", "linear", "ones", "zeros")


def soft_mask(steps: int, frozen: int, blend_steps: int, schedule: str = "exp") -> np.ndarray:
    """Per-step weights (steps,): 1 on ``[0, frozen)``, the schedule over ``[frozen, frozen + blend_steps)``
    (from near 1 down toward 0), 0 after. ``exp``: RTC's ``c * (e^c - 1) / (e - 1)`` with
    ``c = (frozen + blend_steps - i) / (blend_steps + 1)``; ``linear``: ``c``; ``ones``: 1 over the
    whole overlap; ``zeros``: the frozen prefix alone (a hard mask)."""
    if schedule not in RTC_SCHEDULES:
        raise ConfigError(f"RTC schedule must be one of {', '.join(RTC_SCHEDULES)}, got {schedule!r}")
    steps, frozen, blend_steps = int(steps), max(int(frozen), 0), max(int(blend_steps), 0)
    weights = np.zeros(steps)
    weights[: min(frozen, steps)] = 1.0
    for i in range(min(frozen, steps), min(frozen + blend_steps, steps)):
        c = (frozen + blend_steps - i) / (blend_steps + 1)
        if schedule == "exp":
            weights[i] = c * (math.exp(c) - 1.0) / (math.e - 1.0)
        elif schedule == "linear":
            weights[i] = c
        elif schedule == "ones":
            weights[i] = 1.0
    return weights


def guidance_weight(progress: float, max_guidance: float) -> float:
    """RTC's guidance weight at ``progress`` tau in [0, 1] (0 = noise, 1 = data), capped at max_guidance."""
    tau = float(progress)
    if tau <= 0.0 or tau >= 1.0:
        return float(max_guidance)
    r2 = (1.0 - tau) ** 2 / (tau**2 + (1.0 - tau) ** 2)
    return float(min(max_guidance, (1.0 - tau) / (tau * r2)))


def align_previous(values: np.ndarray, stamp_ns: int, dt: float, new_stamp_ns: int, steps: int) -> tuple[np.ndarray, int]:
    """The previous chunk on the new chunk's step grid: (steps, dims) values at ``new_stamp + i*dt``
    (linearly interpolated on the previous chunk's clock, its last value after its end) and how many
    of those steps the previous chunk still covers (the overlap)."""
    prev = np.asarray(values, dtype=np.float64)
    times = (new_stamp_ns - stamp_ns) / 1e9 / dt + np.arange(steps)  # in previous-chunk steps
    last = prev.shape[0] - 1
    u = np.clip(times, 0.0, last)
    i0 = np.floor(u).astype(np.int64)
    i1 = np.minimum(i0 + 1, last)
    frac = (u - i0)[:, None]
    target = prev[i0] * (1.0 - frac) + prev[i1] * frac
    overlap = int(np.count_nonzero(times < prev.shape[0]))
    return target, overlap


@dataclass(frozen=True)
class RtcPlan:
    """What real-time chunking needs for one new chunk: the continuation ``target`` (steps, dims) of the
    executing chunk on the new chunk's grid, the per-step ``weights`` (steps,) and the ``frozen`` count."""

    target: np.ndarray
    weights: np.ndarray
    frozen: int
    overlap: int

    @classmethod
    def from_previous(cls, values: np.ndarray, stamp_ns: int, dt: float, new_stamp_ns: int, steps: int,
                      delay_s: float, schedule: str = "exp", blend_steps: int | None = None) -> "RtcPlan":
        """Freeze the steps that execute during ``delay_s`` of inference (``ceil(delay / dt)``, at most the
        overlap) and guide the rest of the overlap (``blend_steps``, default all of it) with ``schedule``."""
        target, overlap = align_previous(values, stamp_ns, dt, new_stamp_ns, steps)
        frozen = min(overlap, max(0, math.ceil(delay_s / dt - 1e-9)))
        blend = overlap - frozen if blend_steps is None else min(int(blend_steps), max(overlap - frozen, 0))
        return cls(target, soft_mask(steps, frozen, blend, schedule), frozen, overlap)

    def guide(self, t_start: float, t_end: float, max_guidance: float = 5.0,
              vjp: Callable[[Any, Any], Any] | None = None, scale: np.ndarray | None = None,
              offset: np.ndarray | None = None) -> "RtcGuide":
        """The per-step guide for one denoising loop. The loop integrates *normalised* actions: give the
        un-normalisation ``a = x * scale + offset`` (core.postprocess.Postprocessor's) and the target is
        mapped into the loop's space."""
        target = self.target
        if scale is not None:
            target = (target - np.asarray(offset if offset is not None else 0.0)) / np.asarray(scale)
        return RtcGuide(target, self.weights, self.frozen, t_start=t_start, t_end=t_end,
                        max_guidance=max_guidance, vjp=vjp)


def blend_chunk(values: np.ndarray, plan: RtcPlan) -> np.ndarray:
    """Single-pass programs: ``values * (1 - W) + target * W`` (the frozen prefix becomes the target)."""
    w = plan.weights[:, None]
    return (np.asarray(values, dtype=np.float64) * (1.0 - w) + plan.target * w).astype(np.float32)


class RtcGuide:
    """Per-Euler-step velocity correction of one denoising loop (see the module docstring).

    ``x`` and ``v`` are (steps, dims) or (batch, steps, dims), numpy arrays or torch tensors; ``vjp``
    (optional) maps (x, cotangent) to J^T cotangent of A_hat with respect to x.
    """

    def __init__(self, target: np.ndarray, weights: np.ndarray, frozen: int, *, t_start: float = 1.0,
                 t_end: float = 0.0, max_guidance: float = 5.0,
                 vjp: Callable[[Any, Any], Any] | None = None):
        if t_start == t_end:
            raise ConfigError("RtcGuide needs t_start != t_end")
        if not (math.isfinite(max_guidance) and max_guidance >= 0):
            raise ConfigError(f"max_guidance must be finite and >= 0, got {max_guidance!r}")
        self.target = np.asarray(target, dtype=np.float32)
        self.weights = np.asarray(weights, dtype=np.float32)[:, None]
        self.frozen = int(frozen)
        self.t_start, self.t_end = float(t_start), float(t_end)
        self.max_guidance = float(max_guidance)
        self.vjp = vjp
        self._cache: dict[type, tuple[Any, Any, Any]] = {}

    def _arrays(self, like: Any) -> tuple[Any, Any, Any]:
        """(target, weights, hard prefix mask) in ``like``'s array type and device."""
        kind = type(like)
        if kind not in self._cache:
            hard = np.zeros_like(self.weights)
            hard[: self.frozen] = 1.0
            if isinstance(like, np.ndarray):
                conv = lambda a: a.astype(like.dtype)  # noqa: E731
            else:  # a torch tensor (or anything with new_tensor): same dtype and device
                conv = like.new_tensor
            self._cache[kind] = (conv(self.target), conv(self.weights), conv(hard))
        return self._cache[kind]

    def progress(self, t: float) -> float:
        return (float(t) - self.t_start) / (self.t_end - self.t_start)

    def velocity(self, x: Any, v: Any, t: float) -> Any:
        target, weights, _ = self._arrays(x)
        x_hat = x + v * (self.t_end - float(t))
        error = (target - x_hat) * weights
        if self.vjp is not None:
            error = self.vjp(x, error)
        g = guidance_weight(self.progress(t), self.max_guidance)
        return v + error * (g / (self.t_end - self.t_start))

    def finish(self, x: Any) -> Any:
        """The final chunk with its frozen prefix set exactly to the target."""
        target, _, hard = self._arrays(x)
        return x * (1.0 - hard) + target * hard
