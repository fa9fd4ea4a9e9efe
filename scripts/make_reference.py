#!/usr/bin/env python3
"""Regenerate the committed parity references: test/data/reference/<model>_fp32.npz.

Policy programs (tiny-flow, tiny-diffusion, tiny-ar) store the program's actions for the same seeded
inputs plus seeded start noise, and their per-precision tolerances. Each file is also written to vla_accel/models/golden/ (package data: the node's parity self-check at
load). Each file holds the torch fp32 actions of a built-in model for example_inputs(spec, batch=2,
seed=REFERENCE_SEED), the seed, a digest of the inputs and the model's content hash (see
vla_accel/models/reference.py). Run after changing a spec, the network or weight generation:

    .venv/bin/python scripts/make_reference.py            # every built-in but the GPU-scale programs
    .venv/bin/python scripts/make_reference.py tiny       # just one
"""
from __future__ import annotations

import argparse
import sys


from vla_accel.backends.registry import create_backend
from vla_accel.models import builtin_models, load_model
from vla_accel.models.reference import GOLDEN_DIR, build_program_reference, build_reference, reference_path, save_reference

MAX_BYTES = 200_000  # keep the repository small
# GPU-scale programs: no CPU reference committed (building one takes minutes on a small CPU)
NOT_BY_DEFAULT = ("base-flow",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=[m for m in builtin_models() if m not in NOT_BY_DEFAULT],
                        help="built-in model names")
    args = parser.parse_args(argv)
    for name in args.models:
        bundle = load_model(name)
        if bundle.is_program:
            with create_backend("torch", bundle) as runner:
                arrays = build_program_reference(bundle, runner.infer)
        else:
            arrays = build_reference(bundle)
        # Single-pass models: the same file twice, the test reference and the golden the node's parity
        # self-check ships with. Programs: the test reference only (checked with their seeded noise).
        for directory in ((None,) if bundle.is_program else (None, GOLDEN_DIR)):
            if not save_reference(reference_path(name, "fp32", directory), arrays, MAX_BYTES):
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
