"""Control-rate action output from action chunks: ``ActionStreamer``.

A VLA model answers every few hundred milliseconds with a chunk of ``steps`` actions meant to run
``dt`` apart from the source frame's stamp; a controller wants one action every 10-33 ms. The
streamer stores chunks on the source clock (step i at ``stamp + i*dt``), and ``sample(t_ns)``
returns the action for time ``t`` (linearly interpolated between steps), resolving the overlap of
successive chunks in one of three ways:

* ``latest``: the newest chunk wins outright (no smoothing; a switch can jump by the difference
  between two predictions);
* ``ensemble``: temporal ensembling as in ACT: a weighted average of every chunk that covers
  ``t``, weights ``exp(-ensemble_decay * age)``, where age is the chunk's stamp counted in steps of
  ``dt`` from the oldest one (decay > 0 favours older predictions, as ACT does; < 0 favours newer);
  with one new chunk per ``dt`` this is exactly ACT's ``exp(-k * i)``;
* ``blend``: a cross-fade from what was being output to the new chunk over ``blend_time_s``. A
  chunk arriving mid-fade freezes the fade in progress, so at most one cross-fade moves at a time
  and the change between two samples ``period`` apart is bounded by
  ``slope * period + spread * period / blend_time_s`` (``slope``: the steepest step-to-step change
  within a chunk per second, ``spread``: the largest difference between any two predictions).

When the newest chunk runs out the streamer holds (``hold="last"``: keep the last action, for
position-like spaces; ``hold="zero"``: zero motion, for velocity and delta spaces, except that
absolute channels (a dimension named like ``gripper``) keep their last value, so a closed gripper
does not open when the chunks run out: the same rule as the node's stop action) and says so
(``holding``, ``hold_samples``). ``max_step_change`` optionally limits how far any dimension may move
between two consecutive samples (a rate limiter applied after everything else, holds included).

Everything is a pure function of the pushed chunks and the sample times: no threads, no clock
reads, so it is testable on replayed sequences. It is not thread-safe: call it from one thread (the
ROS node's control timer) or guard it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vla_accel.core.spec import ActionSpec
from vla_accel.core.types import ActionChunk
from vla_accel.errors import ConfigError, InputError

STREAM_MODES = ("latest", "ensemble", "blend")
HOLD_MODES = ("last", "zero")
# Velocity and delta spaces must stop, not repeat the last command, when actions run out.
ZERO_HOLD_SPACES = ("eef_velocity", "joint_velocity", "eef_delta", "joint_delta")


def default_hold(space: str) -> str:
    """The safe hold for an action space: zeros for velocity/delta spaces, the last action otherwise."""
    return "zero" if space in ZERO_HOLD_SPACES else "last"


@dataclass(frozen=True)
class StreamSample:
    """One control-rate output and how it was made."""

    t_ns: int
    values: np.ndarray  # (dims,) float32
    holding: bool  # True when no chunk covered t and the hold policy produced the value
    chunks_used: int  # chunks that contributed (0 while holding with zeros)
    newest_stamp_ns: int  # stamp of the newest chunk in use (or the one that ran out)
    rate_limited: bool = False  # max_step_change clipped at least one dimension


class _TimedChunk:
    """A chunk on the source clock. Evaluation is clamped at both ends, so it is continuous."""

    __slots__ = ("stamp_ns", "dt_ns", "values", "end_ns", "active_from_ns", "stream")

    def __init__(self, chunk: ActionChunk, active_from_ns: int | None):
        self.stamp_ns = int(chunk.stamp_ns)
        self.dt_ns = float(chunk.dt) * 1e9
        self.values = np.asarray(chunk.values, dtype=np.float64)
        # Step i holds (or interpolates towards i+1) over [stamp + i*dt, stamp + (i+1)*dt).
        self.end_ns = self.stamp_ns + int(round(self.values.shape[0] * self.dt_ns))
        self.active_from_ns = active_from_ns
        self.stream = chunk.stream

    def covers(self, t_ns: int) -> bool:
        return self.stamp_ns <= t_ns < self.end_ns

    def active(self, t_ns: int) -> bool:
        return self.active_from_ns is not None and self.active_from_ns <= t_ns

    def value_at(self, t_ns: int, interpolate: bool) -> np.ndarray:
        last = self.values.shape[0] - 1
        u = (t_ns - self.stamp_ns) / self.dt_ns
        if u <= 0.0:
            return self.values[0]
        if u >= last:
            return self.values[last]
        i = int(math.floor(u))
        if not interpolate:
            return self.values[i]
        frac = u - i
        return self.values[i] * (1.0 - frac) + self.values[i + 1] * frac


class _ConstantLayer:
    """A frozen output (used as the base of a blend that starts from a hold)."""

    __slots__ = ("values",)

    def __init__(self, values: np.ndarray):
        self.values = np.array(values, dtype=np.float64)

    def value_at(self, t_ns: int, interpolate: bool) -> np.ndarray:  # noqa: ARG002 (same signature)
        return self.values


class _BlendLayer:
    __slots__ = ("source", "start_ns", "frozen_alpha")

    def __init__(self, source: _TimedChunk | _ConstantLayer, start_ns: int):
        self.source = source
        self.start_ns = start_ns
        self.frozen_alpha: float | None = None

    def alpha(self, t_ns: int, blend_ns: float) -> float:
        if self.frozen_alpha is not None:
            return self.frozen_alpha
        if blend_ns <= 0:
            return 1.0
        return min(1.0, max(0.0, (t_ns - self.start_ns) / blend_ns))


class ActionStreamer:
    """Turns a stream of ActionChunks into actions at any control rate. See the module docstring."""

    MAX_BLEND_LAYERS = 16
    MAX_CHUNKS = 64

    def __init__(
        self,
        action_spec: ActionSpec,
        mode: str = "latest",
        *,
        blend_time_s: float = 0.2,
        ensemble_decay: float = 0.01,
        hold: str | None = None,
        max_step_change: float | Sequence[float] | None = None,
        interpolate: bool = True,
    ):
        if mode not in STREAM_MODES:
            raise ConfigError(f"mode must be one of {', '.join(STREAM_MODES)}; got {mode!r}")
        hold = default_hold(action_spec.space) if hold is None else hold
        if hold not in HOLD_MODES:
            raise ConfigError(f"hold must be one of {', '.join(HOLD_MODES)}; got {hold!r}")
        if not (math.isfinite(blend_time_s) and blend_time_s >= 0):
            raise ConfigError(f"blend_time_s must be a finite number >= 0, got {blend_time_s!r}")
        if not math.isfinite(ensemble_decay):
            raise ConfigError(f"ensemble_decay must be finite, got {ensemble_decay!r}")
        self.spec = action_spec
        self.mode = mode
        self.hold = hold
        self.blend_time_s = float(blend_time_s)
        self.ensemble_decay = float(ensemble_decay)
        self.interpolate = interpolate
        self.dims = action_spec.dims
        # Channels that are commands, not motion: a zero hold keeps them (see the module docstring).
        self._absolute = np.array(["gripper" in name.lower() for name in action_spec.names][: self.dims], dtype=bool)
        self.max_step_change: np.ndarray | None = None
        if max_step_change is not None:
            limit = np.broadcast_to(np.asarray(max_step_change, dtype=np.float64), (self.dims,)).copy()
            if not np.all(np.isfinite(limit)) or np.any(limit <= 0):
                raise ConfigError(f"max_step_change must be > 0 and finite, got {max_step_change!r}")
            self.max_step_change = limit
        self._chunks: list[_TimedChunk] = []  # latest / ensemble: sorted by stamp
        self._layers: list[_BlendLayer] = []  # blend: bottom first
        self._pending: list[_TimedChunk] = []  # pushed, waiting for their activation time
        self._newest_stamp_ns: int | None = None
        self._last_t_ns: int | None = None
        self._last_output: np.ndarray | None = None
        self._holding = False
        self._stream: str | None = None  # the stream of the first chunk: one streamer per stream
        # Counters (read them for diagnostics).
        self.chunks_pushed = 0
        self.chunks_stale = 0  # older than what is already in use: discarded
        self.samples = 0
        self.hold_samples = 0
        self.holds_started = 0
        self.rate_limited_samples = 0

    # --- input --------------------------------------------------------------------------------
    def push(self, chunk: ActionChunk, now_ns: int | None = None) -> bool:
        """Store a chunk. It takes effect from ``now_ns`` (its arrival on the sampling clock), or
        from the next ``sample`` call when ``now_ns`` is None. Returns False when the chunk is stale
        (older than the chunk in use, or already expired) and was discarded (counted).
        Raises InputError for a chunk that does not match the action spec."""
        self._check(chunk)
        timed = _TimedChunk(chunk, now_ns)
        self._stream = chunk.stream
        self.chunks_pushed += 1
        if self.mode in ("latest", "blend"):
            if self._newest_stamp_ns is not None and timed.stamp_ns <= self._newest_stamp_ns:
                self.chunks_stale += 1
                return False
        elif self._last_t_ns is not None and timed.end_ns <= self._last_t_ns:
            self.chunks_stale += 1
            return False
        self._newest_stamp_ns = (
            timed.stamp_ns if self._newest_stamp_ns is None else max(self._newest_stamp_ns, timed.stamp_ns)
        )
        self._pending.append(timed)
        if len(self._pending) > self.MAX_CHUNKS:
            self._pending.pop(0)
        return True

    def _check(self, chunk: ActionChunk) -> None:
        values = np.asarray(chunk.values)
        if values.ndim != 2 or values.shape[1] != self.dims or values.shape[0] < 1:
            raise InputError(
                f"action chunk has shape {values.shape}; the action spec needs (steps >= 1, {self.dims})",
                reason="bad_chunk",
            )
        if not np.all(np.isfinite(values)):
            raise InputError("action chunk holds non-finite values", reason="bad_chunk")
        if not (math.isfinite(chunk.dt) and chunk.dt > 0):
            raise InputError(f"action chunk dt must be > 0 seconds, got {chunk.dt!r}", reason="bad_chunk")
        if self._stream is not None and chunk.stream != self._stream:
            raise InputError(
                f"action chunk of stream '{chunk.stream}' pushed to the streamer of stream '{self._stream}': "
                "use one ActionStreamer per stream",
                reason="wrong_stream",
            )
        if chunk.names and tuple(chunk.names) != tuple(self.spec.names):
            raise InputError(
                f"action chunk names {tuple(chunk.names)} differ from the spec's {tuple(self.spec.names)}",
                reason="bad_chunk",
            )

    # --- output -------------------------------------------------------------------------------
    @property
    def holding(self) -> bool:
        """True when the last sample was produced by the hold policy (the newest chunk ran out)."""
        return self._holding

    def sample(self, t_ns: int) -> np.ndarray | None:
        """The action for time ``t_ns`` (float32, shape (dims,)), or None before the first chunk."""
        detail = self.sample_detail(t_ns)
        return None if detail is None else detail.values

    def sample_detail(self, t_ns: int) -> StreamSample | None:
        t_ns = int(t_ns)
        self._activate(t_ns)
        if self.mode == "latest":
            result = self._sample_latest(t_ns)
        elif self.mode == "ensemble":
            result = self._sample_ensemble(t_ns)
        else:
            result = self._sample_blend(t_ns)
        self._last_t_ns = t_ns if self._last_t_ns is None else max(self._last_t_ns, t_ns)
        if result is None:
            return None
        values, holding, used, newest = result
        if holding and self.hold == "zero":
            values = np.zeros(self.dims)
            if self._last_output is not None:
                values[self._absolute] = self._last_output[self._absolute]
            used = 0
        elif holding and self._last_output is not None and self.mode != "blend":
            values = self._last_output
        limited = False
        if self.max_step_change is not None and self._last_output is not None:
            step = values - self._last_output
            clipped = np.clip(step, -self.max_step_change, self.max_step_change)
            limited = bool(np.any(clipped != step))
            values = self._last_output + clipped
        if holding and not self._holding:
            self.holds_started += 1
        self._holding = holding
        self.samples += 1
        self.hold_samples += int(holding)
        self.rate_limited_samples += int(limited)
        self._last_output = np.array(values, dtype=np.float64)
        return StreamSample(t_ns, self._last_output.astype(np.float32), holding, used, newest, limited)

    def reset(self) -> None:
        """Forget every chunk and the last output (e.g. on a new instruction or an e-stop)."""
        self._chunks.clear()
        self._layers.clear()
        self._pending.clear()
        self._newest_stamp_ns = None
        self._last_t_ns = None
        self._last_output = None
        self._holding = False
        self._stream = None

    # --- internals ----------------------------------------------------------------------------
    def _activate(self, t_ns: int) -> None:
        """Move pending chunks whose activation time has come into the active set."""
        still_pending = []
        for timed in self._pending:
            if timed.active_from_ns is None:
                timed.active_from_ns = t_ns
            if timed.active_from_ns > t_ns:
                still_pending.append(timed)
                continue
            if self.mode == "blend":
                self._start_blend(timed)
            else:
                self._chunks.append(timed)
        self._pending = still_pending
        if self.mode == "latest" and self._chunks:
            self._chunks.sort(key=lambda c: c.stamp_ns)
            del self._chunks[:-1]
        elif self.mode == "ensemble":
            self._chunks.sort(key=lambda c: c.stamp_ns)
            # Sample times are non-decreasing: a chunk that ended before t never counts again.
            self._chunks = [c for c in self._chunks if c.end_ns > t_ns][-self.MAX_CHUNKS :]

    def _sample_latest(self, t_ns: int):
        if not self._chunks:
            return None
        newest = self._chunks[-1]
        holding = t_ns >= newest.end_ns
        return newest.value_at(t_ns, self.interpolate), holding, 1, newest.stamp_ns

    def _sample_ensemble(self, t_ns: int):
        covering = [c for c in self._chunks if c.covers(t_ns) and c.active(t_ns)]
        if not covering:
            if self._last_output is None:
                return None
            return self._last_output, True, 0, self._newest_stamp_ns or 0
        oldest = covering[0].stamp_ns
        total = np.zeros(self.dims)
        weight_sum = 0.0
        for c in covering:
            age_steps = (c.stamp_ns - oldest) / c.dt_ns
            weight = math.exp(-self.ensemble_decay * age_steps)
            total += weight * c.value_at(t_ns, self.interpolate)
            weight_sum += weight
        return total / weight_sum, False, len(covering), covering[-1].stamp_ns

    def _start_blend(self, timed: _TimedChunk) -> None:
        start = int(timed.active_from_ns)
        if self._layers:
            if self._holding and self._last_output is not None:
                # Blend from what the robot was actually given (the held action, or zeros).
                self._layers = [_BlendLayer(_ConstantLayer(self._last_output), start)]
                self._layers[0].frozen_alpha = 1.0
            else:
                # Freeze the fade in progress so only one cross-fade moves at a time.
                top = self._layers[-1]
                top.frozen_alpha = top.alpha(start, self.blend_time_s * 1e9)
        layer = _BlendLayer(timed, start)
        if not self._layers:
            layer.frozen_alpha = 1.0  # the first chunk has nothing to fade from
        self._layers.append(layer)
        self._compact_layers(start)

    def _compact_layers(self, t_ns: int) -> None:
        blend_ns = self.blend_time_s * 1e9
        # Everything under a layer at full weight is invisible.
        for i in range(len(self._layers) - 1, 0, -1):
            if self._layers[i].alpha(t_ns, blend_ns) >= 1.0:
                del self._layers[:i]
                break
        while len(self._layers) > self.MAX_BLEND_LAYERS:
            # Fold the two bottom layers into a constant at their current value: continuous at t.
            base, above = self._layers[0], self._layers[1]
            a = above.alpha(t_ns, blend_ns)
            value = (1 - a) * base.source.value_at(t_ns, self.interpolate) + a * above.source.value_at(
                t_ns, self.interpolate
            )
            merged = _BlendLayer(_ConstantLayer(value), base.start_ns)
            merged.frozen_alpha = 1.0
            self._layers[:2] = [merged]

    def _sample_blend(self, t_ns: int):
        if not self._layers:
            return None
        self._compact_layers(t_ns)
        blend_ns = self.blend_time_s * 1e9
        out = self._layers[0].source.value_at(t_ns, self.interpolate)
        for layer in self._layers[1:]:
            a = layer.alpha(t_ns, blend_ns)
            out = (1.0 - a) * out + a * layer.source.value_at(t_ns, self.interpolate)
        top = self._layers[-1].source
        if isinstance(top, _TimedChunk):
            holding, newest = t_ns >= top.end_ns, top.stamp_ns
        else:
            holding, newest = True, self._newest_stamp_ns or 0
        return out, holding, len(self._layers), newest
