"""Rate-limited logging: at most one line per key per interval, with a count of what was held back.

A camera that sends a malformed frame at 30 Hz must not flood the log with 30 identical lines a
second, yet the operator must still learn that it keeps happening and how often. So the first
message for a key is logged at once; later ones within ``interval_s`` are only counted, and the
next line logged for that key says how many were suppressed since the previous one.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from vla_accel.errors import ConfigError


class RateLimitedLogger:
    """Wraps a ``logging.Logger``; ``warning(key, msg, *args)`` logs at most once per key per interval.

    ``key`` groups messages that are "the same problem" (e.g. ``"drop:truncated:cam0"``); the text
    itself may differ between calls (the latest text is the one logged). Thread-safe.
    """

    def __init__(
        self,
        logger: logging.Logger | str,
        interval_s: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        if interval_s < 0:
            raise ConfigError(f"interval_s must be >= 0, got {interval_s}")
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.interval_s = float(interval_s)
        self._clock = clock
        self._lock = threading.Lock()
        # key -> [time of the last emitted line, messages suppressed since then]
        self._state: dict[str, list[float]] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` was logged less than interval_s ago.

        Returns True when a line was emitted, False when the message was counted as suppressed.
        """
        now = self._clock()
        with self._lock:
            state = self._state.get(key)
            if state is not None and now - state[0] < self.interval_s:
                state[1] += 1
                return False
            suppressed = int(state[1]) if state is not None else 0
            if state is None:
                self._state[key] = [now, 0]
            else:
                state[0] = now
                state[1] = 0
        if suppressed:
            msg = f"{msg} (suppressed {suppressed} similar message{'s' if suppressed != 1 else ''} " \
                  f"in the last {self.interval_s:g} s)"
        self.logger.log(level, msg, *args)
        return True

    def debug(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.DEBUG, key, msg, *args)

    def info(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, key, msg, *args)

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.ERROR, key, msg, *args)

    def suppressed(self, key: str) -> int:
        """Messages for ``key`` held back since its last emitted line."""
        with self._lock:
            state = self._state.get(key)
            return int(state[1]) if state is not None else 0
