"""Lazy backend registry: name -> "module:Class". A backend module is imported only when chosen,
so TensorRT, OpenVINO, LiteRT or pyopencl never load unless asked for.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from vla_accel.errors import UnknownBackendError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.backends.base import Availability, Backend, BackendOptions
    from vla_accel.models.bundle import ModelBundle

# launch value -> implementation. Keep this table the single source of backend names.
_BACKENDS: dict[str, str] = {
    "torch": "vla_accel.backends.torch_backend:TorchBackend",
    "onnxruntime": "vla_accel.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "openvino": "vla_accel.backends.openvino_backend:OpenVINOBackend",
    "cuda": "vla_accel.backends.cuda_backend:CudaBackend",
    "tensorrt": "vla_accel.backends.tensorrt_backend:TensorRTBackend",
    "tflite": "vla_accel.backends.litert_backend:TFLiteBackend",
    "edgetpu": "vla_accel.backends.litert_backend:EdgeTPUBackend",
    "litert-gpu": "vla_accel.backends.litert_backend:LiteRTGpuBackend",
    "hexagon": "vla_accel.backends.litert_backend:HexagonBackend",
    "qnn": "vla_accel.backends.litert_backend:QnnBackend",
    "qnn-ort": "vla_accel.backends.qnn_ort_backend:QnnOrtBackend",
    "external": "vla_accel.backends.litert_backend:ExternalDelegateBackend",
    "npu": "vla_accel.backends.npu_backend:NpuBackend",
    "opencl": "vla_accel.backends.opencl_backend:OpenCLBackend",
    "triton": "vla_accel.backends.triton_backend:TritonBackend",
}
# Friendly names for the same implementations.
ALIASES: dict[str, str] = {"cpu": "torch", "ort": "onnxruntime", "trt": "tensorrt", "coral": "edgetpu"}


def list_backends() -> list[str]:
    """Every backend name this build knows (whether or not it can run here)."""
    return list(_BACKENDS)


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in _BACKENDS:
        raise UnknownBackendError(name, list_backends() + sorted(ALIASES))
    return key


def backend_class(name: str) -> type["Backend"]:
    module_name, _, class_name = _BACKENDS[canonical_name(name)].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)


def is_available(name: str) -> "Availability":
    return backend_class(name).probe()


def create_backend(name: str, model: "ModelBundle", options: "BackendOptions | None" = None) -> "Backend":
    """Construct (not load) a backend by name; unknown names fail listing the valid ones."""
    return backend_class(name)(model, options)


# The CPU baseline every speedup figure divides by (S = T_baseline / T_backend).
BASELINE_BACKEND = "torch"


def split_backend_spec(entry: str) -> tuple[str, str]:
    """``NAME[:PRECISION]`` as the CLI takes backends: ``"onnxruntime"`` -> ("onnxruntime", ""),
    ``"cuda:fp16"`` -> ("cuda", "fp16"). The name is not checked here (``canonical_name`` does)."""
    name, _, precision = entry.strip().partition(":")
    return name.strip(), precision.strip()
