"""Hyperparameters of the reference VLA network, read from a spec's ``architecture`` mapping.

Torch-free on purpose: parameter names and shapes, the parameter count and the analytic FLOP count
are needed by ``vla-accel info``, by weight generation and by other backends (the OpenCL kernels
re-implement the same network from these names), none of which should pay for importing torch.

The network (see ``network.py`` for the torch module) is:

* per camera: a conv patch embedding (kernel = stride = ``patch_size``) plus learned positions;
* the instruction: token embedding (a gather on the table) plus learned positions; padded tokens
  (``token_mask`` 0) are excluded from attention as keys, their rows are not zeroed;
* optional robot state: one token from a linear projection;
* ``steps`` learned action-query tokens;
* ``depth`` pre-LN transformer blocks over the concatenation (full attention, padded instruction
  tokens masked out as keys with an additive bias ``MASK_BIAS``), GELU (tanh form) MLP;
* a final layer norm and a linear head on the action-query tokens, then tanh: the output is the
  normalised action chunk (B, steps, dims) in [-1, 1].
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from vla_accel.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.spec import ModelSpec

NETWORK_NAME = "reference_vla"
# Revision of the network function and of weight generation: part of the weights file name and of
# every export's content hash, so a change to either never reuses a stale file.
# 2: int8-friendly design (padding by masking only, moderate mask bias, gather lookup, written-out
#    LayerNorm, comparable token scales); see network.py.
NETWORK_REVISION = 2
# Additive attention bias for padded keys. exp(-20) = 2e-9: even 64 padded keys leak under 2e-7 of
# the softmax mass, below fp32 rounding of its sum, so fp32 results equal exact masking. Moderate on
# purpose: the biased scores share one per-tensor int8 range with the real scores (|s| ~ 1-10), and
# -1e4 there would leave the real scores a single quantisation step. Finite in fp16/bf16 (-inf or
# -1e9 turn into NaN under some converters' fp16 rewrites).
MASK_BIAS = -20.0

_ALLOWED_KEYS = {
    "network",
    "seed",
    "patch_size",
    "hidden_dim",
    "depth",
    "heads",
    "mlp_ratio",
    "layer_norm_eps",
    "weight_std",
}


@dataclass(frozen=True)
class CameraGeometry:
    name: str
    channels: int
    height: int
    width: int
    patch_size: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.height // self.patch_size, self.width // self.patch_size

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid
        return rows * cols


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to build the reference network; derived from a ModelSpec."""

    cameras: tuple[CameraGeometry, ...]
    max_tokens: int
    vocab_size: int
    state_dims: int  # 0 = no state input
    action_steps: int
    action_dims: int
    hidden_dim: int
    depth: int
    heads: int
    mlp_ratio: int
    layer_norm_eps: float
    weight_std: float
    seed: int

    @property
    def mlp_dim(self) -> int:
        return self.hidden_dim * self.mlp_ratio

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.heads

    @property
    def num_image_tokens(self) -> int:
        return sum(c.num_patches for c in self.cameras)

    @property
    def num_tokens(self) -> int:
        """Sequence length of the fusion transformer."""
        return self.num_image_tokens + self.max_tokens + (1 if self.state_dims else 0) + self.action_steps

    def digest(self) -> str:
        """Short hash of the architecture (names the generated-weights file)."""
        blob = json.dumps({**asdict(self), "network_revision": NETWORK_REVISION}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def from_spec(cls, spec: "ModelSpec") -> "NetworkConfig":
        arch = dict(spec.architecture or {})
        unknown = set(arch) - _ALLOWED_KEYS
        if unknown:
            raise SpecError(
                f"model '{spec.name}': unknown architecture keys {sorted(unknown)}; "
                f"allowed: {sorted(_ALLOWED_KEYS)}"
            )
        network = arch.get("network", NETWORK_NAME)
        if network != NETWORK_NAME:
            raise SpecError(
                f"model '{spec.name}': architecture.network must be '{NETWORK_NAME}' for the built-in "
                f"torch network, got {network!r}"
            )

        def positive_int(key: str, default: int) -> int:
            value = arch.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise SpecError(f"model '{spec.name}': architecture.{key} must be a positive integer, got {value!r}")
            return value

        def positive_float(key: str, default: float) -> float:
            value = arch.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise SpecError(f"model '{spec.name}': architecture.{key} must be a positive number, got {value!r}")
            return float(value)

        patch = positive_int("patch_size", 16)
        hidden = positive_int("hidden_dim", 256)
        heads = positive_int("heads", 4)
        if hidden % heads:
            raise SpecError(f"model '{spec.name}': hidden_dim {hidden} must be divisible by heads {heads}")
        seed = arch.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SpecError(f"model '{spec.name}': architecture.seed must be a non-negative integer, got {seed!r}")
        cameras = []
        for cam in spec.cameras:
            if cam.height % patch or cam.width % patch:
                raise SpecError(
                    f"model '{spec.name}': camera '{cam.name}' size {cam.height}x{cam.width} must be a "
                    f"multiple of patch_size {patch}"
                )
            if cam.layout != "NCHW" or cam.dtype != "float32":
                raise SpecError(
                    f"model '{spec.name}': the reference network reads NCHW float32 images; camera "
                    f"'{cam.name}' is {cam.layout} {cam.dtype}"
                )
            cameras.append(CameraGeometry(cam.name, 3, cam.height, cam.width, patch))
        return cls(
            cameras=tuple(cameras),
            max_tokens=spec.instruction.max_tokens,
            vocab_size=spec.instruction.vocab_size,
            state_dims=spec.state.dims if spec.state is not None else 0,
            action_steps=spec.action.steps,
            action_dims=spec.action.dims,
            hidden_dim=hidden,
            depth=positive_int("depth", 4),
            heads=heads,
            mlp_ratio=positive_int("mlp_ratio", 4),
            layer_norm_eps=positive_float("layer_norm_eps", 1e-6),
            weight_std=positive_float("weight_std", 0.02),
            seed=seed,
        )


def parameter_shapes(config: NetworkConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of the reference network: state-dict name -> shape (the weights contract)."""
    d, h = config.hidden_dim, config.mlp_dim
    shapes: dict[str, tuple[int, ...]] = {}
    for i, cam in enumerate(config.cameras):
        shapes[f"cameras.{i}.patch.weight"] = (d, cam.channels, cam.patch_size, cam.patch_size)
        shapes[f"cameras.{i}.patch.bias"] = (d,)
        shapes[f"cameras.{i}.position"] = (1, cam.num_patches, d)
    shapes["text.embedding.weight"] = (config.vocab_size, d)
    shapes["text.position"] = (1, config.max_tokens, d)
    if config.state_dims:
        shapes["state_proj.weight"] = (d, config.state_dims)
        shapes["state_proj.bias"] = (d,)
    shapes["action_queries"] = (1, config.action_steps, d)
    for layer in range(config.depth):
        p = f"blocks.{layer}."
        shapes[p + "norm1.weight"] = (d,)
        shapes[p + "norm1.bias"] = (d,)
        shapes[p + "attn.qkv.weight"] = (3 * d, d)
        shapes[p + "attn.qkv.bias"] = (3 * d,)
        shapes[p + "attn.proj.weight"] = (d, d)
        shapes[p + "attn.proj.bias"] = (d,)
        shapes[p + "norm2.weight"] = (d,)
        shapes[p + "norm2.bias"] = (d,)
        shapes[p + "mlp.fc1.weight"] = (h, d)
        shapes[p + "mlp.fc1.bias"] = (h,)
        shapes[p + "mlp.fc2.weight"] = (d, h)
        shapes[p + "mlp.fc2.bias"] = (d,)
    shapes["norm.weight"] = (d,)
    shapes["norm.bias"] = (d,)
    shapes["head.weight"] = (config.action_dims, d)
    shapes["head.bias"] = (config.action_dims,)
    return shapes


def count_parameters(config: NetworkConfig) -> int:
    """Number of scalar parameters (analytic, from the shapes above)."""
    total = 0
    for shape in parameter_shapes(config).values():
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def flops_breakdown(config: NetworkConfig, batch: int = 1) -> dict[str, int]:
    """FLOPs per inference by part, counting 2 x multiply-accumulates of every conv / matmul,
    including both attention products (QK^T and AV). Element-wise work (layer norm, softmax, GELU,
    bias adds, masking, tanh) and embedding look-ups are not counted: they are well under 2% here."""
    d, h, n = config.hidden_dim, config.mlp_dim, config.num_tokens
    out = {
        "patch_embed": sum(2 * c.num_patches * c.channels * c.patch_size**2 * d for c in config.cameras),
        "state_proj": 2 * config.state_dims * d,
        "attention_linear": config.depth * (2 * n * d * 3 * d + 2 * n * d * d),
        "attention_scores": config.depth * (2 * n * n * d * 2),
        "mlp": config.depth * (2 * n * d * h * 2),
        "head": 2 * config.action_steps * d * config.action_dims,
    }
    return {k: v * batch for k, v in out.items()}


def flops_per_inference(spec_or_config: "ModelSpec | NetworkConfig", batch: int = 1) -> int:
    """Total FLOPs for one forward pass at ``batch`` (see ``flops_breakdown`` for what counts)."""
    config = spec_or_config if isinstance(spec_or_config, NetworkConfig) else NetworkConfig.from_spec(spec_or_config)
    return sum(flops_breakdown(config, batch).values())


def describe(config: NetworkConfig) -> dict[str, Any]:
    """A plain summary for ``vla-accel info`` and benchmark reports."""
    return {
        "hidden_dim": config.hidden_dim,
        "depth": config.depth,
        "heads": config.heads,
        "mlp_dim": config.mlp_dim,
        "tokens": config.num_tokens,
        "image_tokens": config.num_image_tokens,
        "parameters": count_parameters(config),
        "gflops_batch1": flops_per_inference(config, 1) / 1e9,
    }
