"""Compare action chunks: between backends of one replay, and against a golden bag (regression).

Chunks are matched by the source frame stamp (``header.stamp``), which the whole pipeline carries
through unchanged, so comparisons do not depend on publish order or timing. Deviations are absolute,
in action units (metres, radians, gripper units) after un-normalisation and clipping.

Tolerance profiles (absolute, per action value):

* ``fp32`` 1e-4: fp32 runtimes differ only by summation order (measured ~1e-6 on this network);
* ``fp16`` 1e-2: half precision keeps ~3 significant digits; through 4 transformer blocks the
  normalised outputs move by a few 1e-3, and the gripper dimension is not scaled down;
* ``int8`` 1e-1: 8-bit weights/activations move outputs by a few percent of the action range
  (the q01..q99 span is <= 1 in every dimension of the reference models).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from vla_accel.bags.writer import ChunkRecord
from vla_accel.errors import ConfigError

TOLERANCE_PROFILES: dict[str, float] = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-1}


def tolerance_for(profile: str | None, atol: float | None) -> float:
    if atol is not None:
        if not (atol >= 0 and np.isfinite(atol)):
            raise ConfigError(f"--atol must be a finite number >= 0, got {atol}")
        return float(atol)
    key = profile or "fp32"
    if key not in TOLERANCE_PROFILES:
        raise ConfigError(f"tolerance profile must be one of {sorted(TOLERANCE_PROFILES)}, got {key!r}")
    return TOLERANCE_PROFILES[key]


@dataclass
class Deviation:
    """The largest absolute difference between two sets of chunks and where it is."""

    max_abs: float = 0.0
    mean_abs: float = 0.0
    stamp_ns: int | None = None
    step: int | None = None
    dim: int | None = None
    dim_name: str = ""
    value: float = 0.0  # the candidate's value at the worst point
    reference: float = 0.0  # the reference's value there
    matched: int = 0
    missing: list[int] = field(default_factory=list)  # stamps in the reference, absent in the candidate
    extra: list[int] = field(default_factory=list)  # stamps in the candidate, absent in the reference
    shape_mismatch: list[int] = field(default_factory=list)

    def describe(self) -> str:
        if self.stamp_ns is None:
            return f"no deviation measured ({self.matched} chunks matched)"
        return (
            f"max |deviation| {self.max_abs:.3g} at chunk stamp {self.stamp_ns} "
            f"({self.stamp_ns / 1e9:.3f} s), step {self.step}, dimension {self.dim} '{self.dim_name}': "
            f"{self.value:.6g} vs reference {self.reference:.6g} (mean |dev| {self.mean_abs:.3g}, "
            f"{self.matched} chunks matched)"
        )


def _by_stamp(chunks: Iterable) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    for c in chunks:
        # a stamp seen twice (a re-published frame) keeps the latest chunk, like a consumer would
        out[int(c.stamp_ns)] = np.asarray(c.values, dtype=np.float32)
    return out


def compare_chunks(candidate: Sequence, reference: Sequence, names: Sequence[str] = ()) -> Deviation:
    """Match ``candidate`` to ``reference`` chunks (ActionChunk or ChunkRecord) by stamp."""
    cand, ref = _by_stamp(candidate), _by_stamp(reference)
    if not names:
        for c in list(reference) + list(candidate):
            names = tuple(getattr(c, "names", ()))
            break
    dev = Deviation()
    dev.missing = sorted(set(ref) - set(cand))
    dev.extra = sorted(set(cand) - set(ref))
    total, count = 0.0, 0
    for stamp in sorted(set(ref) & set(cand)):
        a, b = cand[stamp], ref[stamp]
        if a.shape != b.shape:
            dev.shape_mismatch.append(stamp)
            continue
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        dev.matched += 1
        if diff.size == 0:
            continue
        total += float(diff.sum())
        count += diff.size
        # NaN anywhere is an infinite deviation, not a silently ignored one
        worst = float(np.inf) if not np.all(np.isfinite(diff)) else float(diff.max())
        if dev.stamp_ns is None or worst > dev.max_abs:
            flat = int(np.nanargmax(np.where(np.isfinite(diff), diff, np.inf)))
            step, dim = np.unravel_index(flat, diff.shape)
            dev.max_abs = worst
            dev.stamp_ns, dev.step, dev.dim = stamp, int(step), int(dim)
            dev.dim_name = names[dim] if dim < len(names) else ""
            dev.value, dev.reference = float(a[step, dim]), float(b[step, dim])
    dev.mean_abs = total / count if count else 0.0
    return dev


@dataclass
class RegressionResult:
    backend: str
    golden_topic: str
    tolerance: float
    deviation: Deviation
    # live comparisons: a live node may legitimately supersede frames it cannot keep up with, so
    # chunks missing from the candidate are reported but allowed; extra or different ones never are
    allow_missing: bool = False
    label: str = "golden"

    @property
    def passed(self) -> bool:
        d = self.deviation
        return (
            (self.allow_missing or not d.missing)
            and not d.extra
            and not d.shape_mismatch
            and d.matched > 0
            and d.max_abs <= self.tolerance
        )

    def describe(self) -> str:
        d = self.deviation
        lines = [
            f"[{'PASS' if self.passed else 'FAIL'}] {self.backend} vs {self.label} {self.golden_topic} "
            f"(tolerance {self.tolerance:g}): {d.describe()}"
        ]
        if d.max_abs > self.tolerance:
            lines.append(f"  drift: {d.max_abs:.3g} > tolerance {self.tolerance:g}")
        if d.missing:
            allowed = " (allowed: superseded by the live node)" if self.allow_missing else ""
            lines.append(f"  missing chunks (in {self.label}, not in this run): {len(d.missing)}, "
                         f"first stamp {d.missing[0]}{allowed}")
        if d.extra:
            lines.append(f"  extra chunks (in this run, not in {self.label}): {len(d.extra)}, first stamp {d.extra[0]}")
        if d.shape_mismatch:
            lines.append(f"  chunks with a different steps x dims shape: {len(d.shape_mismatch)}")
        if d.matched == 0:
            lines.append(f"  no chunk matched by stamp: is the {self.label} from the same input bag?")
        return "\n".join(lines)


def pick_golden_topic(golden: dict[str, list[ChunkRecord]], backend: str) -> str | None:
    """The golden topic for ``backend`` (a run label such as ``onnxruntime`` or ``cuda:fp16``): the
    topic a replay of it writes, else one whose chunks came from it, else the first one."""
    from vla_accel.bags.writer import topic_name

    own = topic_name(backend, "action_chunk")
    if golden.get(own):
        return own
    for topic, chunks in golden.items():
        if chunks and chunks[0].backend == backend:
            return topic
    for topic, chunks in golden.items():
        if chunks:
            return topic
    return next(iter(golden), None)
