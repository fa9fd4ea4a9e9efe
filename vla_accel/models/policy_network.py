"""The reference policy programs in torch (see ``policy_config.py`` for the design).

The vision-language prefix is built from the reference network's own blocks (CameraEncoder,
TextEncoder, Block, Mlp), so every change to those reaches both. Each graph is one module whose
forward takes its inputs positionally in the order the spec's ``program.graphs[i].inputs`` lists them.
Same export rules as ``network.py``: explicit matmul attention, at most 4-D tensors, finite mask bias.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vla_accel.core.program import sinusoidal_exponents
from vla_accel.models.architecture import MASK_BIAS
from vla_accel.models.network import Attention, Block, CameraEncoder, LayerNorm, Mlp, TextEncoder
from vla_accel.models.policy_config import PolicyConfig


class Backbone(nn.Module):
    """Images (+ instruction) -> prefix features (B, N, D) and the key padding bias (B, N)."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        cfg = config.backbone
        self.language = config.language
        self.cameras = nn.ModuleList(CameraEncoder(cfg, i) for i in range(len(cfg.cameras)))
        self.text = TextEncoder(cfg) if config.language else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.hidden_dim, eps=cfg.layer_norm_eps)
        self.image_tokens = cfg.num_image_tokens

    def forward(self, images, tokens=None, mask=None, extra=None):
        dtype = self.norm.weight.dtype
        parts = [enc(img.to(dtype)) for enc, img in zip(self.cameras, images)]
        batch = images[0].shape[0]
        if self.text is not None:
            mask = mask.to(dtype)
            parts.append(self.text(tokens, mask))
            valid = F.pad(mask, (self.image_tokens, 0), value=1.0)
        else:
            valid = torch.ones(batch, self.image_tokens, dtype=dtype, device=images[0].device)
        if extra is not None:
            parts.append(extra)
            valid = F.pad(valid, (0, extra.shape[1]), value=1.0)
        x = torch.cat(parts, dim=1)
        bias = (1.0 - valid) * MASK_BIAS  # (B, N)
        key_bias = bias.unsqueeze(1).unsqueeze(1)
        for block in self.blocks:
            x = block(x, key_bias)
        return self.norm(x), bias


def expert_norm(config: PolicyConfig, width: int) -> nn.Module:
    """The action expert's LayerNorm (``architecture.expert_norm``): torch's, or the backbone's written-out
    one (the same function and parameter names; no SQUARED_DIFFERENCE in an exported graph)."""
    eps = config.expert.layer_norm_eps
    return LayerNorm(width, eps) if config.expert_norm == "written_out" else nn.LayerNorm(width, eps=eps)


class ExpertLayer(nn.Module):
    """Pre-LN block whose queries attend to an external key/value cache followed by their own keys."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        cfg = config.expert
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.norm1 = expert_norm(config, cfg.hidden_dim)
        self.qkv = nn.Linear(cfg.hidden_dim, 3 * cfg.hidden_dim)
        self.proj = nn.Linear(cfg.hidden_dim, cfg.hidden_dim)
        self.norm2 = expert_norm(config, cfg.hidden_dim)
        self.mlp = Mlp(cfg)
        self.fused = False  # GPU layout: heads split once, fused scaled_dot_product_attention

    def _split(self, t):
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x, past_k, past_v, bias=None):
        b, n, width = x.shape
        if self.fused:
            # (B, n, 3, H, Dh) -> (3, B, H, n, Dh); the cache's heads are split as views, and the
            # concatenation writes keys and values once in the layout the fused attention reads.
            qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            keys = torch.cat([self._split(past_k), qkv[1]], dim=2)
            values = torch.cat([self._split(past_v), qkv[2]], dim=2)
            mask = None if bias is None else bias.expand(b, self.heads, n, keys.shape[2])
            out = F.scaled_dot_product_attention(qkv[0], keys, values, attn_mask=mask, scale=self.scale)
            x = x + self.proj(out.transpose(1, 2).reshape(b, n, width))
            k, v = qkv[1].transpose(1, 2).reshape(b, n, width), qkv[2].transpose(1, 2).reshape(b, n, width)
            return x + self.mlp(self.norm2(x)), k, v
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        keys = torch.cat([past_k, k], dim=1)
        values = torch.cat([past_v, v], dim=1)
        scores = torch.matmul(self._split(q) * self.scale, self._split(keys).transpose(-2, -1))
        if bias is not None:
            scores = scores + bias
        out = torch.matmul(torch.softmax(scores, dim=-1), self._split(values)).transpose(1, 2).reshape(b, n, width)
        x = x + self.proj(out)
        return x + self.mlp(self.norm2(x)), k, v


class KVProjection(nn.Module):
    """Prefix features (B, N, D) -> keys and values (B, L, N, E) for the L expert layers."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.layers, self.dim = config.expert_depth, config.expert.hidden_dim
        self.kv = nn.Linear(config.backbone.hidden_dim, 2 * self.layers * self.dim)

    def forward(self, features):
        b, n, _ = features.shape
        kv = self.kv(features).reshape(b, n, 2 * self.layers, self.dim).transpose(1, 2)
        return kv[:, : self.layers], kv[:, self.layers :]


def time_embedding(t, dim: int, scale: float):
    """Sinusoidal embedding of t (B,) * scale -> (B, dim), in the graph (a step graph taking raw t): the
    frequencies of ``core.program.sinusoidal_exponents``, the features the runtime computes for a
    program that declares ``time_features`` (``core.program.time_features``)."""
    freqs = torch.exp(torch.from_numpy(sinusoidal_exponents(dim)).to(t.device))
    angles = (t.to(torch.float32) * scale).reshape(-1, 1) * freqs.reshape(1, -1)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class FlowPrefix(nn.Module):
    """forward(*images, [tokens, token_mask]) -> prefix_keys, prefix_values, prefix_bias."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.kv = KVProjection(config)

    def forward(self, *inputs):
        n_cams = len(self.backbone.cameras)
        images = inputs[:n_cams]
        tokens, mask = (inputs[n_cams], inputs[n_cams + 1]) if self.config.language else (None, None)
        features, bias = self.backbone(images, tokens, mask)
        keys, values = self.kv(features)
        return keys, values, bias


class FlowStep(nn.Module):
    """The action expert. forward(x_t, t, [state], prefix_keys, prefix_values, prefix_bias) -> prediction
    (velocity for flow matching, noise for diffusion), (B, steps, dims) float32. ``t`` is the raw time
    (B,), embedded here, or, when the spec declares ``time_features``, the runtime's (B, dim) features."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        e = config.expert.hidden_dim
        self.action_in = nn.Linear(config.action_dims, e)
        self.action_position = nn.Parameter(torch.zeros(1, config.action_steps, e))
        # the runtime's time features (config.time_features wide) or the in-graph embedding (e wide)
        self.time_fc1 = nn.Linear(config.time_features or e, e)
        self.time_fc2 = nn.Linear(e, e)
        self.state_in = nn.Linear(config.state_dims, e) if config.state_dims else None
        self.layers = nn.ModuleList(ExpertLayer(config) for _ in range(config.expert_depth))
        self.norm = expert_norm(config, e)
        self.action_out = nn.Linear(e, config.action_dims)

    def forward(self, x, t, *rest):
        if self.state_in is not None:
            state, keys, values, prefix_bias = rest
        else:
            state, (keys, values, prefix_bias) = None, rest
        dtype = self.action_out.weight.dtype
        e = self.action_in.out_features
        if self.config.time_features:  # (B, dim) features of t computed by the runtime
            features = t.to(dtype)
        else:
            features = time_embedding(t, e, self.config.time_scale).to(dtype)
        temb = self.time_fc2(F.silu(self.time_fc1(features)))
        h = self.action_in(x.to(dtype)) + self.action_position + temb.unsqueeze(1)
        if self.state_in is not None:
            h = torch.cat([self.state_in(state.to(dtype)).unsqueeze(1), h], dim=1)
        bias = F.pad(prefix_bias.to(dtype), (0, h.shape[1]), value=0.0).unsqueeze(1).unsqueeze(1)
        keys, values = keys.to(dtype), values.to(dtype)
        for i, layer in enumerate(self.layers):
            h, _, _ = layer(h, keys[:, i], values[:, i], bias)
        out = self.action_out(self.norm(h[:, -self.config.action_steps :]))
        return out.float()


class ARDecoder(nn.Module):
    """Token embedding + expert layers over a KV cache + logits head (shared by both AR graphs)."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        e = config.expert.hidden_dim
        self.embedding = nn.Embedding(config.vocab_bins + 1, e)  # the last id is the begin token
        self.position = nn.Parameter(torch.zeros(1, config.decode_tokens + 1, e))
        self.layers = nn.ModuleList(ExpertLayer(config) for _ in range(config.expert_depth))
        self.norm = nn.LayerNorm(e, eps=config.expert.layer_norm_eps)
        self.head = nn.Linear(e, config.vocab_bins)

    def forward(self, token, position, past_keys, past_values):
        pos = torch.index_select(self.position[0], 0, position.reshape(-1)).unsqueeze(1)  # (B, 1, E)
        h = self.embedding(token.reshape(-1, 1)) + pos
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            h, k, v = layer(h, past_keys[:, i], past_values[:, i])
            new_k.append(k.unsqueeze(1))
            new_v.append(v.unsqueeze(1))
        logits = self.head(self.norm(h[:, 0])).float()
        present_k = torch.cat([past_keys, torch.cat(new_k, dim=1)], dim=2)
        present_v = torch.cat([past_values, torch.cat(new_v, dim=1)], dim=2)
        return logits, present_k, present_v


class ARPrefix(nn.Module):
    """forward(*images, [tokens, token_mask], [state]) -> logits, present_keys, present_values."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.state_in = nn.Linear(config.state_dims, config.backbone.hidden_dim) if config.state_dims else None
        self.kv = KVProjection(config)
        self.decoder = ARDecoder(config)

    def forward(self, *inputs):
        n_cams = len(self.backbone.cameras)
        images = inputs[:n_cams]
        rest = list(inputs[n_cams:])
        tokens = mask = None
        if self.config.language:
            tokens, mask = rest.pop(0), rest.pop(0)
        extra = self.state_in(rest.pop(0).to(self.kv.kv.weight.dtype)).unsqueeze(1) if self.state_in is not None else None
        features, _ = self.backbone(images, tokens, mask, extra)
        keys, values = self.kv(features)
        batch = images[0].shape[0]
        begin = torch.full((batch, 1), self.config.vocab_bins, dtype=torch.int64, device=keys.device)
        position = torch.zeros((batch, 1), dtype=torch.int64, device=keys.device)
        return self.decoder(begin, position, keys, values)


class ARStep(nn.Module):
    """forward(token, position, past_keys, past_values) -> logits, present_keys, present_values."""

    def __init__(self, config: PolicyConfig, decoder: ARDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, token, position, past_keys, past_values):
        return self.decoder(token, position, past_keys, past_values)


def use_gpu_layout(modules: dict[str, nn.Module], enabled: bool = True) -> dict[str, nn.Module]:
    """The reference network's GPU layout (see network.py) on every graph module of a program, plus
    the expert's own: heads split once, keys and values concatenated in the fused attention's layout.
    The same arithmetic: outputs match the plain layout to float rounding. Returns ``modules``."""
    for module in modules.values():
        for part in module.modules():
            if isinstance(part, CameraEncoder):
                part.as_matmul = enabled
            elif isinstance(part, (Attention, Mlp, LayerNorm, ExpertLayer)):
                part.fused = enabled
    return modules


def build_graph_modules(config: PolicyConfig) -> dict[str, nn.Module]:
    """The program's graphs (prefix, step) as modules sharing one parameter set ("prefix." / "step.")."""
    if config.network == "flow_policy":
        return {"prefix": FlowPrefix(config), "step": FlowStep(config)}
    prefix = ARPrefix(config)
    return {"prefix": prefix, "step": ARStep(config, prefix.decoder)}


def parameter_tensors(modules: dict[str, nn.Module]) -> dict[str, tuple[int, ...]]:
    """Every distinct parameter: qualified name -> shape (shared ones listed once)."""
    seen: dict[int, str] = {}
    out: dict[str, tuple[int, ...]] = {}
    for graph, module in modules.items():
        for name, p in module.named_parameters():
            if id(p) in seen:
                continue
            seen[id(p)] = f"{graph}.{name}"
            out[f"{graph}.{name}"] = tuple(p.shape)
    return out


_POLICY_TOKEN_TABLES = ("backbone.text.embedding.weight", "backbone.text.position")


def generate_policy_weights(config: PolicyConfig, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Seeded weights, one numpy stream per (seed, name), with the reference network's statistics;
    the backbone's instruction embedding and positions at the reference network's token-source scale
    (``weights.TOKEN_SOURCE_STD``): at the generic std their tokens were a few int8 steps wide next
    to the image patches in the prefix graph's concatenated sequence, and its LayerNorms amplified
    that rounding into a 25-30% error of the prefix keys and values in int8."""
    from vla_accel.models.weights import TOKEN_SOURCE_STD, _tensor_seed

    std = config.weight_std
    depth = max(config.backbone.depth, config.expert_depth)
    out = {}
    for name, shape in shapes.items():
        rng = np.random.Generator(np.random.PCG64(_tensor_seed(config.seed, name)))
        values = rng.standard_normal(shape, dtype=np.float32)
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "weight" and name.split(".")[-2].startswith("norm"):
            values = 1.0 + 0.1 * values
        elif leaf == "bias":
            values = 0.5 * std * values
        elif name.endswith(("fc2.weight", "proj.weight")):
            values = (std / np.sqrt(2.0 * depth)) * values
        elif name.endswith(_POLICY_TOKEN_TABLES):
            values = TOKEN_SOURCE_STD * values
        else:
            values = std * values
        out[name] = np.ascontiguousarray(values, dtype=np.float32)
    return out


def load_graph_modules(config: PolicyConfig, weights: dict[str, np.ndarray], device="cpu", dtype=None):
    modules = build_graph_modules(config)
    params = {}
    for graph, module in modules.items():
        for name, p in module.named_parameters():
            params.setdefault(id(p), (p, f"{graph}.{name}"))
    with torch.no_grad():
        for p, name in params.values():
            p.copy_(torch.from_numpy(np.array(weights[name])))  # weights are read-only: copy
    for module in modules.values():
        module.eval()
        module.requires_grad_(False)
        module.to(device=device, dtype=dtype) if dtype is not None else module.to(device=device)
    return modules
