"""What travels between a robot and the policy server (KServe v2 tensors; no pickle anywhere):
the tensor names, datatypes and Triton model names shared by the ``triton`` backend and
``vla_accel.serve`` (pure: numpy only).

Two Triton models are generated per policy:

``<name>`` (the *policy* model): what a robot has. One UINT8 input per camera named
    ``image_<camera>`` holding raw HxWx3 RGB frames at the camera's own resolution, ``instruction``
    (BYTES, UTF-8 text) and ``state`` (FP32, when the spec has one). The server preprocesses, runs
    its backend and postprocesses: ``actions`` (FP32, steps x dims) are un-normalised and clipped.
``<name>_graph`` (the *graph* model): the spec's own graph inputs (preprocessed tensors) in, the
    network's raw ``actions`` out, exactly what every local backend takes and returns. The
    ``triton`` backend uses it, so it can stand in a FallbackChain next to a local backend.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.spec import ModelSpec

GRAPH_SUFFIX = "_graph"
INSTRUCTION = "instruction"
STATE = "state"
ACTIONS = "actions"
LEVELS = ("policy", "graph")

# numpy dtype -> (KServe v2 datatype, Triton config data_type)
DTYPES = {
    np.dtype(np.uint8): ("UINT8", "TYPE_UINT8"),
    np.dtype(np.int32): ("INT32", "TYPE_INT32"),
    np.dtype(np.int64): ("INT64", "TYPE_INT64"),
    np.dtype(np.float16): ("FP16", "TYPE_FP16"),
    np.dtype(np.float32): ("FP32", "TYPE_FP32"),
}


def triton_name(model_name: str) -> str:
    """A Triton model name for a vla_accel model name or spec path (letters, digits, '-', '_')."""
    stem = re.sub(r"\.ya?ml$", "", str(model_name).rstrip("/").split("/")[-1])
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem) or "policy"


def camera_input(camera_name: str) -> str:
    return f"image_{camera_name}"


def datatype(dtype: "np.dtype | str") -> str:
    """KServe v2 datatype of a numpy dtype."""
    return DTYPES[np.dtype(dtype)][0]


def policy_signature(spec: "ModelSpec") -> dict[str, tuple[tuple[int, ...], str]]:
    """Policy-model inputs: name -> (per-sample dims, v2 datatype); -1 = any size."""
    sig: dict[str, tuple[tuple[int, ...], str]] = {}
    for cam in spec.cameras:
        sig[camera_input(cam.name)] = ((-1, -1, 3), "UINT8")
    sig[INSTRUCTION] = ((1,), "BYTES")
    if spec.state is not None:
        sig[STATE] = ((spec.state.dims,), "FP32")
    return sig


def graph_signature(spec: "ModelSpec") -> dict[str, tuple[tuple[int, ...], str]]:
    """Graph-model inputs: the spec's graph inputs, name -> (per-sample dims, v2 datatype)."""
    from vla_accel.core.spec import input_signature

    return {name: (tuple(shape), datatype(dtype)) for name, (shape, dtype) in input_signature(spec).items()}


def output_dims(spec: "ModelSpec") -> tuple[int, int]:
    return (spec.action.steps, spec.action.dims)
