"""Deterministic reference weights: generated from a seed, saved as safetensors, verified on load.

No download is involved: each tensor is drawn from its own numpy PCG64 stream seeded by
(architecture seed, tensor name), so the values do not depend on generation order or on torch's RNG,
and the same seed gives identical tensors on every machine with the same numpy (the safetensors
header may order its metadata differently, so compare tensor digests, not file bytes).

The file's metadata records the network name, the architecture digest and a SHA-256 over every
tensor (``tensor_digest``). Loading checks names, shapes and dtypes against the architecture and
re-computes the digest, so a truncated or bit-flipped file is reported (ModelFileError naming the
file and how to regenerate it) instead of silently producing wrong actions.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from vla_accel.core.fileio import atomic_path
from vla_accel.errors import ModelFileError
from vla_accel.models.architecture import NETWORK_NAME, NetworkConfig, parameter_shapes

_NORM_SUFFIXES = (".norm1.weight", ".norm2.weight")
# Token sources that enter the residual stream straight from a table (instruction embedding and
# positions, action queries) or from a small projection (robot state) are drawn at a scale that gives
# their tokens about the RMS of the image-patch tokens (~0.5). fp32 does not care (every block starts
# with a LayerNorm), but a per-tensor int8 range over the concatenated tokens does: at std 0.02 the
# instruction, state and query tokens were 2-4 quantisation steps wide next to the patches.
TOKEN_SOURCE_STD = 0.5
_TOKEN_TABLES = ("text.embedding.weight", "text.position", "action_queries")
_STATE_PROJECTION = "state_proj.weight"
STATE_PROJECTION_STD = 0.25  # x ~0.5 std states over 8 inputs -> ~0.35 RMS


def _tensor_seed(seed: int, name: str) -> np.random.SeedSequence:
    name_key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.SeedSequence([seed, name_key])


def generate_weights(config: NetworkConfig) -> dict[str, np.ndarray]:
    """Random weights with trained-like statistics: N(0, std) matrices, small non-zero biases
    (so a backend that drops a bias fails parity), layer-norm gains near 1, token tables and the
    state projection at the scales above."""
    std = config.weight_std
    out: dict[str, np.ndarray] = {}
    for name, shape in parameter_shapes(config).items():
        rng = np.random.Generator(np.random.PCG64(_tensor_seed(config.seed, name)))
        values = rng.standard_normal(shape, dtype=np.float32)
        if name.endswith(_NORM_SUFFIXES) or name == "norm.weight":
            values = 1.0 + 0.1 * values
        elif name.endswith(".bias"):
            values = 0.5 * std * values
        elif name.endswith(("mlp.fc2.weight", "attn.proj.weight")):
            # GPT-2 style: residual branches scaled by depth so the stream stays O(1).
            values = (std / np.sqrt(2.0 * config.depth)) * values
        elif name in _TOKEN_TABLES:
            values = TOKEN_SOURCE_STD * values
        elif name == _STATE_PROJECTION:
            values = STATE_PROJECTION_STD * values
        else:
            values = std * values
        out[name] = np.ascontiguousarray(values, dtype=np.float32)
    return out


def tensor_digest(tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of every tensor, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def save_weights(path: Path, tensors: dict[str, np.ndarray], config: NetworkConfig) -> str:
    """Write atomically (temp file in the same folder, then rename); returns the tensor digest."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = tensor_digest(tensors)
    metadata = {
        "network": NETWORK_NAME,
        "config_digest": config.digest(),
        "tensor_digest": digest,
        "seed": str(config.seed),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return digest


def read_metadata(path: Path) -> dict[str, str]:
    """The safetensors header metadata (cheap: reads only the header)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"weights file {path} is unreadable or corrupt: {exc}", reason="corrupt_weights") from exc


def load_weights(path: Path, config: NetworkConfig, *, regenerate_hint: str = "") -> tuple[dict[str, np.ndarray], str]:
    """Load and verify a weights file against the architecture; returns (tensors, tensor digest)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    hint = f" {regenerate_hint}" if regenerate_hint else ""
    if not path.is_file():
        raise ModelFileError(f"weights file not found: {path}.{hint}", reason="missing_weights")
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(
            f"weights file {path} is unreadable or corrupt ({exc}).{hint}", reason="corrupt_weights"
        ) from exc
    expected = parameter_shapes(config)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ModelFileError(
            f"weights file {path} does not match the architecture: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}.{hint}",
            reason="weights_mismatch",
        )
    for name, shape in expected.items():
        arr = tensors[name]
        if tuple(arr.shape) != shape or arr.dtype != np.float32:
            raise ModelFileError(
                f"weights file {path}: tensor '{name}' is {arr.dtype}{tuple(arr.shape)}, the architecture "
                f"needs float32{shape}.{hint}",
                reason="weights_mismatch",
            )
    digest = tensor_digest(tensors)
    recorded = metadata.get("tensor_digest")
    if recorded is not None and recorded != digest:
        raise ModelFileError(
            f"weights file {path} is corrupt: its tensors do not match the digest recorded when it was "
            f"written.{hint}",
            reason="corrupt_weights",
        )
    return tensors, digest
