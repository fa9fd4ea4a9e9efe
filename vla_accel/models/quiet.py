"""Run a noisy third-party call (the ONNX exporter) with its chatter in a log file, not on the console.

The torch.onnx exporter prints its internal steps with print() and logs INFO lines under ``torch.onnx``
(shown wherever the root logger is at INFO, as in the node). Inside ``quiet_call`` both the process's
stdout / stderr file descriptors (C++ output too) and Python's streams go to ``log_path``, the
``torch.onnx`` / ``onnxscript`` loggers' records go to the same file (not to the console's handlers), and the log file's path is
named in any error, so nothing is lost: it is one place away instead of on the user's terminal.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def output_to(log_path: Path) -> Iterator[None]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    with open(log_path, "a", encoding="utf-8") as log:
        # The exporter's log records: into the file, not up to the console's handlers.
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        saved = {}
        for name in NOISY_LOGGERS:
            logger = logging.getLogger(name)
            saved[name] = (logger.level, logger.propagate, logger.handlers[:])
            logger.setLevel(logging.INFO)
            logger.propagate = False
            logger.handlers = [handler]  # torch installs its own stderr handlers on some of these
        saved_fds = []
        try:
            for fd in (1, 2):
                saved_fds.append((fd, os.dup(fd)))
                os.dup2(log.fileno(), fd)
        except OSError:  # no real descriptors (an embedding host): Python streams only
            pass
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            log.flush()
            for fd, copy in saved_fds:
                os.dup2(copy, fd)
                os.close(copy)
            for name, (level, propagate, handlers) in saved.items():
                logger = logging.getLogger(name)
                logger.handlers = handlers
                logger.setLevel(level)
                logger.propagate = propagate


def quiet_call(log_path: Path, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with its console output in ``log_path``; errors name the log."""
    try:
        with output_to(log_path):
            return fn(*args, **kwargs)
    except Exception as exc:
        exc.add_note(f"exporter output: {log_path}")
        raise
