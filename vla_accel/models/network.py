"""The reference VLA network in torch (see ``architecture.py`` for the design and the weights contract).

Export notes, since every backend runs this same function:
* attention is written with explicit matmuls + softmax (no fused SDPA) so ONNX, OpenVINO and
  LiteRT converters see plain MatMul / Softmax and the OpenCL kernels can mirror it one to one;
* tensors stay at most 4-D (q, k, v come from one GEMM split in three, not a 5-D reshape), which
  keeps TFLite and Edge TPU converters happy;
* GELU uses the tanh form (a handful of element-wise ops everywhere; exact erf is missing on some
  NPUs and in int8 TFLite kernels).

Designed to survive full-integer int8 (per-tensor activation ranges, as the Edge TPU, Ethos-U and
Hexagon HTP run it); each choice below removed a measured loss (docs/backends.md):
* padded instruction tokens are excluded by masking alone (an additive key bias): their rows keep
  embedding + position, so no row has zero variance (a zeroed row's LayerNorm ``rsqrt`` is
  1/sqrt(eps) = 1000 next to ~50 for real rows and wipes out the shared int8 range);
* the mask bias is moderate (``MASK_BIAS``), so the biased scores share an int8 range with the real
  scores without crushing them, while exp() of it is still negligible in fp32;
* the instruction lookup is a gather on the table (``index_select``): the int8 quantiser turns it
  into an int8 GATHER on an int8 table, where an EMBEDDING_LOOKUP would stay in float;
* LayerNorm is written out as mean / centred square / rsqrt (no SQUARED_DIFFERENCE, an op the
  Ethos-U compiler does not map);
* every token source (patches, instruction, state, action queries) enters the residual stream at
  a comparable scale (see weights.py), so one per-tensor range fits all of them.

GPU layout (``ReferenceVLA.use_gpu_layout()``, what the ``cuda`` backend and the ``.pt2`` export run):
the same arithmetic, written for tensor cores. Attention goes through fused
``scaled_dot_product_attention`` with the same additive key bias; the MLP's first GEMM carries its
bias and the tanh GELU in the GEMM epilogue on CUDA (``_addmm_activation``); the token sequence is padded with
zero tokens to a multiple of ``TOKEN_MULTIPLE`` (335 -> 336 on ``base``), masked as keys and dropped
as queries, so every attention product has aligned shapes; the patch embedding is a reshape plus one
matrix multiply instead of a convolution; LayerNorm runs as one fused kernel (``F.layer_norm``, the
same function as the written-out form). Outputs match the plain layout to float rounding.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from vla_accel.errors import InputError
from vla_accel.models.architecture import (
    MASK_BIAS,
    NetworkConfig,
    count_parameters as count_config_parameters,
    flops_per_inference,
)

__all__ = ["LayerNorm", "ReferenceVLA", "count_parameters", "flops_per_inference", "TOKEN_MULTIPLE"]

# Sequence length multiple of the GPU layout: fp16/bf16 tensor-core tiles want multiples of 8-16.
TOKEN_MULTIPLE = 16


def count_parameters(model: "nn.Module | NetworkConfig") -> int:
    """Scalar parameter count of a torch module or (analytically) of a NetworkConfig."""
    if isinstance(model, NetworkConfig):
        return count_config_parameters(model)
    return sum(p.numel() for p in model.parameters())


class CameraEncoder(nn.Module):
    """Conv patch embedding (a GEMM over non-overlapping patches) plus learned positions."""

    def __init__(self, config: NetworkConfig, index: int):
        super().__init__()
        cam = config.cameras[index]
        self.patch = nn.Conv2d(cam.channels, config.hidden_dim, kernel_size=cam.patch_size, stride=cam.patch_size)
        self.position = nn.Parameter(torch.zeros(1, cam.num_patches, config.hidden_dim))
        self.patch_size = cam.patch_size
        self.as_matmul = False  # GPU layout: patches gathered by a reshape, then one GEMM

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.as_matmul:
            batch, channels, height, width = image.shape
            p = self.patch_size
            rows, cols = height // p, width // p
            # (B, C, rows, p, cols, p) -> (B, rows, cols, C, p, p): each patch flattened in the
            # conv weight's (C, kh, kw) order, so the GEMM computes exactly the convolution.
            patches = image.reshape(batch, channels, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)
            patches = patches.reshape(batch, rows * cols, channels * p * p)
            weight = self.patch.weight.reshape(self.patch.weight.shape[0], -1)
            return F.linear(patches, weight, self.patch.bias) + self.position
        x = self.patch(image)  # (B, D, rows, cols)
        return x.flatten(2).transpose(1, 2) + self.position  # (B, patches, D)


class TextEncoder(nn.Module):
    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_dim)
        self.position = nn.Parameter(torch.zeros(1, config.max_tokens, config.hidden_dim))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Padded positions are excluded as keys by the attention bias and never read as queries;
        # they are NOT zeroed (a zero row has zero variance: see the module docstring). ``mask`` stays
        # in the signature for callers that build the text tokens on their own.
        del mask
        flat = torch.index_select(self.embedding.weight, 0, tokens.reshape(-1))
        return flat.reshape(tokens.shape[0], tokens.shape[1], -1) + self.position


class Attention(nn.Module):
    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.head_dim
        self.scale = 1.0 / math.sqrt(config.head_dim)
        self.qkv = nn.Linear(config.hidden_dim, 3 * config.hidden_dim)
        self.proj = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.fused = False  # GPU layout: scaled_dot_product_attention with the same key bias

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        if self.fused:
            # (B, N, 3, H, Dh) -> (3, B, H, N, Dh): one permute instead of three transposes.
            qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            bias = key_bias.expand(batch, self.heads, tokens, tokens)
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias, scale=self.scale)
            return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = q.reshape(batch, tokens, self.heads, self.head_dim).transpose(1, 2) * self.scale
        k = k.reshape(batch, tokens, self.heads, self.head_dim).transpose(1, 2)
        v = v.reshape(batch, tokens, self.heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) + key_bias  # (B, H, N, N)
        weights = torch.softmax(scores, dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(batch, tokens, width)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_dim, config.mlp_dim)
        self.fc2 = nn.Linear(config.mlp_dim, config.hidden_dim)
        self.fused = False  # GPU layout: fc1 + bias + GELU(tanh) in one GEMM epilogue (cuBLASLt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and x.is_cuda:  # on CUDA the epilogue is the tanh GELU; the CPU kernel would use erf
            rows = x.reshape(-1, x.shape[-1])
            hidden = torch._addmm_activation(self.fc1.bias, rows, self.fc1.weight.t(), use_gelu=True)  # tanh GELU
            return self.fc2(hidden).reshape(*x.shape[:-1], -1)
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class LayerNorm(nn.Module):
    """torch.nn.LayerNorm's function and parameter names (weight, bias), written out so converters
    emit MEAN / SUB / MUL / RSQRT (every integer NPU compiler maps them) instead of
    SQUARED_DIFFERENCE."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.fused = False  # GPU layout: the same function as one fused kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        centred = x - x.mean(dim=-1, keepdim=True)
        variance = (centred * centred).mean(dim=-1, keepdim=True)
        return centred * torch.rsqrt(variance + self.eps) * self.weight + self.bias


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.norm1 = LayerNorm(config.hidden_dim, config.layer_norm_eps)
        self.attn = Attention(config)
        self.norm2 = LayerNorm(config.hidden_dim, config.layer_norm_eps)
        self.mlp = Mlp(config)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_bias)
        return x + self.mlp(self.norm2(x))


class ReferenceVLA(nn.Module):
    """forward(*inputs) with inputs positionally in ``spec.input_names`` order:
    images (B, 3, H, W) float32 per camera, tokens (B, T) int32, token_mask (B, T) float32,
    [state (B, S) float32] -> normalised actions (B, steps, dims) float32 in [-1, 1]."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        self.cameras = nn.ModuleList(CameraEncoder(config, i) for i in range(len(config.cameras)))
        self.text = TextEncoder(config)
        self.state_proj = nn.Linear(config.state_dims, config.hidden_dim) if config.state_dims else None
        self.action_queries = nn.Parameter(torch.zeros(1, config.action_steps, config.hidden_dim))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = LayerNorm(config.hidden_dim, config.layer_norm_eps)
        self.head = nn.Linear(config.hidden_dim, config.action_dims)
        # Tokens before / after the instruction in the sequence: always attended to.
        self._keys_before_text = config.num_image_tokens
        self._keys_after_text = (1 if config.state_dims else 0) + config.action_steps
        self._pad_tokens = 0  # zero tokens appended by the GPU layout (masked keys, unused queries)

    def use_gpu_layout(self, enabled: bool = True) -> "ReferenceVLA":
        """Switch to (or back from) the GPU layout described in the module docstring; returns self."""
        n = self.config.num_tokens
        self._pad_tokens = (-n) % TOKEN_MULTIPLE if enabled else 0
        for encoder in self.cameras:
            encoder.as_matmul = enabled
        for block in self.blocks:
            block.attn.fused = enabled
            block.mlp.fused = enabled
            block.norm1.fused = block.norm2.fused = enabled
        self.norm.fused = enabled
        return self

    @property
    def gpu_layout(self) -> bool:
        return bool(self.blocks) and self.blocks[0].attn.fused

    @property
    def num_inputs(self) -> int:
        return len(self.config.cameras) + 2 + (1 if self.config.state_dims else 0)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != self.num_inputs:
            raise InputError(f"ReferenceVLA expects {self.num_inputs} inputs, got {len(inputs)}", reason="missing_input")
        compute_dtype = self.head.weight.dtype
        n_cams = len(self.cameras)
        images = inputs[:n_cams]
        tokens = inputs[n_cams]
        mask = inputs[n_cams + 1]
        if mask.dtype != compute_dtype:
            mask = mask.to(compute_dtype)
        parts = []
        for encoder, image in zip(self.cameras, images):
            if image.dtype != compute_dtype:
                image = image.to(compute_dtype)
            parts.append(encoder(image))
        parts.append(self.text(tokens, mask))
        batch = tokens.shape[0]
        if self.state_proj is not None:
            state = inputs[n_cams + 2]
            if state.dtype != compute_dtype:
                state = state.to(compute_dtype)
            parts.append(self.state_proj(state).unsqueeze(1))
        parts.append(self.action_queries.expand(batch, -1, -1))
        pad = self._pad_tokens
        if pad:
            parts.append(parts[-1].new_zeros(batch, pad, parts[-1].shape[-1]))
        x = torch.cat(parts, dim=1)

        # Key padding: 1 for every image / state / query token, token_mask for the instruction,
        # 0 for the GPU layout's alignment tokens.
        key_valid = F.pad(mask, (self._keys_before_text, self._keys_after_text), value=1.0)
        if pad:
            key_valid = F.pad(key_valid, (0, pad), value=0.0)
        key_bias = ((1.0 - key_valid) * MASK_BIAS).unsqueeze(1).unsqueeze(1)  # (B, 1, 1, N): 0 or MASK_BIAS
        for block in self.blocks:
            x = block(x, key_bias)
        end = x.shape[1] - pad
        queries = x[:, end - self.config.action_steps : end]
        actions = torch.tanh(self.head(self.norm(queries)))
        if actions.dtype != torch.float32:
            actions = actions.float()
        return actions
