"""Reference VLA models and user model specs.

``load_model("tiny" | "tiny-2cam" | "base" | "/path/spec.yaml")`` returns a ``ModelBundle``.
Importing this package does not import torch; the network is built on first use.
"""
from __future__ import annotations

from pathlib import Path

from vla_accel.errors import SpecError
from vla_accel.models.bundle import ModelBundle, default_cache_dir

SPECS_DIR = Path(__file__).resolve().parent / "specs"

__all__ = ["ModelBundle", "builtin_models", "default_cache_dir", "load_model", "SPECS_DIR"]


def builtin_models() -> list[str]:
    """Names of the shipped reference models (their specs live in vla_accel/models/specs/)."""
    return sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))


def load_model(name_or_path: str | Path, cache_dir: str | Path | None = None) -> ModelBundle:
    """A built-in model by name, or a user model from its spec YAML (whose ``weights`` / ``format``
    may name a safetensors file for the reference network or a ready .onnx / .tflite / OpenVINO
    .xml / TensorRT .engine file)."""
    from vla_accel.core.spec import ModelSpec

    text = str(name_or_path)
    if text in builtin_models():
        spec = ModelSpec.from_yaml(SPECS_DIR / f"{text}.yaml")
        return ModelBundle(spec, name=text, cache_dir=cache_dir, builtin=True)
    path = Path(text).expanduser()
    if path.suffix.lower() in (".yaml", ".yml") or path.exists():
        if path.is_dir():
            raise SpecError(f"{path} is a folder; pass the model spec YAML file inside it")
        return ModelBundle(ModelSpec.from_yaml(path), cache_dir=cache_dir)
    raise SpecError(
        f"unknown model {text!r}: not a built-in ({', '.join(builtin_models())}) and not a spec file path"
    )
