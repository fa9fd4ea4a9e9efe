"""Chunk-boundary metrics: how smooth the executed actions are where one chunk takes over from another.

Two figures, both in the action's own units (metres, radians, gripper command ...), per dimension:

* **jump** at a switch: ``|a_new - a_old|`` at the first control step the new chunk drives, where
  ``a_old`` is what the previous chunk prescribed for that same instant (its continuation) and
  ``a_new`` is what was actually executed. A hard switch between two predictions that disagree jumps
  by their difference; a cross-fade or real-time chunking keeps it small. A switch's jump is the
  maximum over dimensions; the per-dimension maxima over a window are kept as well.
* **jerk** of the executed sequence: the third finite difference of consecutive control-rate outputs
  divided by ``period**3`` (units per s^3), max over dimensions per sample. It catches what a small
  jump hides: a fast cross-fade or a kink.
* **step change**: ``max |a(t) - a(t - period)|`` over dimensions per sample (the velocity a controller
  sees, in units per control period).

``BoundaryMeter`` keeps these over windows (no allocation per sample); ``InferenceMetrics`` reports its
``summary()`` beside its own figures (``attach_boundary``), so /vla/stats, /diagnostics, the benchmark
and the replay report read the same numbers. Pure numpy, no clock reads.
"""
from __future__ import annotations

import math
import threading
from typing import Sequence

import numpy as np
from vla_accel.errors import ConfigError

JUMP_KEYS = ("chunk_switches", "chunk_jump_max", "chunk_jump_p50", "chunk_jump_p95", "chunk_jump_last",
             "action_jerk_p50", "action_jerk_p95", "action_jerk_max", "action_step_max")


def jump(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Per-dimension |new - old| (float64)."""
    return np.abs(np.asarray(new, dtype=np.float64) - np.asarray(old, dtype=np.float64))


def jerk_series(actions: np.ndarray, period_s: float) -> np.ndarray:
    """Per-sample jerk magnitude of a (samples, dims) control-rate sequence: max over dimensions of
    the third finite difference / period^3. Fewer than 4 samples give an empty array."""
    values = np.asarray(actions, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 4 or not period_s > 0:
        return np.zeros(0)
    third = np.diff(values, n=3, axis=0) / period_s**3
    return np.abs(third).max(axis=1)


def _q(values: Sequence[float] | np.ndarray, q: float) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else 0.0


def summarize(jumps: np.ndarray, jerks: np.ndarray, steps: np.ndarray | None = None) -> dict[str, float]:
    """The JUMP_KEYS figures from per-switch jumps (switches, dims), per-sample jerks and step changes."""
    jumps = np.asarray(jumps, dtype=np.float64)
    if jumps.ndim == 1:
        jumps = jumps.reshape(-1, 1)
    per_switch = jumps.max(axis=1) if jumps.size else np.zeros(0)
    steps = np.zeros(0) if steps is None else np.asarray(steps, dtype=np.float64)
    return {
        "chunk_switches": float(per_switch.size),
        "chunk_jump_max": float(per_switch.max()) if per_switch.size else 0.0,
        "chunk_jump_p50": _q(per_switch, 50),
        "chunk_jump_p95": _q(per_switch, 95),
        "chunk_jump_last": float(per_switch[-1]) if per_switch.size else 0.0,
        "action_jerk_p50": _q(jerks, 50),
        "action_jerk_p95": _q(jerks, 95),
        "action_jerk_max": float(np.max(jerks)) if np.size(jerks) else 0.0,
        "action_step_max": float(np.max(steps)) if steps.size else 0.0,
    }


class BoundaryMeter:
    """Windows of switch jumps and executed-action jerk for one output stream (thread-safe).

    ``record_output(action)`` once per control-rate output (in order, ``period_s`` apart);
    ``record_switch(old, new)`` when a new chunk drives the output for the first time (``old``: the
    previous chunk's action for that instant, ``new``: what was executed). ``reset_sequence()`` after a
    gap in the output (a hold, a restart) so the jerk does not difference across it.
    """

    def __init__(self, dims: int, period_s: float, window: int = 512):
        if dims <= 0 or not (math.isfinite(period_s) and period_s > 0) or window <= 0:
            raise ConfigError(f"BoundaryMeter needs dims > 0, period_s > 0, window > 0; got {dims}, {period_s}, {window}")
        self.dims = int(dims)
        self.period_s = float(period_s)
        self.window = int(window)
        self._lock = threading.Lock()
        self._jumps = np.zeros((self.window, self.dims))
        self._jerks = np.zeros(self.window)
        self._steps = np.zeros(self.window)
        self._recent = np.zeros((4, self.dims))
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._n_jumps = 0
            self._n_jerks = 0
            self._n_steps = 0
            self._n_recent = 0
            self.switches = 0
            self.last_jump = np.zeros(self.dims)

    def reset_sequence(self) -> None:
        with self._lock:
            self._n_recent = 0

    def record_switch(self, old: np.ndarray, new: np.ndarray) -> np.ndarray:
        value = jump(old, new)
        with self._lock:
            self._jumps[self._n_jumps % self.window] = value
            self._n_jumps += 1
            self.switches += 1
            self.last_jump = value
        return value

    def record_output(self, action: np.ndarray) -> None:
        a = np.asarray(action, dtype=np.float64)
        with self._lock:
            self._recent[:-1] = self._recent[1:]
            self._recent[-1] = a
            self._n_recent = min(self._n_recent + 1, 4)
            if self._n_recent >= 2:
                self._steps[self._n_steps % self.window] = float(np.abs(self._recent[-1] - self._recent[-2]).max())
                self._n_steps += 1
            if self._n_recent == 4:
                third = self._recent[3] - 3 * self._recent[2] + 3 * self._recent[1] - self._recent[0]
                self._jerks[self._n_jerks % self.window] = float(np.abs(third).max()) / self.period_s**3
                self._n_jerks += 1

    def jump_max_per_dim(self) -> np.ndarray:
        with self._lock:
            n = min(self._n_jumps, self.window)
            return self._jumps[:n].max(axis=0) if n else np.zeros(self.dims)

    def summary(self) -> dict[str, float]:
        with self._lock:
            jumps = self._jumps[: min(self._n_jumps, self.window)].copy()
            jerks = self._jerks[: min(self._n_jerks, self.window)].copy()
            steps = self._steps[: min(self._n_steps, self.window)].copy()
            switches = self.switches
        out = summarize(jumps if jumps.size else np.zeros((0, self.dims)), jerks, steps)
        out["chunk_switches"] = float(switches)  # all switches, not just the window's
        return out
