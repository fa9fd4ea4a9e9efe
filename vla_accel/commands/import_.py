"""``vla-accel import lerobot CHECKPOINT_DIR OUT_DIR``: a trained policy -> graphs + spec + parity.

Runs where LeRobot is importable (``.venv-lerobot``, made by ``./run.sh setup``; ``./run.sh import``
uses it). The parity table compares LeRobot's own policy on raw observations with the imported
bundle through vla_accel's preprocessing and onnxruntime; a spec whose parity is off is not written.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=("lerobot",), help="the framework the checkpoint comes from")
    parser.add_argument("checkpoint", type=Path, help="LeRobot's pretrained_model/ folder (config.json, "
                        "model.safetensors, policy_preprocessor.json, policy_postprocessor.json)")
    parser.add_argument("out", type=Path, help="output folder: spec.yaml, model.onnx, parity.json")
    parser.add_argument("--name", default="", help="model name in the spec (default: lerobot-<policy type>)")
    parser.add_argument("--fps", type=float, default=None,
                        help="control rate in Hz, when the checkpoint has no train_config.json saying it")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest accepted |Δ| of un-normalised actions, LeRobot vs vla_accel (default: 1e-4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the parity observations (default: 0)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    parser.add_argument("--pt2", action="store_true",
                        help="also write model.pt2 + spec-pt2.yaml: the policy as a torch.export program for the "
                             "cuda backend (checked against the module on the CPU)")


def run(args: argparse.Namespace) -> int:
    from vla_accel.importers.lerobot import import_checkpoint

    report = import_checkpoint(args.checkpoint, args.out, name=args.name, fps=args.fps, tolerance=args.tolerance,
                               seed=args.seed, force=args.force, show_progress=not args.quiet, pt2=args.pt2)
    worst = max(row["max_abs"] for row in report["parity"])
    summary = {"spec": str(args.out / "spec.yaml"), "parity_max_abs": worst, "fixed_batch": report["export"]["batch"]}
    if "pt2" in report:
        summary.update(pt2_spec=str(args.out / "spec-pt2.yaml"), pt2_max_abs_vs_module=report["pt2"]["max_abs_vs_module_cpu"])
    print(json.dumps(summary))
    return 0
