"""Committed reference outputs for parity checks of every backend against the torch network.

``scripts/make_reference.py`` writes ``test/data/reference/<model>_fp32.npz`` holding the torch
fp32 actions for ``example_inputs(spec, batch=REFERENCE_BATCH, seed=REFERENCE_SEED)``. Camera
tensors are too large to commit (a 224x224 image pair is over 1 MB), so the file stores the seed and
a SHA-256 of the full input set, plus the small inputs verbatim; ``load_reference`` regenerates the
inputs and fails loudly if they no longer hash the same (e.g. a numpy RNG change) or if the model's
content hash moved (weights generation changed), naming the script that regenerates the files.

Tolerances are per precision (max absolute difference of the normalised actions, which lie in
[-1, 1]): a backend running in a given precision must match the fp32 reference within them.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vla_accel.errors import ModelFileError
from vla_accel.models.weights import tensor_digest

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "test" / "data" / "reference"
# The same files as package data: the node's parity self-check at load (a pip install has no test/).
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
REFERENCE_SEED = 20240917
REFERENCE_BATCH = 2
# Max |a - a_ref| on normalised actions. fp32: reordered float sums only. bf16 has an 8-bit mantissa
# (~4e-3 relative per op, measured ~8e-3 after 4-12 layers); fp16 10 bits; int8 is quantised.
TOLERANCES = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2, "int8": 1.5e-1}
REGENERATE_HINT = "regenerate with: .venv/bin/python scripts/make_reference.py"


# The reference inputs are fingerprinted exactly as the weights are (names, dtypes, shapes, bytes).
inputs_digest = tensor_digest


def save_reference(path: Path, arrays: dict[str, np.ndarray], max_bytes: int) -> bool:
    """Write a reference file (compressed npz), print what it holds; False when it is over ``max_bytes``
    (references are committed: the repository stays small)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    size = path.stat().st_size
    print(f"{path}: actions {arrays['actions'].shape}, content {arrays['content_hash']}, {size} bytes")
    if size > max_bytes:
        print(f"error: {path} is {size} bytes (limit {max_bytes})", file=sys.stderr)
        return False
    return True


def reference_path(model_name: str, precision: str = "fp32", directory: Path | None = None) -> Path:
    return (directory or REFERENCE_DIR) / f"{model_name}_{precision}.npz"


@dataclass
class ReferenceCase:
    model: str
    precision: str
    inputs: dict[str, np.ndarray]
    actions: np.ndarray  # (batch, steps, dims) normalised actions from the torch network
    content_hash: str

    def tolerance(self, precision: str) -> float:
        return TOLERANCES[precision]


def build_reference(bundle, seed: int = REFERENCE_SEED, batch: int = REFERENCE_BATCH) -> dict[str, np.ndarray]:
    """Run the torch network on the seeded example inputs; returns the arrays to store."""
    import torch

    from vla_accel.core.spec import example_inputs

    inputs = example_inputs(bundle.spec, batch=batch, seed=seed)
    module = bundle.torch_module()
    with torch.inference_mode():
        actions = module(*[torch.from_numpy(inputs[name]) for name in bundle.spec.input_names]).numpy()
    return _reference_arrays(bundle, actions, inputs, seed, batch)


def _reference_arrays(bundle, actions, inputs: dict[str, np.ndarray], seed: int, batch: int,
                      **extra: np.ndarray) -> dict[str, np.ndarray]:
    """What a reference file holds: the actions, how to regenerate and verify the inputs (seed, batch,
    digest, the small inputs themselves), the model's content hash, and any ``extra`` arrays."""
    small = {f"input:{name}": arr for name, arr in inputs.items() if arr.nbytes <= 16384}
    return {
        "actions": np.asarray(actions, dtype=np.float32),
        "seed": np.array(seed, dtype=np.int64),
        "batch": np.array(batch, dtype=np.int64),
        "inputs_digest": np.array(inputs_digest(inputs)),
        "content_hash": np.array(bundle.content_hash()),
        **extra,
        **small,
    }


def _read_reference(bundle, precision: str, directory: Path | None) -> tuple[Path, dict[str, np.ndarray]]:
    """A committed reference file's arrays, refused when missing or made for other model content."""
    path = reference_path(bundle.name, precision, directory)
    if not path.is_file():
        raise ModelFileError(f"no reference outputs {path}; {REGENERATE_HINT}", reason="missing_reference")
    with np.load(path, allow_pickle=False) as data:
        stored = {key: data[key] for key in data.files}
    content_hash = str(stored["content_hash"])
    if content_hash != bundle.content_hash():
        raise ModelFileError(
            f"reference {path} was made for model content {content_hash}, the model is now "
            f"{bundle.content_hash()} (spec or weights changed); {REGENERATE_HINT}",
            reason="stale_reference",
        )
    return path, stored


def load_reference(bundle, precision: str = "fp32", directory: Path | None = None) -> ReferenceCase:
    """The committed reference for ``bundle`` with its inputs regenerated and verified."""
    from vla_accel.core.spec import example_inputs

    path, stored = _read_reference(bundle, precision, directory)
    content_hash = str(stored["content_hash"])
    inputs = example_inputs(bundle.spec, batch=int(stored["batch"]), seed=int(stored["seed"]))
    if inputs_digest(inputs) != str(stored["inputs_digest"]):
        raise ModelFileError(
            f"example inputs for {path} no longer regenerate identically (numpy RNG or example_inputs "
            f"changed); {REGENERATE_HINT}",
            reason="stale_reference",
        )
    for key, arr in stored.items():
        if key.startswith("input:") and not np.array_equal(arr, inputs[key[len("input:"):]]):
            raise ModelFileError(f"stored input {key} in {path} differs from the regenerated one; {REGENERATE_HINT}",
                                 reason="stale_reference")
    return ReferenceCase(bundle.name, precision, inputs, stored["actions"], content_hash)


# --- policy programs ---------------------------------------------------------------------------------
# Max |a - a_ref| on a program's normalised actions (the integrated chunk for flow / diffusion, bin
# centres for autoregressive), stored in each program reference file. A loop compounds rounding over
# its steps, and an autoregressive token may flip to a neighbouring bin at low precision.
PROGRAM_TOLERANCES = {
    "flow_matching": {"fp32": 1e-4, "fp16": 5e-2, "bf16": 1e-1},
    "diffusion": {"fp32": 1e-4, "fp16": 5e-2, "bf16": 1e-1},
    "autoregressive": {"fp32": 1e-4, "fp16": 0.25, "bf16": 0.5},
}


@dataclass
class ProgramReferenceCase(ReferenceCase):
    tolerances: dict[str, float] | None = None

    def tolerance(self, precision: str) -> float:
        return (self.tolerances or {}).get(precision, TOLERANCES[precision])


def program_reference_inputs(bundle, seed: int, batch: int) -> dict[str, np.ndarray]:
    """Seeded example inputs plus the start noise (call 0 of the seed): the program's output is then
    deterministic on every backend."""
    from vla_accel.core.spec import example_inputs
    from vla_accel.core.program import call_noise

    spec = bundle.spec
    inputs = example_inputs(spec, batch=batch, seed=seed)
    inputs[spec.program.noise] = call_noise(seed, 0, (batch, spec.action.steps, spec.action.dims))
    return inputs


def build_program_reference(bundle, infer, seed: int = REFERENCE_SEED,
                            batch: int = REFERENCE_BATCH) -> dict[str, np.ndarray]:
    """The reference of a program: ``infer`` (the torch fp32 CPU backend's ``infer``, handed in by the
    caller so the models layer needs no backend) run on seeded inputs and noise."""
    inputs = program_reference_inputs(bundle, seed, batch)
    actions = infer(inputs)[bundle.spec.action.output]
    tolerances = PROGRAM_TOLERANCES[bundle.spec.program.kind]
    return _reference_arrays(bundle, actions, inputs, seed, batch,
                             **{f"tolerance:{p}": np.array(v, dtype=np.float64) for p, v in tolerances.items()})


def load_program_reference(bundle, precision: str = "fp32", directory: Path | None = None) -> ProgramReferenceCase:
    """The committed reference of a program, its inputs (with the noise) regenerated and verified."""
    path, stored = _read_reference(bundle, precision, directory)
    content_hash = str(stored["content_hash"])
    inputs = program_reference_inputs(bundle, int(stored["seed"]), int(stored["batch"]))
    if inputs_digest(inputs) != str(stored["inputs_digest"]):
        raise ModelFileError(f"inputs of {path} no longer regenerate identically; {REGENERATE_HINT}",
                             reason="stale_reference")
    tolerances = {k.split(":", 1)[1]: float(v) for k, v in stored.items() if k.startswith("tolerance:")}
    return ProgramReferenceCase(bundle.name, precision, inputs, stored["actions"], content_hash, tolerances)
