"""``vla-accel export --model tiny --format onnx,openvino``: export (cached by content hash) and print paths."""
from __future__ import annotations

import argparse

FORMATS = ("onnx", "openvino", "tflite", "pt2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="built-in model name or spec YAML path (default: tiny)")
    parser.add_argument("--format", dest="formats", default="onnx",
                        help=f"comma-separated formats: {', '.join(FORMATS)} (default: onnx)")
    parser.add_argument("--precision", default="fp32",
                        help="fp32 (default); onnx also int8 (ONNX Runtime dynamic quantisation); openvino also "
                             "fp16 (compressed weights); tflite per its exporter; pt2 fp32 / fp16 / bf16")
    parser.add_argument("--aoti-device", default="",
                        help="pt2 only: also compile the program with AOTInductor for this device type (cpu or "
                             "cuda); default: the device-independent torch.export program")
    parser.add_argument("--force", action="store_true", help="export again even if a cached export exists")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def run(args: argparse.Namespace) -> int:
    from vla_accel.errors import ModelFileError
    from vla_accel.models import load_model

    formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ModelFileError(f"unknown export format(s) {unknown or formats}; choose from {', '.join(FORMATS)}",
                             reason="bad_export_format")
    bundle = load_model(args.model)
    for fmt in formats:
        path = bundle.export(fmt, precision=args.precision, progress=not args.quiet, force=args.force,
                             aoti_device=getattr(args, "aoti_device", ""))
        print(f"{fmt} {args.precision}: {path}")
    return 0
