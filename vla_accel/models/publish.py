"""Where finished exports land: the ONNX opset every exporter targets, and the atomic move of a
completed export folder into the cache (shared by the single-graph and the program exporters)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

ONNX_OPSET = 18


def publish_directory(tmp_dir: Path, final_dir: Path) -> Path:
    """Atomically move a completed export folder into place. If another process finished the same
    export first, keep theirs (identical content) and discard ours."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp_dir, final_dir)
    except OSError:
        if not final_dir.is_dir():
            raise
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return final_dir
