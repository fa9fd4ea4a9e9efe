"""Optional dependencies: is a package importable, without importing it.

Heavy runtimes (torch, onnxruntime, openvino, tensorrt, LiteRT, pyopencl, tritonclient) and optional
helpers (cv_bridge, simplejpeg, rosbags) are looked up here and imported only where they are used,
so a probe or a listing never pays their import cost.
"""
from __future__ import annotations

import importlib.util


def module_available(name: str) -> bool:
    """True if ``name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
