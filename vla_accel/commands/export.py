"""``vla-accel export --model tiny --format onnx,openvino``: export (cached by content hash) and print paths.

int8 with ``--calibration BAG_OR_DIR``: the representative inputs come from a rosbag (replay reader,
same observation assembly and preprocessing as inference) or a folder of frames; without it, from
generated scenes. The same set feeds every integer format: tflite (full-integer), onnx (static QDQ;
without ``--calibration`` onnx int8 stays ONNX Runtime's dynamic quantisation) and openvino (NNCF).
Each int8 export gets its provenance beside the model and a per-tensor report (``.quant.json`` and
``.png``: which tensors lose most, in action units).
"""
from __future__ import annotations

import argparse

FORMATS = ("onnx", "openvino", "tflite", "pt2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="built-in model name or spec YAML path (default: tiny)")
    parser.add_argument("--format", dest="formats", default="onnx",
                        help=f"comma-separated formats: {', '.join(FORMATS)} (default: onnx)")
    parser.add_argument("--precision", default="fp32",
                        help="fp32 (default); int8 for every format (onnx: static QDQ with --calibration, "
                             "else dynamic quantisation; openvino: NNCF); openvino also fp16; tflite also fp16; pt2 fp32 / fp16 / bf16")
    parser.add_argument("--aoti-device", default="",
                        help="pt2 only: also compile the program with AOTInductor for this device type (cpu or "
                             "cuda); default: the device-independent torch.export program")
    parser.add_argument("--calibration", default="",
                        help="int8: a rosbag (directory or .mcap/.db3) or a folder of frames to calibrate on")
    parser.add_argument("--calibration-samples", type=int, default=32, help="int8: observations to use (default 32)")
    parser.add_argument("--camera-topic", action="append", default=[],
                        help="calibration bag: topic or camera=topic (repeatable; default: found by type)")
    parser.add_argument("--instruction-topic", default=None, help="calibration bag: instruction topic")
    parser.add_argument("--qdq-flavour", default="cpu", choices=("cpu", "qnn"),
                        help="onnx static int8: cpu (per-channel weights) or qnn (what the Hexagon HTP takes)")
    parser.add_argument("--no-report", action="store_true", help="int8: skip the per-tensor quantisation report")
    parser.add_argument("--force", action="store_true", help="export again even if a cached export exists")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def load_calibration(args: argparse.Namespace, bundle, batch: int = 1):
    from vla_accel.models.calibration_set import synthetic_calibration

    if args.calibration:
        from vla_accel.bags.calibration import calibration_from_source

        return calibration_from_source(args.calibration, bundle.spec, args.calibration_samples, batch,
                                       camera_topics=tuple(args.camera_topic),
                                       instruction_topic=args.instruction_topic) \
            if _is_bag(args.calibration) else calibration_from_source(args.calibration, bundle.spec,
                                                                      args.calibration_samples, batch)
    return synthetic_calibration(bundle.spec, args.calibration_samples, batch)


def _is_bag(path: str) -> bool:
    from vla_accel.bags.calibration import is_bag

    return is_bag(path)


def run(args: argparse.Namespace) -> int:
    from vla_accel.errors import ModelFileError
    from vla_accel.models import load_model

    formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ModelFileError(f"unknown export format(s) {unknown or formats}; choose from {', '.join(FORMATS)}",
                             reason="bad_export_format")
    bundle = load_model(args.model)
    progress = not args.quiet
    if args.precision != "int8":
        if args.calibration:
            raise ModelFileError("--calibration applies to --precision int8 only", reason="bad_argument")
        for fmt in formats:
            path = bundle.export(fmt, precision=args.precision, progress=progress, force=args.force,
                                 aoti_device=getattr(args, "aoti_device", "") if fmt == "pt2" else "")
            print(f"{fmt} {args.precision}: {path}")
        return 0

    from vla_accel.models import int8_export, int8_static

    calibration = load_calibration(args, bundle)
    print(f"calibration: {calibration.samples} samples from {calibration.provenance.get('source')} "
          f"{calibration.provenance.get('path', '')} (inputs {calibration.digest()})")
    for fmt in formats:
        report = None
        if fmt == "tflite":
            from vla_accel.models.export_tflite import export_tflite

            path = export_tflite(bundle, "int8", progress, args.force, calibration=calibration,
                                 quant_report=not args.no_report)
            report = int8_export.report_path(path)
        elif fmt == "onnx" and not args.calibration:
            path = bundle.export("onnx", precision="int8", progress=progress, force=args.force)
            print("onnx int8: dynamic quantisation (give --calibration for static QDQ)")
        elif fmt == "onnx":
            path = int8_static.export_onnx_qdq(bundle, calibration, flavour=args.qdq_flavour, force=args.force,
                                               progress=progress)
            if not args.no_report:
                report = int8_export.write_onnx_report(bundle, path, calibration)
        else:
            path = int8_static.export_openvino_nncf(bundle, calibration, force=args.force, progress=progress)
            if not args.no_report:
                report = int8_export.write_openvino_report(bundle, path, calibration)
        print(f"{fmt} int8: {path}")
        if report is not None and report.is_file():
            _print_report(report)
    return 0


def _print_report(path) -> None:
    import json

    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model", {})
    print(f"  report: {path} (+ .png)")
    if "max_abs" in model:
        print(f"  vs fp32 torch: max |da| {model['max_abs']:.4f}, mean {model['mean_abs']:.4f}, "
              f"correlation {model['correlation']:.4f}; float ops: {model.get('float_ops', 'n/a')}")
    for row in data.get("tensors", [])[:5]:
        print(f"    {row['max_abs_action']:.4f}  {row['module'] or '-'}: {row['tensor']} ({row['op']})")
