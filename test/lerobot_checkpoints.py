"""Small LeRobot checkpoints made offline with random weights, as LeRobot saves them after training
(``pretrained_model/``: config.json, model.safetensors, policy_preprocessor.json /
policy_postprocessor.json with the normaliser statistics in safetensors files, train_config.json's fps).

Run with the Python that has LeRobot (``.venv-lerobot/bin/python``):
    python test/lerobot_checkpoints.py {act,smolvla} OUT_DIR [--full]
``--full`` keeps LeRobot's default ACT sizes (ResNet-18, 4+1 layers, d=512) with two 480x640 cameras
(what the bench uses);
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


def make_backbone(folder: Path) -> Path:
    """A small SmolVLM2-shaped backbone folder, made in code: config (2 text layers of width 64, a
    1-layer vision tower on 64x64 images, 16x16 patches), a character-level tokenizer.json with the
    special tokens the SmolVLM processor and SmolVLA look up, and the processor files. What
    ``load_vlm_weights=False`` reads instead of the hub (the weights are random)."""
    from vla_accel.importers.torchvision_compat import import_torchvision

    import_torchvision()
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (PreTrainedTokenizerFast, SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor,
                              SmolVLMVideoProcessor)

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<global-img>",
                "<image>"]
    vocab = {t: i for i, t in enumerate(specials + [chr(c) for c in range(32, 127)] + ["\n"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<end_of_utterance>", bos_token="<|im_start|>",
        unk_token="<|endoftext|>",
        extra_special_tokens={"fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>",
                              "image_token": "<image>", "end_of_utterance_token": "<end_of_utterance>"})
    config = SmolVLMConfig(
        text_config={"model_type": "llama", "vocab_size": len(vocab), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                     "max_position_embeddings": 512, "pad_token_id": 0},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 64, "patch_size": 16},
        scale_factor=2, image_token_id=vocab["<image>"], vocab_size=len(vocab))
    config.save_pretrained(folder)
    fast.save_pretrained(folder)
    image_processor = SmolVLMImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 64},
                                            do_image_splitting=False)
    SmolVLMProcessor(image_processor=image_processor, tokenizer=fast, video_processor=SmolVLMVideoProcessor(),
                     image_seq_len=4).save_pretrained(folder)
    return folder


def make_smolvla(out: Path, *, seed: int = 0, image_hw=(48, 64), state_dim: int = 6, action_dim: int = 6,
                 fps: int = 10) -> Path:
    """A reduced SmolVLA (about 0.2M parameters) on a local backbone folder beside ``out``; camera frames
    of 48x64 are resized with padding to 64x64 (16 rows padded at the top) as LeRobot's SmolVLA does."""
    import torch

    backbone = make_backbone(out.parent / "smolvlm_backbone")
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    h, w = image_hw
    inputs = {"observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, h, w)),
              "observation.state": PolicyFeature(FeatureType.STATE, (state_dim,))}
    outputs = {"action": PolicyFeature(FeatureType.ACTION, (action_dim,))}
    config = SmolVLAConfig(input_features=inputs, output_features=outputs, vlm_model_name=str(backbone),
                           load_vlm_weights=False, resize_imgs_with_padding=(64, 64), chunk_size=5, n_action_steps=5,
                           num_steps=3, tokenizer_max_length=32, num_vlm_layers=1, num_expert_layers=1, device="cpu")
    policy = SmolVLAPolicy(config).eval()
    stats = {"observation.state": _stats(rng, (state_dim,)), "action": _stats(rng, (action_dim,)),
             "observation.images.top": _image_stats(rng)}
    pre, post = make_smolvla_pre_post_processors(config, dataset_stats=stats)
    return _save(policy, pre, post, out, fps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", choices=("act", "smolvla"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--full", action="store_true", help="LeRobot's default sizes (ACT: 51.6M parameters)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.policy == "act":
        made = make_act(args.out, full=args.full, seed=args.seed, image_hw=(480, 640) if args.full else (96, 128))
    else:
        made = make_smolvla(args.out, seed=args.seed)
    print(made)
    return 0


if __name__ == "__main__":
    sys.exit(main())
