"""Hyperparameters of the reference policy programs (torch-free), read from a spec's ``architecture``.

Two networks, both built from the reference network's blocks (``network.py``):

* ``flow_policy`` (flow matching and diffusion programs), pi0-shaped: a **prefix** graph runs the
  vision-language backbone (patch embeddings, token embeddings, ``depth`` transformer blocks) once
  per observation and projects its features into one key/value pair per action-expert layer
  (``prefix_keys`` / ``prefix_values``: (B, expert_depth, N, expert_dim)) plus the key padding bias
  (``prefix_bias``: (B, N), 0 or MASK_BIAS); the **step** graph is the action expert: the noisy
  chunk (B, steps, dims), the time and the robot state become tokens that attend to the prefix
  cache and to each other, and it returns the velocity (flow) or the noise estimate (diffusion);
* ``ar_policy`` (autoregressive): the prefix graph runs the backbone and a first decoder pass from a
  begin token, returning the first token's logits and the decoder's KV cache (``present_keys`` /
  ``present_values``); the next-token graph embeds one token, attends to the past cache and returns
  the next logits and the cache grown by one position.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from vla_accel.errors import SpecError
from vla_accel.models.architecture import CameraGeometry, NetworkConfig

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.spec import ModelSpec

PROGRAM_NETWORKS = ("flow_policy", "ar_policy")
_KEYS = {"network", "seed", "patch_size", "hidden_dim", "depth", "heads", "mlp_ratio", "layer_norm_eps",
         "weight_std", "expert_dim", "expert_depth", "expert_heads", "vocab_bins", "expert_norm"}
# the action expert's LayerNorms: torch's (converters emit SQUARED_DIFFERENCE) or written out like the
# backbone's (MEAN / SUB / MUL / RSQRT: every integer NPU compiler and LiteRT's 16-bit kernels map them)
EXPERT_NORMS = ("torch", "written_out")


@dataclass(frozen=True)
class PolicyConfig:
    network: str
    backbone: NetworkConfig  # the vision-language prefix (its action_* fields are unused)
    expert: NetworkConfig  # only hidden_dim / heads / mlp_ratio / eps matter: the action expert's blocks
    expert_depth: int
    language: bool
    state_dims: int
    action_steps: int
    action_dims: int
    time_scale: float  # t is multiplied by this before the sinusoidal embedding
    # > 0: the step graph's time input is the runtime's (B, time_features) sinusoidal features of t
    # (the spec's program time_features), not t: no trigonometry in the graph; 0: raw t, embedded in it
    time_features: int
    expert_norm: str  # one of EXPERT_NORMS
    vocab_bins: int  # ar_policy: output vocabulary (token ids 0 .. vocab_bins - 1)
    decode_tokens: int  # ar_policy: tokens per chunk (steps x dims)
    seed: int
    weight_std: float

    @property
    def prefix_tokens(self) -> int:
        return self.backbone.num_image_tokens + (self.backbone.max_tokens if self.language else 0) + (
            1 if self.network == "ar_policy" and self.state_dims else 0)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_spec(cls, spec: "ModelSpec") -> "PolicyConfig":
        arch = dict(spec.architecture or {})
        unknown = set(arch) - _KEYS
        if unknown:
            raise SpecError(f"model '{spec.name}': unknown architecture keys {sorted(unknown)}; allowed {sorted(_KEYS)}")
        network = arch.get("network")
        if network not in PROGRAM_NETWORKS:
            raise SpecError(f"model '{spec.name}': architecture.network must be one of {PROGRAM_NETWORKS} for a "
                            f"{spec.program.kind} reference program, got {network!r}")

        def pos(key: str, default: int) -> int:
            value = arch.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise SpecError(f"model '{spec.name}': architecture.{key} must be a positive integer, got {value!r}")
            return value

        patch = pos("patch_size", 16)
        hidden, heads = pos("hidden_dim", 256), pos("heads", 4)
        expert_dim, expert_heads = pos("expert_dim", 128), pos("expert_heads", 4)
        if hidden % heads or expert_dim % expert_heads:
            raise SpecError(f"model '{spec.name}': hidden_dim / expert_dim must divide by their heads")
        eps = float(arch.get("layer_norm_eps", 1e-6))
        std = float(arch.get("weight_std", 0.02))
        seed = arch.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SpecError(f"model '{spec.name}': architecture.seed must be a non-negative integer")
        cams = []
        for cam in spec.cameras:
            if cam.height % patch or cam.width % patch or cam.layout != "NCHW" or cam.dtype != "float32":
                raise SpecError(f"model '{spec.name}': camera '{cam.name}' must be NCHW float32 with a size "
                                f"that is a multiple of patch_size {patch}")
            cams.append(CameraGeometry(cam.name, 3, cam.height, cam.width, patch))
        ins = spec.instruction

        def net(d: int, h: int, depth: int) -> NetworkConfig:
            return NetworkConfig(cameras=tuple(cams), max_tokens=ins.max_tokens, vocab_size=ins.vocab_size,
                                 state_dims=0, action_steps=0, action_dims=spec.action.dims, hidden_dim=d,
                                 depth=depth, heads=h, mlp_ratio=pos("mlp_ratio", 4), layer_norm_eps=eps,
                                 weight_std=std, seed=seed)

        kind = spec.program.kind
        features = spec.program.step_time_features
        expert_norm = arch.get("expert_norm", "torch")
        if expert_norm not in EXPERT_NORMS:
            raise SpecError(f"model '{spec.name}': architecture.expert_norm must be one of {EXPERT_NORMS}, "
                            f"got {expert_norm!r}")
        return cls(
            network=network,
            backbone=net(hidden, heads, pos("depth", 4)),
            expert=net(expert_dim, expert_heads, pos("expert_depth", 4)),
            expert_depth=pos("expert_depth", 4),
            language=ins.enabled,
            state_dims=spec.state.dims if spec.state is not None else 0,
            action_steps=spec.action.steps,
            action_dims=spec.action.dims,
            time_scale=1000.0 if kind == "flow_matching" else 1.0,
            time_features=features.dim if features is not None else 0,
            expert_norm=expert_norm,
            vocab_bins=pos("vocab_bins", spec.program.tokens.bins),
            decode_tokens=spec.program.tokens.tokens or spec.action.steps * spec.action.dims,
            seed=seed,
            weight_std=std,
        )


def describe(config: PolicyConfig) -> dict[str, Any]:
    return {
        "network": config.network,
        "hidden_dim": config.backbone.hidden_dim,
        "depth": config.backbone.depth,
        "expert_dim": config.expert.hidden_dim,
        "expert_depth": config.expert_depth,
        "prefix_tokens": config.prefix_tokens,
    }
