"""``vla-accel bench int8``: every integer path of a model from one calibration set, in one table.

    vla-accel bench int8 --model tiny [--calibration BAG_OR_DIR] [--json docs/measurements/int8_tiny.json]

Rows: fp32 torch (the baseline), ONNX Runtime static QDQ int8 (CPU), OpenVINO int8 through NNCF,
LiteRT full-integer int8, all calibrated on the same set. Per row: p50 latency at batch 1 (timed
calls interleaved, one per runtime per round, so load from other processes falls on all alike),
speedup over torch (T_torch / T_row on p50, ``core.metrics.speedup``) and max / mean |Δa| and
correlation against torch on evaluation frames the calibration did not see. Then the integer
accelerators' view (``commands/targets.py``): Ethos-U op mapping and vela's estimates, the Edge TPU
rules, and the QNN HTP partition (with the emulator's time, which is not a device time).
Models that are not built in here (e.g. ``tiny-flow`` before it exists) are listed as skipped.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

DEFAULT_TARGETS = ("ethos-u55", "ethos-u65", "ethos-u85", "edgetpu", "qnn:43")


def add_arguments(parser) -> None:
    parser.add_argument("--calibration", default="", help="int8: calibrate on this rosbag / folder of frames")
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--eval-samples", type=int, default=8, help="frames for max |da| (default 8)")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds (one call per row each)")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                        help="accelerator mapping checks (comma-separated; '' for none)")
    parser.add_argument("--models", default="", help="comma-separated models (default: --model, plus tiny-flow "
                        "when it is built in)")


def _runners(bundle, calibration) -> dict[str, tuple[str, Callable[[dict], np.ndarray]]]:
    """label -> (file, call(inputs) -> float32 actions) for each integer path that can run here."""
    from vla_accel.models import int8_static
    from vla_accel.models.export_tflite import export_tflite

    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    try:
        import onnxruntime as ort

        path = int8_static.export_onnx_qdq(bundle, calibration, flavour="cpu")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out["onnxruntime static QDQ int8"] = (str(path), lambda x, s=session: s.run(None, x)[0])
    except Exception as exc:  # noqa: BLE001 (a row that cannot run is reported, not fatal)
        errors["onnxruntime static QDQ int8"] = f"{type(exc).__name__}: {exc}"
    try:
        import openvino as ov

        path = int8_static.export_openvino_nncf(bundle, calibration)
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        out["openvino int8 (NNCF)"] = (str(path), lambda x, r=request: np.array(r.infer(x)[0]))
    except Exception as exc:  # noqa: BLE001
        errors["openvino int8 (NNCF)"] = f"{type(exc).__name__}: {exc}"
    try:
        from ai_edge_litert.interpreter import Interpreter

        path = export_tflite(bundle, "int8", progress=False, calibration=calibration)
        runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
        details, output = runner.get_input_details(), bundle.spec.action.output
        out_scale, out_zero = runner.get_output_details()[output]["quantization"]

        def call(x, runner=runner, details=details):
            feed = {}
            for name, value in x.items():
                d = details[name]
                scale, zero = d["quantization"]
                feed[name] = (np.clip(np.round(value / scale + zero), -128, 127).astype(d["dtype"])
                              if scale else value.astype(d["dtype"]))
            return (runner(**feed)[output].astype(np.float32) - out_zero) * out_scale

        out["litert full-integer int8"] = (str(path), call)
    except Exception as exc:  # noqa: BLE001
        errors["litert full-integer int8"] = f"{type(exc).__name__}: {exc}"
    return out, errors


def bench_model(name: str, args) -> dict[str, Any]:
    import torch

    from vla_accel.core.metrics import percentiles, speedup
    from vla_accel.models import load_model
    from vla_accel.models.calibration_set import synthetic_calibration
    from vla_accel.models.int8_export import error_stats

    bundle = load_model(name)
    if args.calibration:
        from vla_accel.bags.calibration import calibration_from_source

        calibration = calibration_from_source(args.calibration, bundle.spec, args.calibration_samples)
    else:
        calibration = synthetic_calibration(bundle.spec, args.calibration_samples)
    evaluation = synthetic_calibration(bundle.spec, args.eval_samples, seed=424242).batches
    module = bundle.torch_module()

    def torch_call(x):
        with torch.inference_mode():
            return module(*[torch.from_numpy(x[n]) for n in bundle.spec.input_names]).numpy()

    runners, errors = _runners(bundle, calibration)
    calls = {"torch fp32": ("", torch_call), **runners}
    expected = np.concatenate([torch_call(x) for x in evaluation])
    accuracy = {label: error_stats(np.concatenate([call(x) for x in evaluation]), expected)
                for label, (_, call) in calls.items()}
    times: dict[str, list[float]] = {label: [] for label in calls}
    labels = list(calls)
    for label in labels:  # warm-up
        for _ in range(3):
            calls[label][1](evaluation[0])
    for index in range(int(args.rounds)):
        x = evaluation[index % len(evaluation)]
        order = labels[index % len(labels):] + labels[:index % len(labels)]
        for label in order:
            started = time.perf_counter()
            calls[label][1](x)
            times[label].append((time.perf_counter() - started) * 1e3)
    base = percentiles(times["torch fp32"])["p50"]
    rows = []
    for label in labels:
        p = percentiles(times[label])
        rows.append({"path": label, "file": calls[label][0], "p50_ms": round(p["p50"], 3), "p90_ms": round(p["p90"], 3),
                     "speedup_vs_torch": round(speedup(base, p["p50"]), 3),
                     **{k: round(v, 5) for k, v in accuracy[label].items()}})
    targets = {}
    if args.targets:
        from vla_accel.commands.targets import check_target

        for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
            try:
                targets[target] = check_target(bundle, target, calibration)
            except Exception as exc:  # noqa: BLE001 (an absent tool is a row saying so)
                targets[target] = {"error": f"{type(exc).__name__}: {exc}"}
    return {"model": name, "calibration": calibration.record(), "evaluation": f"{args.eval_samples} generated "
            "camera-like frames (seed 424242), not in the calibration set", "rounds": args.rounds,
            "rows": rows, "errors": errors, "targets": targets}


def run(args: argparse.Namespace) -> int:
    from vla_accel.models import builtin_models

    models = [m.strip() for m in (args.models or "").split(",") if m.strip()] or [args.model]
    if not args.models and "tiny-flow" in builtin_models() and "tiny-flow" not in models:
        models.append("tiny-flow")
    results, skipped = [], {}
    for name in models:
        try:
            results.append(bench_model(name, args))
        except Exception as exc:  # noqa: BLE001 (e.g. a model kind the int8 exporters do not take yet)
            skipped[name] = f"{type(exc).__name__}: {exc}"
    report = {"benchmark": "int8", "machine": {"cpu": platform.processor() or platform.machine(),
                                                "python": platform.python_version()},
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": results, "skipped": skipped}
    try:
        import os

        report["machine"]["load_average"] = list(os.getloadavg())
        from vla_accel.core.machine import cpu_model_name

        report["machine"]["cpu"] = cpu_model_name()
    except (OSError, ImportError):
        pass
    for result in results:
        print(f"\n{result['model']}: int8 paths vs fp32 torch, batch 1, {result['rounds']} interleaved rounds; "
              f"calibration {result['calibration']['samples']} samples ({result['calibration']['source']})")
        print(f"  {'path':<30} {'p50 ms':>8} {'speedup':>8} {'max|da|':>8} {'mean|da|':>9} {'corr':>7}")
        for row in result["rows"]:
            print(f"  {row['path']:<30} {row['p50_ms']:>8.2f} {row['speedup_vs_torch']:>7.2f}x "
                  f"{row['max_abs']:>8.4f} {row['mean_abs']:>9.4f} {row['correlation']:>7.4f}")
        for label, why in result["errors"].items():
            print(f"  {label:<30} not run: {why}")
        for target, t in result["targets"].items():
            if "error" in t:
                print(f"  {target:<12} not checked: {t['error'][:160]}")
            elif "npu_ops" in t:
                print(f"  {target:<12} NPU {t['npu_ops']} ops, CPU {t['cpu_ops']} ({', '.join(t['cpu_op_types'])}); "
                      f"vela estimate {t.get('estimate_ms')} ms, SRAM {t.get('sram_kib')} KiB")
            elif "node_providers" in t:
                print(f"  {target:<12} nodes {t['node_providers']}, CPU nodes {len(t['cpu_nodes'])}; emulator "
                      f"{t['emulator_inference_s']} s/inference (not a device time)")
            else:
                print(f"  {target:<12} {t['ops_passing_rules']}/{t['ops']} ops pass the Edge TPU rules; first "
                      f"unsupported {t['first_unsupported']} after {t['mapped_before_first_unsupported']} ops")
    for name, why in skipped.items():
        print(f"\n{name}: skipped ({why})")
    if getattr(args, "json_path", None):
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
        print(f"\nwrote {args.json_path}")
    return 0
