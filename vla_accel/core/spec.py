"""The model I/O contract: ``ModelSpec``, loaded from a YAML file shipped beside a model file.

A spec says everything the runtime must know to feed a VLA network and read its answer, so that a
user can plug in their own export without touching code:

* cameras: which images, at what size, resized how, normalised how, in which layout and dtype;
* instruction: tokenizer, max tokens, prompt template (e.g. OpenVLA's
  ``"In: What action should the robot take to {instruction}?\\nOut:"``), the longest accepted text;
* optional robot state: dimensions and normalisation;
* outputs: action chunk steps x dims, dimension names, action space, dt between steps,
  un-normalisation statistics (q01/q99 or mean/std, with a mask) and clip bounds.

Tensor names (``input`` / ``output`` keys) are the contract with every backend: the reference
network and every export of it use exactly these names.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vla_accel.core.program import ProgramSpec, program_from_dict
from vla_accel.errors import SpecError, UnknownCameraError

RESIZE_MODES = ("stretch", "letterbox", "center_crop")
IMAGE_NORMALISATIONS = ("mean_std", "minus_one_one", "zero_one", "none")
LAYOUTS = ("NCHW", "NHWC")
IMAGE_DTYPES = ("float32", "float16", "uint8")
COLOR_ORDERS = ("rgb", "bgr")
ACTION_SPACES = (
    "eef_delta",
    "eef_pose",
    "eef_velocity",
    "joint_position",
    "joint_velocity",
    "joint_delta",
    "gripper",
    "mixed",
)
ACTION_NORMALISATIONS = ("none", "mean_std", "q01_q99", "min_max")
STATE_NORMALISATIONS = ("none", "mean_std", "min_max")
PAD_POSITIONS = ("center", "bottom_right", "top_left")
TOKEN_ID_DTYPES = ("int32", "int64")
TOKEN_MASK_DTYPES = ("float32", "bool", "int64", "int32")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _floats(value: Any, n: int, what: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{what} must be a list of {n} numbers, got {value!r}") from exc
    if len(out) != n:
        raise SpecError(f"{what} must have {n} values, got {len(out)}")
    if not all(math.isfinite(v) for v in out):
        raise SpecError(f"{what} must be finite numbers, got {out}")
    return out


def _choice(value: Any, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise SpecError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _positive_int(value: Any, what: str, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecError(f"{what} must be a positive integer, got {value!r}")
    if maximum is not None and value > maximum:
        raise SpecError(f"{what} must be at most {maximum}, got {value}")
    return value


@dataclass(frozen=True)
class CameraSpec:
    """One camera input. ``input`` is the tensor name the network reads it from."""

    name: str
    input: str
    height: int
    width: int
    resize: str = "stretch"
    normalize: str = "mean_std"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    layout: str = "NCHW"
    dtype: str = "float32"
    color: str = "rgb"
    # letterbox only: where the padding goes. bottom_right pads below / right of the image (openpi's
    # resize_with_pad); top_left pads above / left of it (LeRobot 0.4's SmolVLA / pi0 resize_with_pad);
    # center pads evenly around it
    pad: str = "center"

    def validate(self) -> None:
        if not self.name or not self.input:
            raise SpecError("camera needs a non-empty name and input tensor name")
        _positive_int(self.height, f"camera '{self.name}' height", 8192)
        _positive_int(self.width, f"camera '{self.name}' width", 8192)
        _choice(self.resize, RESIZE_MODES, f"camera '{self.name}' resize")
        _choice(self.normalize, IMAGE_NORMALISATIONS, f"camera '{self.name}' normalize")
        _choice(self.layout, LAYOUTS, f"camera '{self.name}' layout")
        _choice(self.dtype, IMAGE_DTYPES, f"camera '{self.name}' dtype")
        _choice(self.color, COLOR_ORDERS, f"camera '{self.name}' color")
        _choice(self.pad, PAD_POSITIONS, f"camera '{self.name}' pad")
        _floats(self.mean, 3, f"camera '{self.name}' mean")
        std = _floats(self.std, 3, f"camera '{self.name}' std")
        if any(s <= 0 for s in std):
            raise SpecError(f"camera '{self.name}' std must be > 0, got {std}")
        if self.dtype == "uint8" and self.normalize not in ("none",):
            raise SpecError(f"camera '{self.name}': dtype uint8 needs normalize: none")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-sample tensor shape (without the batch dimension)."""
        if self.layout == "NCHW":
            return (3, self.height, self.width)
        return (self.height, self.width, 3)


@dataclass(frozen=True)
class InstructionSpec:
    """The language instruction: tokenised into ``input`` (ids, ``ids_dtype``) and ``mask_input`` (0/1,
    ``mask_dtype``). ``enabled: false`` (or ``instruction: null`` in YAML) for policies without
    language (ACT, Diffusion Policy): no token inputs, and observations need no instruction."""

    input: str = "tokens"
    mask_input: str = "token_mask"
    tokenizer: str = "byte"  # "byte" (built in) or a path to a Hugging Face tokenizer.json
    max_tokens: int = 32
    prompt_template: str = "{instruction}"
    max_chars: int = 1024  # longer instructions are rejected (InstructionError), not truncated silently
    pad_id: int = 0
    vocab_size: int = 260
    enabled: bool = True
    ids_dtype: str = "int32"
    mask_dtype: str = "float32"

    def validate(self) -> None:
        _choice(self.ids_dtype, TOKEN_ID_DTYPES, "instruction ids_dtype")
        _choice(self.mask_dtype, TOKEN_MASK_DTYPES, "instruction mask_dtype")
        if not isinstance(self.enabled, bool):
            raise SpecError(f"instruction enabled must be true or false, got {self.enabled!r}")
        _positive_int(self.max_tokens, "instruction max_tokens", 4096)
        _positive_int(self.max_chars, "instruction max_chars", 1_000_000)
        _positive_int(self.vocab_size, "instruction vocab_size")
        if "{instruction}" not in self.prompt_template:
            raise SpecError(
                "instruction prompt_template must contain '{instruction}', got "
                f"{self.prompt_template!r}"
            )
        if not self.input or not self.mask_input:
            raise SpecError("instruction needs input and mask_input tensor names")


@dataclass(frozen=True)
class StateSpec:
    """Optional proprioceptive state, fed as float32 ``input`` of shape (B, dims). Normalisation:
    ``mean_std`` (x - mean) / std, or ``min_max`` 2 (x - low) / (high - low) - 1 (LeRobot MIN_MAX)."""

    input: str = "state"
    dims: int = 8
    names: tuple[str, ...] = ()
    normalization: str = "none"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    def validate(self) -> None:
        _positive_int(self.dims, "state dims", 1024)
        if self.names and len(self.names) != self.dims:
            raise SpecError(f"state names has {len(self.names)} entries, dims is {self.dims}")
        _choice(self.normalization, STATE_NORMALISATIONS, "state normalization")
        if self.normalization == "mean_std":
            _floats(self.mean, self.dims, "state mean")
            if any(s <= 0 for s in _floats(self.std, self.dims, "state std")):
                raise SpecError("state std must be > 0")
        if self.normalization == "min_max":
            lo = _floats(self.low, self.dims, "state low (min)")
            hi = _floats(self.high, self.dims, "state high (max)")
            if any(h <= l for l, h in zip(lo, hi)):
                raise SpecError("state high (max) must be > low (min) in every dimension")


@dataclass(frozen=True)
class ActionSpec:
    """The action chunk the network outputs as ``output`` of shape (B, steps, dims), normalised.

    Un-normalisation, applied per dimension where ``mask`` is true:
      * ``q01_q99``: a = (x + 1) / 2 * (high - low) + low   (OpenVLA / Octo convention; x in [-1, 1])
      * ``min_max``: the same formula with low / high the dataset min / max (LeRobot MIN_MAX)
      * ``mean_std``: a = x * std + mean
    Then values are clipped to ``clip_low`` / ``clip_high`` when given.
    """

    output: str = "actions"
    steps: int = 8
    dims: int = 7
    names: tuple[str, ...] = ()
    space: str = "eef_delta"
    dt: float = 0.1
    normalization: str = "none"
    low: tuple[float, ...] = ()  # q01
    high: tuple[float, ...] = ()  # q99
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    mask: tuple[bool, ...] = ()
    clip_low: tuple[float, ...] = ()
    clip_high: tuple[float, ...] = ()

    def validate(self) -> None:
        _positive_int(self.steps, "action steps", 1024)
        _positive_int(self.dims, "action dims", 1024)
        if self.names and len(self.names) != self.dims:
            raise SpecError(f"action names has {len(self.names)} entries, dims is {self.dims}")
        _choice(self.space, ACTION_SPACES, "action space")
        if not (isinstance(self.dt, (int, float)) and math.isfinite(self.dt) and self.dt > 0):
            raise SpecError(f"action dt must be a positive number of seconds, got {self.dt!r}")
        _choice(self.normalization, ACTION_NORMALISATIONS, "action normalization")
        if self.normalization in ("q01_q99", "min_max"):
            lo = _floats(self.low, self.dims, "action low (q01 / min)")
            hi = _floats(self.high, self.dims, "action high (q99 / max)")
            if any(h < l for l, h in zip(lo, hi)):
                raise SpecError("action high (q99) must be >= low (q01) in every dimension")
        if self.normalization == "mean_std":
            _floats(self.mean, self.dims, "action mean")
            if any(s <= 0 for s in _floats(self.std, self.dims, "action std")):
                raise SpecError("action std must be > 0")
        if self.mask and len(self.mask) != self.dims:
            raise SpecError(f"action mask has {len(self.mask)} entries, dims is {self.dims}")
        if bool(self.clip_low) != bool(self.clip_high):
            raise SpecError("action clip needs both low and high")
        if self.clip_low:
            lo = _floats(self.clip_low, self.dims, "action clip low")
            hi = _floats(self.clip_high, self.dims, "action clip high")
            if any(h < l for l, h in zip(lo, hi)):
                raise SpecError("action clip high must be >= clip low in every dimension")


@dataclass(frozen=True)
class ModelSpec:
    """A VLA model's I/O contract. ``weights`` is resolved relative to the YAML file's folder."""

    name: str
    cameras: tuple[CameraSpec, ...]
    instruction: InstructionSpec
    action: ActionSpec
    state: StateSpec | None = None
    weights: str = ""
    format: str = "safetensors"  # safetensors (reference torch network), onnx, tflite, openvino, engine
    architecture: Mapping[str, Any] = field(default_factory=dict)  # reference-network hyperparameters
    source: Path | None = None  # the YAML file this spec came from
    program: ProgramSpec = field(default_factory=ProgramSpec)  # single_pass unless the spec says otherwise

    def validate(self) -> "ModelSpec":
        if not self.name:
            raise SpecError("model spec needs a name")
        if not self.cameras:
            raise SpecError(f"model spec '{self.name}' needs at least one camera")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise SpecError(f"camera names must be unique, got {names}")
        for cam in self.cameras:
            cam.validate()
        self.instruction.validate()
        self.action.validate()
        if self.state is not None:
            self.state.validate()
        tensor_names = [c.input for c in self.cameras] + [self.action.output]
        if self.instruction.enabled:
            tensor_names += [self.instruction.input, self.instruction.mask_input]
        if self.state is not None:
            tensor_names.append(self.state.input)
        if len(set(tensor_names)) != len(tensor_names):
            raise SpecError(f"tensor names must be unique, got {tensor_names}")
        self.program.validate(self.input_names, self.action.output)
        return self

    @property
    def input_names(self) -> tuple[str, ...]:
        names = [c.input for c in self.cameras]
        if self.instruction.enabled:
            names += [self.instruction.input, self.instruction.mask_input]
        if self.state is not None:
            names.append(self.state.input)
        return tuple(names)

    @property
    def output_names(self) -> tuple[str, ...]:
        return (self.action.output,)

    @property
    def action_names(self) -> tuple[str, ...]:
        """The action dimensions' names: the spec's, else a0, a1, ... (names are optional)."""
        return self.action.names or tuple(f"a{i}" for i in range(self.action.dims))

    @property
    def fixed_batch(self) -> int:
        """The smallest fixed batch among the program's graphs; 0 when every graph takes any batch."""
        fixed = [g.batch for g in self.program.graphs if g.batch]
        return min(fixed) if fixed else 0

    def camera(self, name: str) -> CameraSpec:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise UnknownCameraError(f"no camera '{name}' in spec '{self.name}'; cameras: {[c.name for c in self.cameras]}")

    def weights_path(self) -> Path | None:
        if not self.weights:
            return None
        p = Path(self.weights)
        if not p.is_absolute() and self.source is not None:
            p = self.source.parent / p
        return p

    # --- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def clean(obj: Any) -> Any:
            if dataclasses.is_dataclass(obj):
                return {f.name: clean(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
            if isinstance(obj, (tuple, list)):
                return [clean(v) for v in obj]
            if isinstance(obj, Mapping):
                return {k: clean(v) for k, v in obj.items()}
            return obj

        d = clean(self)
        d.pop("source", None)
        if self.program.is_single_pass and not self.program.graphs and self.program == ProgramSpec():
            d.pop("program", None)  # older specs (and their content hashes) stay as they were
        for key, default in (("enabled", True), ("ids_dtype", "int32"), ("mask_dtype", "float32")):
            if d["instruction"].get(key) == default:
                d["instruction"].pop(key)
        for section in ("flow", "diffusion"):  # raw time (the default): older hashes stay as they were
            if d.get("program", {}).get(section, {}).get("time_features", 0) is None:
                d["program"][section].pop("time_features")
        for cam in d["cameras"]:
            if cam.get("pad") == "center":
                cam.pop("pad")
        if d.get("state"):
            for key in ("low", "high"):
                if not d["state"].get(key):
                    d["state"].pop(key, None)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path | None = None) -> "ModelSpec":
        if not isinstance(data, Mapping):
            raise SpecError(f"model spec must be a mapping, got {type(data).__name__}")
        try:
            cams = tuple(_build(CameraSpec, c, "camera") for c in data.get("cameras") or ())
            if "instruction" in data and data["instruction"] is None:
                instruction = InstructionSpec(enabled=False)
            else:
                instruction = _build(InstructionSpec, data.get("instruction") or {}, "instruction")
            action = _build(ActionSpec, data.get("action") or {}, "action")
            state = _build(StateSpec, data["state"], "state") if data.get("state") else None
        except SpecError:
            raise
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SpecError(f"unknown model spec keys: {sorted(unknown)}")
        spec = cls(
            name=str(data.get("name", "")),
            cameras=cams,
            instruction=instruction,
            action=action,
            state=state,
            weights=str(data.get("weights", "")),
            format=str(data.get("format", "safetensors")),
            architecture=dict(data.get("architecture") or {}),
            source=source,
            program=program_from_dict(data.get("program")),
        )
        return spec.validate()

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ModelSpec":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise SpecError(f"model spec file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise SpecError(f"model spec {path} is not valid YAML: {exc}") from exc
        return cls.from_dict(data, source=path.resolve())

    def to_yaml(self, path: str | Path) -> Path:
        import yaml

        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        return path


def _build(kind: type, data: Any, what: str):
    if not isinstance(data, Mapping):
        raise SpecError(f"{what} must be a mapping, got {data!r}")
    allowed = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(data) - set(allowed)
    if unknown:
        raise SpecError(f"unknown {what} keys: {sorted(unknown)}; allowed: {sorted(allowed)}")
    kwargs = {}
    for key, value in data.items():
        default = allowed[key].default
        if isinstance(value, list) or isinstance(default, tuple):
            value = tuple(value) if isinstance(value, (list, tuple)) else value
        kwargs[key] = value
    try:
        return kind(**kwargs)
    except TypeError as exc:
        raise SpecError(f"{what}: {exc}") from exc


def example_inputs(spec: ModelSpec, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Random but valid model inputs for a spec (warm-up, parity tests, benchmarks)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for cam in spec.cameras:
        shape = (batch, *cam.shape)
        if cam.dtype == "uint8":
            out[cam.input] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        else:
            out[cam.input] = rng.standard_normal(shape).astype(cam.dtype)
    ins = spec.instruction
    if ins.enabled:
        n = ins.max_tokens
        lengths = rng.integers(1, n + 1, size=batch)
        tokens = np.full((batch, n), ins.pad_id, dtype=np.int32)
        mask = np.zeros((batch, n), dtype=np.float32)
        for b, length in enumerate(lengths):
            tokens[b, :length] = rng.integers(1, ins.vocab_size, size=length)
            mask[b, :length] = 1.0
        out[ins.input] = tokens.astype(ins.ids_dtype, copy=False)
        out[ins.mask_input] = mask.astype(ins.mask_dtype, copy=False)
    if spec.state is not None:
        out[spec.state.input] = rng.standard_normal((batch, spec.state.dims)).astype(np.float32)
    return out


def input_signature(spec) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Every model input's per-sample shape (after the batch dimension) and dtype, in spec order:
    the signature every export of the reference network declares."""
    expected: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for cam in spec.cameras:
        expected[cam.input] = (tuple(cam.shape), np.dtype(cam.dtype))
    ins = spec.instruction
    if ins.enabled:
        expected[ins.input] = ((ins.max_tokens,), np.dtype(ins.ids_dtype))
        expected[ins.mask_input] = ((ins.max_tokens,), np.dtype(ins.mask_dtype))
    if spec.state is not None:
        expected[spec.state.input] = ((spec.state.dims,), np.dtype(np.float32))
    return expected


def program_example_feeds(spec, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Observation and runtime inputs of a program by name (example values for exports)."""
    from vla_accel.core.program import call_noise

    program = spec.program
    obs = example_inputs(spec, batch, seed)
    runtime = {
        program.noise: call_noise(seed, 0, (batch, spec.action.steps, spec.action.dims)),
        program.sample: call_noise(seed, 1, (batch, spec.action.steps, spec.action.dims)),
        program.time: program.time_feed(0.5 if program.kind == "flow_matching" else 3, batch),
        "token": np.ones((batch, 1), dtype=np.int64),
        "position": np.ones((batch, 1), dtype=np.int64),
    }
    if program.step_index:
        runtime[program.step_index] = np.zeros((batch,), dtype=np.int64)
    return {**obs, **runtime}
