#!/usr/bin/env python3
"""Regenerate the committed parity references: test/data/reference/<model>_fp32.npz.

Each file holds the torch fp32 actions of a built-in model for example_inputs(spec, batch=2,
seed=REFERENCE_SEED), the seed, a digest of the inputs and the model's content hash (see
vla_accel/models/reference.py). Run after changing a spec, the network or weight generation:

    .venv/bin/python scripts/make_reference.py            # tiny, tiny-2cam, base
    .venv/bin/python scripts/make_reference.py tiny       # just one
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from vla_accel.models import builtin_models, load_model
from vla_accel.models.reference import REFERENCE_DIR, build_reference, reference_path

MAX_BYTES = 200_000  # keep the repository small


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=builtin_models(), help="built-in model names")
    args = parser.parse_args(argv)
    REFERENCE_DIR.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        bundle = load_model(name)
        arrays = build_reference(bundle)
        path = reference_path(name, "fp32")
        np.savez_compressed(path, **arrays)
        size = path.stat().st_size
        print(f"{path}: actions {arrays['actions'].shape}, content {arrays['content_hash']}, {size} bytes")
        if size > MAX_BYTES:
            print(f"error: {path} is {size} bytes (limit {MAX_BYTES})", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
