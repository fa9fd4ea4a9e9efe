"""Progress of a model export: stage messages with elapsed seconds on stderr.

Shared by every exporter (ONNX, OpenVINO, TFLite) so their messages look alike.
"""
from __future__ import annotations

import sys
import time


class ExportProgress:
    """Stage messages with elapsed seconds on stderr (silent when disabled)."""

    def __init__(self, label: str, enabled: bool = True):
        self.label = label
        self.enabled = enabled
        self.start = time.perf_counter()

    def stage(self, message: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.start
            print(f"[vla-accel export {self.label}] {elapsed:6.1f}s  {message}", file=sys.stderr, flush=True)
