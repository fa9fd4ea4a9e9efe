"""``RuntimeConfig``: the runtime's typed configuration.

One dataclass for every entry point: the node maps its declared parameters onto it
(``RuntimeConfig.from_values(node_parameters)``), the CLI builds it from options
(``RuntimeConfig(model=..., backend=...)``) and a YAML file gives it directly (``from_yaml``: a flat
mapping, or a ROS 2 parameters file's ``ros__parameters`` section; keys the runtime does not use,
such as topics and QoS, are ignored there). Values are checked when the object is built, against
option lists kept by the modules that own them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from vla_accel.backends.base import PRECISIONS
from vla_accel.core.buffers import MEMORY_STRATEGIES
from vla_accel.core.streaming import STREAM_MODES
from vla_accel.errors import ConfigError
from vla_accel.runtime.conversions import FIRST_ACTION_TYPES, STOP_POLICIES

# "none", not "off": ROS parses an unquoted `-p speedup_baseline:=off` as the boolean false (YAML 1.1).
BASELINE_MODES = ("measure", "cache", "none")
CAMERA_TRANSPORTS = ("raw", "compressed")

_CHOICES = {
    "precision": PRECISIONS,
    "memory": MEMORY_STRATEGIES,
    "speedup_baseline": BASELINE_MODES,
    "streaming_mode": STREAM_MODES,
    "first_action_type": FIRST_ACTION_TYPES,
    "on_stale": STOP_POLICIES,
    "on_shutdown": STOP_POLICIES,
}


@dataclass(frozen=True)
class RuntimeConfig:
    """What the runtime needs to load a model, run it and judge its health (no topics, no QoS)."""

    # model and backend
    model: str = "tiny-vision"
    backend: str = "torch"
    fallback: tuple[str, ...] = ()
    device: str = ""
    precision: str = "fp32"
    threads: int = 0
    delegate_path: str = ""
    backend_extra: Mapping[str, Any] = field(default_factory=dict)
    cache_dir: str = ""
    warmup_iterations: int = 3
    fallback_recover_s: float = 0.0
    fallback_standby: bool = False
    # backend triton: the policy server
    triton_url: str = "localhost:8001"
    triton_model: str = ""
    triton_timeout_s: float = 1.0
    triton_ssl: bool = False
    speedup_baseline: str = "measure"
    parity_check: bool = True
    # inputs
    instruction: str = ""
    stale_image_timeout_s: float = 1.0
    stale_instruction_timeout_s: float = 0.0
    max_image_bytes: int = 64 * 1024 * 1024
    jpeg_reduced_decode: bool = False  # core.preprocess.JPEG_REDUCED_DECODE_DEFAULT
    # outputs
    dry_run: bool = False
    first_action_type: str = "auto"
    action_clip_low: tuple[float, ...] = ()
    action_clip_high: tuple[float, ...] = ()
    on_stale: str = "hold"
    on_shutdown: str = "hold"
    stream_actions: bool = False
    streaming_mode: str = "latest"
    control_rate_hz: float = 0.0
    # health goals
    target_latency_ms: float = 0.0
    min_input_rate_hz: float = 0.0
    drop_warn_ratio: float = 0.5
    stall_error_s: float = 5.0
    # scheduling
    batch_size: int = 1
    max_batch_delay_ms: float = 0.0
    adaptive_batch: bool = False
    memory: str = "static"
    pipeline: bool = False

    def __post_init__(self) -> None:
        problems = []
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                problems.append(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("threads", "warmup_iterations"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and (not math.isfinite(value) or value < 0):
                problems.append(f"{f.name} must be a finite number >= 0, got {value!r}")
        if bool(self.action_clip_low) != bool(self.action_clip_high):
            problems.append("action_clip_low and action_clip_high must be given together")
        if not self.model.strip():
            problems.append("model must name a model (tiny, base, ...) or a spec YAML path")
        if problems:
            raise ConfigError("invalid runtime configuration: " + "; ".join(problems), reason="bad_config")

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "RuntimeConfig":
        """From a mapping of parameter values (the node's, already validated, or a YAML file's);
        keys the runtime does not use are ignored, missing ones keep their defaults."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            value = values[f.name]
            if f.name == "backend_extra":
                value = parse_backend_extra(value) if isinstance(value, str) else dict(value or {})
            elif f.name in ("fallback", "action_clip_low", "action_clip_high"):
                value = tuple(value or ())
            elif f.type == "float" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path, node_name: str = "vla_node") -> "RuntimeConfig":
        """A flat YAML mapping, or a ROS 2 parameters file (``<node>:`` / ``/**:`` ``ros__parameters``)."""
        import yaml

        text = Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of runtime options", reason="bad_config")
        sections = [data.get(key) for key in ("/**", node_name, f"/{node_name}")]
        ros = [s.get("ros__parameters") or {} for s in sections if isinstance(s, dict)]
        values: dict[str, Any] = {}
        if ros:
            for section in ros:
                values.update(section)
        else:
            values = data
        return cls.from_values(values)

    def replace(self, **changes: Any) -> "RuntimeConfig":
        return dataclasses.replace(self, **changes)


def parse_backend_extra(text: str) -> dict[str, Any]:
    """``backend_extra`` (a YAML / JSON mapping in a string) -> dict."""
    import yaml

    if not str(text).strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"'backend_extra' is not valid YAML: {exc}", reason="bad_parameter") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"'backend_extra' must be a mapping, got {text!r}", reason="bad_parameter")
    return data
