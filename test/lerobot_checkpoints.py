"""Small LeRobot checkpoints made offline with random weights, as LeRobot saves them after training
(``pretrained_model/``: config.json, model.safetensors, policy_preprocessor.json /
policy_postprocessor.json with the normaliser statistics in safetensors files, train_config.json's fps).

Run with the Python that has LeRobot (``.venv-lerobot/bin/python``):
    python test/lerobot_checkpoints.py act OUT_DIR [--full]
``--full`` keeps LeRobot's default ACT sizes (ResNet-18, 4+1 layers, d=512: what the bench uses);
without it the network is shrunk so tests stay fast.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _stats(rng: np.random.Generator, shape: tuple[int, ...], positive: bool = False) -> dict:
    import torch

    mean = rng.normal(0.0, 0.5, shape).astype(np.float32)
    std = rng.uniform(0.2, 1.5, shape).astype(np.float32)
    low = mean - 2 * std
    high = mean + 2 * std
    out = {"mean": mean, "std": std, "min": low, "max": high,
           "q01": mean - 1.8 * std, "q99": mean + 1.8 * std}
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


def _image_stats(rng: np.random.Generator) -> dict:
    import torch

    mean = rng.uniform(0.3, 0.6, (3, 1, 1)).astype(np.float32)
    std = rng.uniform(0.15, 0.3, (3, 1, 1)).astype(np.float32)
    return {"mean": torch.from_numpy(mean), "std": torch.from_numpy(std),
            "min": torch.zeros(3, 1, 1), "max": torch.ones(3, 1, 1)}


def _save(policy, pre, post, out: Path, fps: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    # What LeRobot's training writes beside the policy; the importer reads the control rate from it.
    (out / "train_config.json").write_text(json.dumps({"env": {"fps": fps}, "dataset": {"repo_id": "local/offline"}}))
    return out


def make_act(out: Path, *, full: bool = False, seed: int = 0, cameras=("top", "wrist"),
             image_hw=(96, 128), state_dim: int = 6, action_dim: int = 6, state_norm: str = "MEAN_STD",
             action_norm: str = "MEAN_STD", fps: int = 30) -> Path:
    import torch

    from vla_accel.importers.torchvision_compat import import_torchvision

    import_torchvision()
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.act.processor_act import make_act_pre_post_processors

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    h, w = image_hw
    inputs = {f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, h, w)) for c in cameras}
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (state_dim,))
    outputs = {"action": PolicyFeature(FeatureType.ACTION, (action_dim,))}
    sizes = {} if full else dict(dim_model=64, n_heads=2, dim_feedforward=128, n_encoder_layers=1,
                                 n_decoder_layers=1, n_vae_encoder_layers=1, latent_dim=8, chunk_size=10,
                                 n_action_steps=10)
    config = ACTConfig(
        input_features=inputs, output_features=outputs, pretrained_backbone_weights=None, device="cpu",
        normalization_mapping={"VISUAL": NormalizationMode.MEAN_STD, "STATE": NormalizationMode(state_norm),
                               "ACTION": NormalizationMode(action_norm)},
        **sizes,
    )
    policy = ACTPolicy(config)
    # Random weights everywhere, batch-norm statistics included, so no layer is an identity by accident.
    with torch.no_grad():
        for name, buf in policy.named_buffers():
            if name.endswith("running_var"):
                buf.copy_(torch.rand_like(buf) * 0.5 + 0.75)
            elif name.endswith("running_mean"):
                buf.copy_(torch.randn_like(buf) * 0.1)
    policy.eval()
    stats = {k: _image_stats(rng) for k in inputs if k.startswith("observation.images.")}
    stats["observation.state"] = _stats(rng, (state_dim,))
    stats["action"] = _stats(rng, (action_dim,))
    pre, post = make_act_pre_post_processors(config, dataset_stats=stats)
    return _save(policy, pre, post, out, fps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", choices=("act",))
    parser.add_argument("out", type=Path)
    parser.add_argument("--full", action="store_true", help="LeRobot's default sizes (ACT: 51.6M parameters)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    made = make_act(args.out, full=args.full, seed=args.seed)
    print(made)
    return 0


if __name__ == "__main__":
    sys.exit(main())
