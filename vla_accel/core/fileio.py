"""Atomic file writes for every cache the package keeps (weights, exports, engines, calibration,
compiled OpenCL programs): a process killed mid-write never leaves a half-written file under the
final name, so the next start either finds the complete file or none.
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a fresh, not yet existing path in ``path``'s folder for the caller (or a library) to
    write; when the block ends without an exception it is renamed onto ``path`` (atomic on POSIX);
    whatever happens, no temporary file is left behind. ``suffix`` keeps writers that check the
    extension (e.g. ``.tflite``) happy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
