"""A trained LeRobot checkpoint -> a vla_accel model folder: ONNX graphs, spec, parity report.

LeRobot's ``pretrained_model/`` folder holds ``config.json`` (policy type, input / output features,
normalisation modes), ``model.safetensors`` and the pre/post-processor pipelines
(``policy_preprocessor.json`` / ``policy_postprocessor.json``) whose normaliser steps carry the
dataset statistics. ``import_checkpoint`` rebuilds the policy with LeRobot itself (imported only
here), then:

1. exports the network as the policy program of its kind (ACT: one single-pass graph, images and
   state in, the normalised action chunk out) to ONNX, with the batch dimension checked after export
   (a graph whose batch the exporter fixed is declared ``batch: N`` in the spec, not passed off as
   dynamic) and weights over 2 GB stored as ONNX external data;
2. writes the spec: one camera per visual feature (LeRobot key ``observation.images.<name>``, size
   from the feature's shape), image / state / action normalisation from the processors' statistics
   and modes, state and action dims, the chunk length, dt from the training fps;
3. checks parity: seeded raw observations (uint8 frames, states drawn around the dataset mean) go
   through LeRobot (preprocessor -> policy -> postprocessor) and through vla_accel (the spec's
   preprocessing -> onnxruntime -> un-normalisation, the Engine the node uses); the largest absolute
   difference of the un-normalised actions must be within the tolerance, or nothing is published.

The output folder is written in a temporary sibling and renamed into place only after parity passed.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vla_accel.errors import ImportFailedError, ParityError

log = logging.getLogger(__name__)

SUPPORTED_TYPES = ("act", "smolvla")
ONNX_EXTERNAL_DATA_BYTES = 2 * 1024**3  # protobuf's limit: larger models keep weights beside the graph
IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"
LEROBOT_INSTALL_HINT = (
    "LeRobot is not importable in this Python. The project's set-up installs it in its own layer: "
    "`./run.sh setup` (or `bash scripts/setup_lerobot.sh`) creates .venv-lerobot, then run "
    "`./run.sh import lerobot CHECKPOINT OUT` or `.venv-lerobot/bin/vla-accel import lerobot ...`. "
    "By hand: `pip install --no-deps -r requirements/lerobot/lerobot.txt` into a venv with torch "
    "(LeRobot 0.4.4 is the newest for Python 3.11 and needs transformers < 5)."
)


def lerobot_available() -> bool:
    return importlib.util.find_spec("lerobot") is not None


def require_lerobot() -> None:
    if not lerobot_available():
        raise ImportFailedError(LEROBOT_INSTALL_HINT, reason="lerobot_missing")
    from vla_accel.importers.torchvision_compat import import_torchvision

    try:
        import_torchvision()
    except ImportError:  # only ACT / Diffusion Policy need it; the error comes when they are built
        pass


class Progress:
    """Stage messages with elapsed seconds on stderr (exports of large policies take minutes)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[vla-accel import] {time.perf_counter() - self.start:7.1f}s  {message}", file=sys.stderr,
                  flush=True)


@dataclasses.dataclass
class Checkpoint:
    """A LeRobot checkpoint rebuilt by LeRobot: policy, processors and what the spec needs from them."""

    path: Path
    config: Any
    policy: Any
    preprocessor: Any
    postprocessor: Any
    stats: dict[str, dict[str, np.ndarray]]
    norm_modes: dict[str, str]  # feature type (VISUAL / STATE / ACTION ...) -> LeRobot mode name
    eps: float
    fps: float | None

    @property
    def type(self) -> str:
        return str(self.config.type)

    @property
    def image_keys(self) -> list[str]:
        return [k for k in self.config.input_features if k.startswith(IMAGE_PREFIX)]

    def feature_shape(self, key: str) -> tuple[int, ...]:
        return tuple(int(v) for v in self.config.input_features[key].shape)


def _read_fps(path: Path) -> float | None:
    """The control rate the policy was trained at: train_config.json (env.fps, else dataset fps)."""
    train = path / "train_config.json"
    if not train.is_file():
        return None
    try:
        data = json.loads(train.read_text())
    except (OSError, ValueError):
        return None
    for section in ("env", "dataset"):
        value = (data.get(section) or {}).get("fps") if isinstance(data.get(section), dict) else None
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return None


def load_checkpoint(path: str | Path, progress: Callable[[str], None] = lambda _m: None) -> Checkpoint:
    """Rebuild a policy and its processors from a ``pretrained_model/`` folder with LeRobot."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ImportFailedError(f"{path} is not a LeRobot checkpoint folder: no config.json "
                                "(point at the pretrained_model/ folder)", reason="not_a_checkpoint")
    for name in ("model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"):
        if not (path / name).is_file():
            raise ImportFailedError(f"{path} has no {name}: the import needs the weights and the pre/post-"
                                    "processor files LeRobot saves with them (dataset statistics)",
                                    reason="not_a_checkpoint")
    require_lerobot()
    import torch
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action
    from lerobot.processor.normalize_processor import NormalizerProcessorStep

    progress(f"reading {path / 'config.json'}")
    config = PreTrainedConfig.from_pretrained(path)
    if config.type not in SUPPORTED_TYPES:
        raise ImportFailedError(
            f"policy type '{config.type}' is not importable yet (supported: {', '.join(SUPPORTED_TYPES)}); "
            "docs/import.md describes how to write a spec for graphs exported by hand", reason="unsupported_policy")
    config.device = "cpu"
    progress(f"building the {config.type} policy with LeRobot and loading {path / 'model.safetensors'}")
    policy = get_policy_class(config.type).from_pretrained(path, config=config)
    policy.eval()
    pre = PolicyProcessorPipeline.from_pretrained(path, config_filename="policy_preprocessor.json",
                                                  overrides={"device_processor": {"device": "cpu"}})
    post = PolicyProcessorPipeline.from_pretrained(path, config_filename="policy_postprocessor.json",
                                                   to_transition=policy_action_to_transition,
                                                   to_output=transition_to_policy_action)
    normalizers = [s for s in pre.steps if isinstance(s, NormalizerProcessorStep)]
    if not normalizers:
        raise ImportFailedError(f"{path}/policy_preprocessor.json has no normalizer step: the import needs "
                                "the dataset statistics it carries", reason="not_a_checkpoint")
    step = normalizers[0]
    stats = {
        key: {name: np.asarray(value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value,
                               dtype=np.float64) for name, value in entry.items()}
        for key, entry in (step.stats or {}).items()
    }
    modes = {getattr(k, "value", str(k)): getattr(v, "value", str(v)) for k, v in step.norm_map.items()}
    return Checkpoint(path=path, config=config, policy=policy, preprocessor=pre, postprocessor=post, stats=stats,
                      norm_modes=modes, eps=float(step.eps), fps=_read_fps(path))


# --- the spec --------------------------------------------------------------------------------------
def _flat(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def _stats_of(ckpt: Checkpoint, key: str, names: tuple[str, ...]) -> list[np.ndarray]:
    entry = ckpt.stats.get(key)
    if entry is None or any(n not in entry for n in names):
        raise ImportFailedError(f"the checkpoint's normaliser has no {'/'.join(names)} statistics for '{key}'",
                                reason="missing_stats")
    return [entry[n] for n in names]


def _vector_normalisation(ckpt: Checkpoint, key: str, kind: str, inverse: bool) -> dict[str, Any]:
    """Spec fields for a state (forward) or action (inverse) normalisation, matching LeRobot's
    arithmetic exactly: forward MEAN_STD divides by std + eps, MIN_MAX / QUANTILES by (high - low),
    with eps where the range is 0."""
    mode = ckpt.norm_modes.get(kind, "IDENTITY")
    eps = ckpt.eps
    if mode == "IDENTITY":
        return {"normalization": "none"}
    if mode == "MEAN_STD":
        mean, std = _stats_of(ckpt, key, ("mean", "std"))
        std = std if inverse else std + eps
        return {"normalization": "mean_std", "mean": _flat(mean), "std": _flat(np.maximum(std, 1e-12))}
    pairs = {"MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"), "QUANTILE10": ("q10", "q90")}
    if mode not in pairs:
        raise ImportFailedError(f"normalisation mode {mode} of {kind} is not supported", reason="unsupported_norm")
    low, high = _stats_of(ckpt, key, pairs[mode])
    high = np.where(high - low == 0, low + eps, high)
    if inverse:
        name = "min_max" if mode == "MIN_MAX" else "q01_q99"
    else:
        name = "min_max"  # the state side has one [-1, 1] range mapping; QUANTILES is the same formula
    return {"normalization": name, "low": _flat(low), "high": _flat(high)}


def camera_name(key: str) -> str:
    return key[len(IMAGE_PREFIX):]


def input_name(key: str) -> str:
    """ONNX input name of a LeRobot feature: ``observation.images.top`` -> ``image_top``."""
    if key.startswith(IMAGE_PREFIX):
        return "image_" + "".join(c if c.isalnum() else "_" for c in camera_name(key))
    if key == STATE_KEY:
        return "state"
    return "".join(c if c.isalnum() else "_" for c in key)


def _graph_image_size(ckpt: Checkpoint, key: str) -> tuple[int, int, str]:
    """(height, width, resize) of the image a graph takes: LeRobot's SmolVLA / pi0 resize keeping the
    aspect ratio to ``resize_imgs_with_padding`` (width, height), padding on the top / left; ACT takes
    the feature's size."""
    _c, height, width = ckpt.feature_shape(key)
    padded = getattr(ckpt.config, "resize_imgs_with_padding", None)
    if padded:
        return int(padded[1]), int(padded[0]), "letterbox"
    return height, width, "stretch"


def build_spec(ckpt: Checkpoint, *, name: str, graphs: list[dict[str, Any]], fps: float,
               program: dict[str, Any] | None = None, instruction: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model spec (as a mapping) for an imported policy; ``graphs``: the program's graph entries."""
    cameras = []
    visual_mode = ckpt.norm_modes.get("VISUAL", "IDENTITY")
    for key in ckpt.image_keys:
        channels, _h, _w = ckpt.feature_shape(key)
        if channels != 3:
            raise ImportFailedError(f"camera '{key}' has {channels} channels; only RGB cameras are supported",
                                    reason="unsupported_camera")
        height, width, resize = _graph_image_size(ckpt, key)
        cam: dict[str, Any] = {"name": camera_name(key), "input": input_name(key), "height": height, "width": width,
                               "resize": resize, "layout": "NCHW", "dtype": "float32", "color": "rgb"}
        if resize == "letterbox":
            cam["pad"] = "top_left"  # LeRobot's resize_with_pad pads on the left and top
        if visual_mode == "MEAN_STD":
            mean, std = _stats_of(ckpt, key, ("mean", "std"))
            cam.update(normalize="mean_std", mean=_flat(mean)[:3], std=_flat(std + ckpt.eps)[:3])
        elif visual_mode == "IDENTITY":
            cam.update(normalize="zero_one")
        else:
            raise ImportFailedError(f"image normalisation {visual_mode} is not supported", reason="unsupported_norm")
        cameras.append(cam)
    action_feature = ckpt.config.output_features[ACTION_KEY]
    action_dims = int(action_feature.shape[0])
    action = {"output": "actions", "steps": int(ckpt.config.chunk_size), "dims": action_dims,
              "space": "joint_position", "dt": round(1.0 / fps, 9)}
    action.update(_vector_normalisation(ckpt, ACTION_KEY, "ACTION", inverse=True))
    spec: dict[str, Any] = {"name": name, "format": "onnx", "weights": graphs[0]["file"], "cameras": cameras,
                            "instruction": instruction, "action": action}
    if STATE_KEY in ckpt.config.input_features:
        state = {"input": "state", "dims": int(ckpt.feature_shape(STATE_KEY)[0])}
        state.update(_vector_normalisation(ckpt, STATE_KEY, "STATE", inverse=False))
        spec["state"] = state
    spec["program"] = dict(program or {"kind": "single_pass"}, graphs=graphs)
    return spec


# --- export ----------------------------------------------------------------------------------------
class _ACTGraph:
    """ACT's network as one graph: normalised images (one tensor per camera) and state in, the
    normalised action chunk out (LeRobot's ``predict_action_chunk`` without the processors)."""

    def __new__(cls, ckpt: Checkpoint):
        import torch

        class ACTGraph(torch.nn.Module):
            def __init__(self, policy, image_keys, has_state):
                super().__init__()
                self.model = policy.model
                self.image_keys = list(image_keys)
                self.has_state = has_state

            def forward(self, *tensors):
                images = list(tensors[:len(self.image_keys)])
                batch = dict(zip(self.image_keys, images))
                batch["observation.images"] = images
                if self.has_state:
                    batch[STATE_KEY] = tensors[len(self.image_keys)]
                return self.model(batch)[0]

        return ACTGraph(ckpt.policy, ckpt.image_keys, STATE_KEY in ckpt.config.input_features).eval()


class _SmolVLAGraph:
    """SmolVLA's whole sampling as one graph (the unrolled loop, noise an input): images already
    resized with top/left padding in [0, 1], token ids (int64) and mask (bool), normalised state,
    noise (B, chunk, action dims) in; the normalised action chunk out. Inside: images to [-1, 1],
    state and noise zero-padded to the model's max dims, the vision-language prefix and its key/value
    cache computed once, then ``num_steps`` Euler steps of the action expert, as LeRobot's
    ``sample_actions`` does. The noise of the padded action dimensions is zero: the parity check feeds
    LeRobot the same padded noise."""

    def __new__(cls, ckpt: Checkpoint):
        import torch

        config = ckpt.config

        class SmolVLAGraph(torch.nn.Module):
            def __init__(self, policy, n_images):
                super().__init__()
                self.model = policy.model
                self.n_images = n_images
                self.max_state = int(config.max_state_dim)
                self.max_action = int(config.max_action_dim)
                self.action_dims = int(config.output_features[ACTION_KEY].shape[0])

            def forward(self, *tensors):
                n = self.n_images
                images = [t * 2.0 - 1.0 for t in tensors[:n]]
                tokens, token_mask, state, noise = tensors[n:n + 4]
                batch = state.shape[0]
                masks = [torch.ones(batch, dtype=torch.bool, device=state.device) for _ in images]
                state = torch.nn.functional.pad(state, (0, self.max_state - state.shape[-1]))
                noise = torch.nn.functional.pad(noise, (0, self.max_action - noise.shape[-1]))
                actions = self.model.sample_actions(images, masks, tokens, token_mask, state, noise=noise)
                return actions[:, :, :self.action_dims]

        return SmolVLAGraph(ckpt.policy, len(ckpt.image_keys)).eval()


def _tokenizer_step(ckpt: Checkpoint):
    from lerobot.processor.tokenizer_processor import TokenizerProcessorStep

    steps = [s for s in ckpt.preprocessor.steps if isinstance(s, TokenizerProcessorStep)]
    if not steps:
        raise ImportFailedError("the preprocessor has no tokenizer step: a language policy needs one",
                                reason="not_a_checkpoint")
    return steps[0]


def _smolvla_instruction(ckpt: Checkpoint, out_dir: Path) -> dict[str, Any]:
    """tokenizer.json (the one the preprocessor loads) + the prompt template LeRobot's processors apply."""
    step = _tokenizer_step(ckpt)
    tok = step.input_tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ImportFailedError("the policy's tokenizer is not a fast (tokenizers) tokenizer; vla_accel reads "
                                "tokenizer.json", reason="unsupported_tokenizer")
    backend.save(str(out_dir / "tokenizer.json"))
    return {"input": "tokens", "mask_input": "token_mask", "tokenizer": "tokenizer.json",
            "max_tokens": int(step.max_length), "prompt_template": "{instruction}\n",  # SmolVLANewLineProcessor
            "pad_id": int(tok.pad_token_id or 0), "vocab_size": int(len(tok)),
            "ids_dtype": "int64", "mask_dtype": "bool"}


def _example_tensors(ckpt: Checkpoint, batch: int, seed: int = 0) -> tuple[list[str], list[Any]]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    names, tensors = [], []
    for key in ckpt.image_keys:
        names.append(input_name(key))
        height, width, _resize = _graph_image_size(ckpt, key)
        tensors.append(torch.rand((batch, 3, height, width), generator=gen))
    if ckpt.type == "smolvla":
        length = int(_tokenizer_step(ckpt).max_length)
        names += ["tokens", "token_mask"]
        tensors.append(torch.randint(0, 8, (batch, length), generator=gen))
        tensors.append(torch.arange(length)[None, :].expand(batch, length) < length // 2)
    if STATE_KEY in ckpt.config.input_features:
        names.append("state")
        tensors.append(torch.randn((batch, *ckpt.feature_shape(STATE_KEY)), generator=gen))
    if ckpt.type == "smolvla":
        names.append("noise")
        dims = int(ckpt.config.output_features[ACTION_KEY].shape[0])
        tensors.append(torch.randn((batch, int(ckpt.config.chunk_size), dims), generator=gen))
    return names, tensors


def onnx_batch_dims(path: Path) -> dict[str, int | str]:
    """Each graph input's first dimension: an int when the exporter fixed it, its symbol otherwise."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out: dict[str, int | str] = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims:
            out[value.name] = dims[0].dim_value if dims[0].HasField("dim_value") else (dims[0].dim_param or "?")
    return out


def batch_dynamic_shapes(module: Any, tensors: list[Any]) -> tuple:
    """torch.export's ``dynamic_shapes`` for ``module(*tensors)``: dimension 0 of every input is one
    shared dynamic batch (a ``forward(*tensors)`` signature takes them as one varargs entry)."""
    import inspect

    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    per_input = tuple({0: batch} for _ in tensors)
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL
                  for p in inspect.signature(module.forward).parameters.values())
    return (per_input,) if varargs else per_input


def export_onnx(module: Any, names: list[str], tensors: list[Any], output_names: list[str], path: Path,
                progress: Callable[[str], None], opset: int = 18,
                external_data_bytes: int = ONNX_EXTERNAL_DATA_BYTES) -> dict[str, Any]:
    """Export ``module`` with the dynamo exporter, a dynamic batch asked for; returns what came out:
    the batch actually exported (0 = dynamic) and whether the weights went to external data."""
    import torch

    n_params = sum(p.numel() for p in module.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    progress(f"exporting {path.name}: {n_params / 1e6:.1f}M parameters, {weight_bytes / 1e6:.0f} MB of weights "
             f"(opset {opset}, dynamo exporter)")
    dynamic_shapes = batch_dynamic_shapes(module, tensors)
    t0 = time.perf_counter()
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):  # one INFO line per folded initializer otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with torch.no_grad():
        program = torch.onnx.export(module, tuple(tensors), None, dynamo=True, opset_version=opset,
                                    input_names=names, output_names=output_names,
                                    dynamic_shapes=dynamic_shapes, verbose=False, optimize=True)
    progress(f"traced and converted in {time.perf_counter() - t0:.1f}s; saving")
    external = weight_bytes > external_data_bytes
    program.save(str(path), external_data=external)
    dims = onnx_batch_dims(path)
    fixed = sorted({d for d in dims.values() if isinstance(d, int) and d > 0})
    exported_batch = fixed[0] if fixed else 0
    if fixed:
        progress(f"the exporter fixed the batch to {fixed} (inputs: {dims}); declared in the spec as batch: "
                 f"{exported_batch}")
    size = path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".data"))
    progress(f"wrote {path.name} ({size / 1e6:.1f} MB{', weights as external data' if external else ''})")
    return {"batch": exported_batch, "external_data": external, "input_batch_dims": dims}


def export_pt2_program(module: Any, tensors: list[Any], path: Path, progress: Callable[[str], None],
                       tolerance: float) -> dict[str, Any]:
    """The same graph as a torch.export program (``.pt2``: graph + weights, no LeRobot code), with a
    dynamic batch, for the ``cuda`` backend (which moves it to the GPU and captures it in CUDA graphs).
    Loaded back and run on the CPU against the module it came from; off by more than ``tolerance``
    is a ParityError. Returns the file name, the batch it was exported with and that difference."""
    import torch

    from vla_accel.models.export_pt2 import load_program

    progress(f"exporting {path.name} (torch.export program, dynamic batch)")
    t0 = time.perf_counter()
    dynamic_shapes = batch_dynamic_shapes(module, tensors)
    with torch.no_grad():
        try:
            program = torch.export.export(module, tuple(tensors), dynamic_shapes=dynamic_shapes, strict=False)
            exported_batch = 0
        except Exception as exc:  # a graph that specialises its batch: export it at the example's batch
            progress(f"a dynamic batch did not export ({type(exc).__name__}); exporting at batch {tensors[0].shape[0]}")
            program = torch.export.export(module, tuple(tensors), strict=False)
            exported_batch = int(tensors[0].shape[0])
        torch.export.save(program, str(path))
        expected = module(*tensors)
        got = load_program(path, "cpu")(*tensors)
    got = got[0] if isinstance(got, (tuple, list)) else got
    diff = float((got.float() - expected.float()).abs().max())
    progress(f"wrote {path.name} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f}s; "
             f"max |Δ| against the module on the CPU {diff:.2e}")
    if not diff <= tolerance:
        raise ParityError(f"{path.name}: the torch.export program is {diff:.3e} off the module it came from "
                          f"(tolerance {tolerance:g})", reason="parity_failed")
    return {"file": path.name, "batch": exported_batch, "max_abs_vs_module_cpu": diff}


# --- parity ----------------------------------------------------------------------------------------
def raw_observations(ckpt: Checkpoint, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Seeded raw observations: uint8 HxWx3 frames at each camera's size, states around the mean."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        obs: dict[str, np.ndarray] = {}
        for key in ckpt.image_keys:
            _c, h, w = ckpt.feature_shape(key)
            obs[key] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if STATE_KEY in ckpt.config.input_features:
            dims = ckpt.feature_shape(STATE_KEY)[0]
            entry = ckpt.stats.get(STATE_KEY, {})
            mean = entry.get("mean", np.zeros(dims))
            std = entry.get("std", np.ones(dims))
            obs[STATE_KEY] = (mean + std * rng.uniform(-1.5, 1.5, dims)).astype(np.float32)
        obs["task"] = str(rng.choice(TASKS))
        obs["noise"] = rng.standard_normal((int(ckpt.config.chunk_size),
                                            int(ckpt.config.output_features[ACTION_KEY].shape[0]))).astype(np.float32)
        out.append(obs)
    return out


TASKS = ("pick up the red cube", "open the drawer", "put the cup on the plate")


def lerobot_actions(ckpt: Checkpoint, observations: list[dict[str, np.ndarray]]) -> np.ndarray:
    """LeRobot's answer: preprocessor -> predict_action_chunk -> postprocessor, one batch."""
    import torch

    batch: dict[str, Any] = {}
    for key in ckpt.image_keys:
        frames = np.stack([o[key] for o in observations]).astype(np.float32) / 255.0
        batch[key] = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    if STATE_KEY in ckpt.config.input_features:
        batch[STATE_KEY] = torch.from_numpy(np.stack([o[STATE_KEY] for o in observations]))
    kwargs = {}
    if ckpt.type == "smolvla":
        batch["task"] = [o["task"] for o in observations]
        noise = torch.from_numpy(np.stack([o["noise"] for o in observations]))
        kwargs["noise"] = torch.nn.functional.pad(noise, (0, int(ckpt.config.max_action_dim) - noise.shape[-1]))
    with torch.no_grad():
        ckpt.policy.reset()
        normalised = ckpt.preprocessor(batch)
        chunk = ckpt.policy.predict_action_chunk(normalised, **kwargs)
        actions = ckpt.postprocessor(chunk)
    return actions.detach().cpu().numpy().astype(np.float64)


def vla_accel_actions(spec_path: Path, ckpt: Checkpoint, observations: list[dict[str, np.ndarray]],
                      backend_name: str = "onnxruntime", precision: str = "fp32") -> np.ndarray:
    """vla_accel's answer: the spec's preprocessing -> backend -> un-normalisation (the node's Engine)."""
    from vla_accel.backends.base import BackendOptions
    from vla_accel.backends.registry import create_backend
    from vla_accel.core.engine import Engine
    from vla_accel.core.types import Observation
    from vla_accel.models import load_model

    bundle = load_model(spec_path)
    batch = len(observations)
    backend = create_backend(backend_name, bundle, BackendOptions(max_batch=batch, precision=precision)).load()
    try:
        engine = Engine(bundle, backend, max_batch=batch, memory="dynamic")
        obs = [Observation(images={camera_name(k): o[k] for k in ckpt.image_keys}, instruction=o["task"],
                           stamp_ns=i + 1, state=o.get(STATE_KEY)) for i, o in enumerate(observations)]
        prepared = engine.prepare(obs)
        if prepared.rejected:
            raise ParityError(f"vla_accel rejected parity observations: {prepared.rejected[0][1]}",
                              reason="parity_dropped")
        if bundle.spec.program.noise in bundle.spec.program.graphs[0].inputs:
            # the same noise LeRobot gets (the runtime would otherwise draw its own, seeded)
            prepared.inputs[bundle.spec.program.noise] = np.stack([o["noise"] for o in observations])
        chunks = engine.finish(prepared, engine.run(prepared))
    finally:
        backend.close()
    if len(chunks) != batch:
        raise ParityError(f"vla_accel returned {len(chunks)} chunks for {batch} observations", reason="parity_dropped")
    return np.stack([np.asarray(c.values, dtype=np.float64) for c in chunks])


@dataclasses.dataclass
class ParityRow:
    case: str
    batch: int
    max_abs: float
    mean_abs: float
    action_scale: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs) and self.max_abs <= self.tolerance)


def parity_table(rows: list[ParityRow]) -> str:
    lines = [f"{'case':<24} {'batch':>5} {'max |Δ|':>11} {'mean |Δ|':>11} {'|a| max':>9} {'tol':>9}  result",
             "-" * 80]
    for r in rows:
        lines.append(f"{r.case:<24} {r.batch:>5} {r.max_abs:>11.3e} {r.mean_abs:>11.3e} {r.action_scale:>9.3g} "
                     f"{r.tolerance:>9.1e}  {'ok' if r.ok else 'FAIL'}")
    return "\n".join(lines)


def check_parity(ckpt: Checkpoint, spec_path: Path, *, tolerance: float, seed: int = 0,
                 batches: tuple[int, ...] = (1, 3)) -> list[ParityRow]:
    rows = []
    for i, batch in enumerate(batches):
        observations = raw_observations(ckpt, batch, seed + i)
        ref = lerobot_actions(ckpt, observations)
        got = vla_accel_actions(spec_path, ckpt, observations)
        if ref.shape != got.shape:
            raise ParityError(f"action shapes differ: LeRobot {ref.shape}, vla_accel {got.shape}",
                              reason="parity_shape")
        diff = np.abs(ref - got)
        rows.append(ParityRow(f"raw obs -> actions (seed {seed + i})", batch, float(diff.max()), float(diff.mean()),
                              float(np.abs(ref).max()), tolerance))
    return rows


# --- the command -----------------------------------------------------------------------------------
def import_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, name: str = "", fps: float | None = None,
                      tolerance: float = 1e-4, seed: int = 0, force: bool = False,
                      show_progress: bool = True, pt2: bool = False) -> dict[str, Any]:
    """Import ``checkpoint`` into ``out_dir`` (spec.yaml, model.onnx, parity.json; with ``pt2`` also
    model.pt2 and spec-pt2.yaml, the same policy as a torch.export program for the cuda backend);
    returns the report."""
    import yaml

    progress = Progress(show_progress)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ImportFailedError(f"{out_dir} exists and is not empty (pass --force to replace it)", reason="out_exists")
    ckpt = load_checkpoint(checkpoint, progress)
    rate = fps or ckpt.fps
    if not rate:
        raise ImportFailedError("the checkpoint does not say its control rate (no train_config.json with env.fps or "
                                "dataset fps): pass --fps", reason="missing_fps")
    name = name or f"lerobot-{ckpt.type}"
    tmp = out_dir.parent / f".{out_dir.name}.importing-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        graph_path = tmp / "model.onnx"
        module = _ACTGraph(ckpt) if ckpt.type == "act" else _SmolVLAGraph(ckpt)
        names, tensors = _example_tensors(ckpt, batch=2)
        exported = export_onnx(module, names, tensors, ["actions"], graph_path, progress)
        graphs = [{"name": "policy", "inputs": names, "outputs": ["actions"], "file": graph_path.name,
                   "batch": exported["batch"]}]
        instruction = None
        if ckpt.type == "smolvla":
            instruction = _smolvla_instruction(ckpt, tmp)
            graphs[0]["dtypes"] = {"tokens": "int64", "token_mask": "bool"}
        spec = build_spec(ckpt, name=name, graphs=graphs, fps=rate, instruction=instruction)
        spec_path = tmp / "spec.yaml"
        header = (f"# Imported from the LeRobot {ckpt.type} checkpoint {Path(checkpoint).resolve()} by "
                  "`vla-accel import lerobot`.\n# Normalisation statistics come from its pre/post-processors; "
                  f"dt from {'--fps' if fps else 'train_config.json'} ({rate:g} Hz).\n")
        spec_path.write_text(header + yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        pt2_report = None
        if pt2:
            pt2_report = export_pt2_program(module, tensors, tmp / "model.pt2", progress, tolerance)
            pt2_graph = dict(graphs[0], file="model.pt2", batch=pt2_report["batch"])
            pt2_spec = dict(build_spec(ckpt, name=f"{name}-pt2", graphs=[pt2_graph], fps=rate,
                                       instruction=instruction), format="pt2", weights="model.pt2")
            (tmp / "spec-pt2.yaml").write_text(
                header + "# The same policy as a torch.export program: run it with backend cuda.\n"
                + yaml.safe_dump(pt2_spec, sort_keys=False), encoding="utf-8")
        from vla_accel.core.spec import ModelSpec

        ModelSpec.from_yaml(spec_path)  # the spec loads as any user spec does
        progress(f"checking parity against LeRobot (tolerance {tolerance:g})")
        rows = check_parity(ckpt, spec_path, tolerance=tolerance, seed=seed)
        table = parity_table(rows)
        print(table, flush=True)
        report = {"checkpoint": str(Path(checkpoint).resolve()), "policy": ckpt.type, "name": name,
                  "fps": rate, "export": {k: v for k, v in exported.items()}, "tolerance": tolerance,
                  "parity": [dataclasses.asdict(r) | {"ok": r.ok} for r in rows],
                  "parameters": int(sum(p.numel() for p in ckpt.policy.parameters()))}
        if pt2_report is not None:
            report["pt2"] = pt2_report
        (tmp / "parity.json").write_text(json.dumps(report, indent=2))
        if not all(r.ok for r in rows):
            worst = max(r.max_abs for r in rows)
            raise ParityError(f"parity off: max |Δ| {worst:.3e} > tolerance {tolerance:g}; no spec written to "
                              f"{out_dir} (the failed attempt is kept in {tmp} for inspection)", reason="parity_failed")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        progress(f"wrote {out_dir / 'spec.yaml'} (+ model.onnx, parity.json)")
        return report
    except ParityError:
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
