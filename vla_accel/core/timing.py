"""The one way calls are timed: the session's CPU baseline, calibration, ``vla-accel bench``, the
GPU bench and the replay's bare timing all use these, so their figures mean the same thing.

Samples are milliseconds of ``time.perf_counter`` around one call. ``time_interleaved`` takes
several callables in turns (call by call, or ``block`` calls per turn after one untimed call that
re-warms the caches the others evicted), so load from other processes falls on all of them alike:
ratios measured that way are what the docs quote.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence


def time_call_ms(fn: Callable[[], Any]) -> float:
    """One call, timed (ms)."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_calls(fn: Callable[[], Any], *, min_calls: int = 1, max_calls: int | None = None, seconds: float = 0.0,
               warmup: int = 0) -> list[float]:
    """``warmup`` untimed calls, then timed calls until at least ``min_calls`` were made and
    ``seconds`` have passed, never more than ``max_calls``."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    started = time.perf_counter()
    while max_calls is None or len(samples) < max_calls:
        if len(samples) >= min_calls and time.perf_counter() - started >= seconds:
            break
        samples.append(time_call_ms(fn))
    return samples


def time_interleaved(fns: Sequence[Callable[[], Any]], *, calls: int = 0, seconds: float = 0.0, block: int = 1,
                     rotate: bool = True, min_rounds: int = 3, budget_s: float | None = None, min_calls: int = 0,
                     samples: Sequence[list[float]] | None = None,
                     after: Callable[[int], Any] | None = None) -> list[list[float]]:
    """Turns over ``fns``: each turn makes one untimed call when ``block`` > 1, then ``block`` timed
    calls. With ``rotate`` the first callable changes each round (none always runs right after
    another). Stops once every callable has ``calls`` samples, or (``calls`` = 0) after ``seconds``
    per callable and at least ``min_rounds`` rounds. With ``calls``, ``budget_s`` ends it early once
    that many seconds have passed and every callable has ``min_calls`` samples (a loaded machine).
    ``samples``: lists to append to (one per callable); returned. ``after(i)`` runs after each timed
    call of ``fns[i]``, outside the timing (e.g. to read the per-stage times the call left behind)."""
    out = [list() for _ in fns] if samples is None else list(samples)
    if not fns:
        return out
    order = list(range(len(fns)))
    total_s = seconds * len(fns)
    started = time.perf_counter()
    rounds = 0
    while True:
        shift = rounds % len(order) if rotate else 0
        for i in order[shift:] + order[:shift]:
            if block > 1:
                fns[i]()
            take = block if not calls else min(block, calls - len(out[i]))
            for _ in range(take):
                out[i].append(time_call_ms(fns[i]))
                if after is not None:
                    after(i)
        rounds += 1
        if calls:
            if all(len(s) >= calls for s in out):
                return out
            if budget_s is not None and time.perf_counter() - started > budget_s and all(
                    len(s) >= min_calls for s in out):
                return out
        elif time.perf_counter() - started >= total_s and rounds >= min_rounds:
            return out
