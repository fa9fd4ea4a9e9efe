#!/usr/bin/env python3
"""Regenerate the committed parity references: test/data/reference/<model>_fp32.npz.

Each file is also written to vla_accel/models/golden/ (package data: the node's parity self-check at
load). Each file holds the torch fp32 actions of a built-in model for example_inputs(spec, batch=2,
seed=REFERENCE_SEED), the seed, a digest of the inputs and the model's content hash (see
vla_accel/models/reference.py). Run after changing a spec, the network or weight generation:

    .venv/bin/python scripts/make_reference.py            # tiny, tiny-2cam, base
    .venv/bin/python scripts/make_reference.py tiny       # just one
"""
from __future__ import annotations

import argparse
import sys


from vla_accel.models import builtin_models, load_model
from vla_accel.models.reference import GOLDEN_DIR, build_reference, reference_path, save_reference

MAX_BYTES = 200_000  # keep the repository small


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=builtin_models(), help="built-in model names")
    args = parser.parse_args(argv)
    for name in args.models:
        arrays = build_reference(load_model(name))
        # The same file twice: the test reference, and the golden the node's parity self-check ships with.
        for directory in (None, GOLDEN_DIR):
            if not save_reference(reference_path(name, "fp32", directory), arrays, MAX_BYTES):
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
