"""Input buffer sets and the three memory strategies of the preprocessor.

A *buffer set* is one array per model input (names, shapes, dtypes from the ModelSpec), sized for
``max_batch``. Strategies:

* ``static``: one set allocated at construction and reused by every ``prepare``; a batch's inputs
  are views ``[:B]`` and stay valid until the next ``prepare`` (zero allocation per frame: this is
  what a single-threaded node wants). ``release`` is a no-op.
* ``pool``: ``size`` sets allocated up front, checked out by ``prepare`` and returned by
  ``PreparedBatch.release()``, so batch N+1 can be prepared while batch N is still being inferred.
  When every set is out, ``acquire`` waits up to ``timeout_s`` and then raises
  BufferPoolExhaustedError (a caller that forgets ``release`` fails loudly instead of leaking).
* ``dynamic``: fresh arrays for every batch (baseline for memory benchmarks; simplest to reason
  about when batches are kept around).
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from vla_accel.errors import VlaAccelError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.spec import ModelSpec

MEMORY_STRATEGIES = ("static", "pool", "dynamic")

BufferSet = dict[str, np.ndarray]


class BufferPoolExhaustedError(VlaAccelError):
    """Every pooled buffer set is checked out: a batch was not released, or the pool is too small."""

    reason = "pool_exhausted"


def input_shapes(spec: "ModelSpec", batch: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Input name -> (shape with batch dimension, dtype), in spec.input_names order."""
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for cam in spec.cameras:
        out[cam.input] = ((batch, *cam.shape), np.dtype(cam.dtype))
    ins = spec.instruction
    if ins.enabled:
        out[ins.input] = ((batch, ins.max_tokens), np.dtype(ins.ids_dtype))
        out[ins.mask_input] = ((batch, ins.max_tokens), np.dtype(ins.mask_dtype))
    if spec.state is not None:
        out[spec.state.input] = ((batch, spec.state.dims), np.dtype(np.float32))
    return out


def allocate_inputs(spec: "ModelSpec", batch: int) -> BufferSet:
    """One zero-filled buffer set for ``batch`` observations."""
    return {name: np.zeros(shape, dtype=dtype) for name, (shape, dtype) in input_shapes(spec, batch).items()}


def buffer_set_bytes(buffers: BufferSet) -> int:
    return int(sum(a.nbytes for a in buffers.values()))


class BufferStrategy:
    """Hands out buffer sets; ``acquire(batch)`` -> (set with at least ``batch`` rows, release callable)."""

    name = ""

    def acquire(self, batch: int) -> tuple[BufferSet, Callable[[], None]]:
        raise NotImplementedError

    @property
    def allocated_bytes(self) -> int:
        """Bytes held by preallocated sets (0 for dynamic)."""
        return 0


def _noop() -> None:
    """Release of a static or dynamic set: nothing to give back."""


class StaticBuffers(BufferStrategy):
    name = "static"

    def __init__(self, spec: "ModelSpec", max_batch: int):
        self.buffers = allocate_inputs(spec, max_batch)

    def acquire(self, batch: int) -> tuple[BufferSet, Callable[[], None]]:
        return self.buffers, _noop

    @property
    def allocated_bytes(self) -> int:
        return buffer_set_bytes(self.buffers)


class DynamicBuffers(BufferStrategy):
    name = "dynamic"

    def __init__(self, spec: "ModelSpec", max_batch: int):
        self.spec = spec

    def acquire(self, batch: int) -> tuple[BufferSet, Callable[[], None]]:
        return allocate_inputs(self.spec, max(batch, 1)), _noop


class BufferPool(BufferStrategy):
    """``size`` preallocated sets; thread-safe check-out / return."""

    name = "pool"

    def __init__(self, spec: "ModelSpec", max_batch: int, size: int = 2, timeout_s: float = 5.0):
        if size < 1:
            raise ValueError(f"pool size must be >= 1, got {size}")
        self.size = int(size)
        self.timeout_s = float(timeout_s)
        self._sets = [allocate_inputs(spec, max_batch) for _ in range(self.size)]
        self._free = list(range(self.size))
        self._cond = threading.Condition()

    @property
    def free_count(self) -> int:
        with self._cond:
            return len(self._free)

    def acquire(self, batch: int) -> tuple[BufferSet, Callable[[], None]]:
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            while not self._free:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BufferPoolExhaustedError(
                        f"all {self.size} pooled input buffer sets are in use for {self.timeout_s:g} s: "
                        "release() each PreparedBatch after inference, or use a larger pool_size"
                    )
                self._cond.wait(remaining)
            index = self._free.pop()
        released = [False]

        def release() -> None:
            with self._cond:
                if released[0]:
                    return  # idempotent: a double release must not hand one set out twice
                released[0] = True
                self._free.append(index)
                self._cond.notify()

        return self._sets[index], release

    @property
    def allocated_bytes(self) -> int:
        return sum(buffer_set_bytes(s) for s in self._sets)


def make_strategy(memory: str, spec: "ModelSpec", max_batch: int, pool_size: int = 2) -> BufferStrategy:
    if memory == "static":
        return StaticBuffers(spec, max_batch)
    if memory == "pool":
        return BufferPool(spec, max_batch, size=pool_size)
    if memory == "dynamic":
        return DynamicBuffers(spec, max_batch)
    raise ValueError(f"memory strategy must be one of {', '.join(MEMORY_STRATEGIES)}; got {memory!r}")
