"""``vla-accel bench int8``: every integer path of several models from one calibration set each, in
one table, one run.

    vla-accel bench int8 [--models tiny,tiny-flow] [--imported IMPORTED_DIR] [--calibration BAG_OR_DIR] \\
        [--json docs/measurements/int8_bench.json]

Models: ``tiny`` (single pass), ``tiny-flow`` (a flow-matching program: prefix graph + step graph,
quantised graph by graph) and, with ``--imported``, a policy imported by ``vla-accel import lerobot``
(its folder or spec.yaml; an ONNX graph with no torch network).

Rows per model: the fp32 baseline (torch; for an imported ONNX graph, onnxruntime fp32 on that
graph, which the import checked against LeRobot's torch policy), ONNX Runtime static QDQ int8
(CPU), OpenVINO int8 through NNCF, LiteRT full-integer int8, all calibrated on the same set. A program
also gets a row with its step graph in A16W8 (16-bit activations) and, where its step graph embeds
a raw time input itself (no ``time_features`` in the spec), one with that time embedding (the
subgraph of the time input alone) kept in float. Per row: p50 latency of one
inference (a program: prefix + every step) at batch 1, timed calls interleaved (one per row per
round, the order rotating, so load from other processes falls on all alike); speedup over the
baseline (T_base / T_row on p50, ``core.metrics.speedup``); max / mean |Δa| and correlation against
the baseline on evaluation frames the calibration did not see (a program: the whole action chunk
under the same seeded noise, plus the chunk's displacement from that noise). Then the integer
accelerators' view (``commands/targets.py``): Ethos-U op mapping and vela's estimates, the Edge TPU
rules, and the Hexagon HTP through the QNN emulator (placement, and its error against fp32) for
the model or, for a program, for each graph.
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
DEFAULT_MODELS = ("tiny", "tiny-flow")
EVAL_SEED = 424242
PROGRAM_EVAL_CALL = 10_000  # noise of evaluation calls: other calls than calibration's


def add_arguments(parser) -> None:
    parser.add_argument("--calibration", default="", help="int8: calibrate on this rosbag / folder of frames")
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--program-calibration-samples", type=int, default=16,
                        help="observations for a program's calibration (each step graph call is a sample)")
    parser.add_argument("--eval-samples", type=int, default=8, help="frames for max |da| (default 8)")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds (one call per row each)")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                        help="accelerator mapping checks (comma-separated; '' for none)")
    parser.add_argument("--models", default="", help=f"comma-separated models (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--imported", default="", help="also an imported policy: the folder `vla-accel import "
                        "lerobot` wrote (or its spec.yaml)")


def _observations(bundle, args, samples: int):
    from vla_accel.models.calibration_set import synthetic_calibration

    if args.calibration:
        from vla_accel.bags.calibration import calibration_from_source

        return calibration_from_source(args.calibration, bundle.spec, samples)
    return synthetic_calibration(bundle.spec, samples)


def _interleaved(calls: dict[str, Callable], evaluation: list, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {label: [] for label in calls}
    labels = list(calls)
    for label in labels:  # warm-up
        for _ in range(3):
            calls[label](evaluation[0])
    for index in range(int(rounds)):
        x = evaluation[index % len(evaluation)]
        order = labels[index % len(labels):] + labels[:index % len(labels)]
        for label in order:
            started = time.perf_counter()
            calls[label](x)
            times[label].append((time.perf_counter() - started) * 1e3)
    return times


def _rows(calls: dict[str, tuple[str, Callable]], accuracy: dict[str, dict], evaluation, rounds: int,
          extra: dict[str, dict] | None = None) -> list[dict]:
    from vla_accel.core.metrics import percentiles, speedup

    times = _interleaved({label: call for label, (_, call) in calls.items()}, evaluation, rounds)
    baseline = next(iter(calls))
    base = percentiles(times[baseline])["p50"]
    rows = []
    for label, (file, _) in calls.items():
        p = percentiles(times[label])
        rows.append({"path": label, "file": file, "p50_ms": round(p["p50"], 3), "p90_ms": round(p["p90"], 3),
                     "speedup_vs_baseline": round(speedup(base, p["p50"]), 3),
                     **{k: round(v, 5) for k, v in accuracy[label].items()}, **((extra or {}).get(label, {}))})
    return rows


def _single_pass_runners(bundle, calibration) -> tuple[dict, dict]:
    """label -> (file, call(inputs) -> float32 actions) for each integer path that can run here."""
    from vla_accel.models import int8_static
    from vla_accel.models.export_tflite import export_tflite

    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    try:
        import onnxruntime as ort

        path = int8_static.export_onnx_qdq(bundle, calibration, flavour="cpu")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        output = bundle.spec.action.output
        out["onnxruntime static QDQ int8"] = (str(path), lambda x, s=session: s.run([output], x)[0])
    except Exception as exc:  # noqa: BLE001 (a row that cannot run is reported, not fatal)
        errors["onnxruntime static QDQ int8"] = f"{type(exc).__name__}: {exc}"
    try:
        import openvino as ov

        path = int8_static.export_openvino_nncf(bundle, calibration)
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        port = compiled.output(bundle.spec.action.output)
        out["openvino int8 (NNCF)"] = (str(path), lambda x, r=request, p=port: np.array(r.infer(x)[p]))
    except Exception as exc:  # noqa: BLE001
        errors["openvino int8 (NNCF)"] = f"{type(exc).__name__}: {exc}"
    try:
        from vla_accel.benchmarks.int8_program import SESSION_TYPES

        path = export_tflite(bundle, "int8", progress=False, calibration=calibration)
        graph = SESSION_TYPES["tflite"](path)
        output = bundle.spec.action.output
        out["litert full-integer int8"] = (str(path), lambda x, g=graph: g.run(x)[output])
    except Exception as exc:  # noqa: BLE001
        errors["litert full-integer int8"] = f"{type(exc).__name__}: {exc}"
    return out, errors


def bench_single_pass(name: str, bundle, args) -> dict[str, Any]:
    """A single-pass model: the reference network (fp32 torch baseline) or an imported ONNX graph
    (onnxruntime fp32 baseline)."""
    from vla_accel.models.calibration_set import synthetic_calibration
    from vla_accel.models.int8_export import error_stats

    calibration = _observations(bundle, args, args.calibration_samples)
    evaluation = synthetic_calibration(bundle.spec, args.eval_samples, seed=EVAL_SEED).batches
    if bundle.has_torch_network:
        import torch

        module = bundle.torch_module()
        baseline = "torch fp32"

        def base_call(x):
            with torch.inference_mode():
                return module(*[torch.from_numpy(x[n]) for n in bundle.spec.input_names]).numpy()
        base_file = ""
    else:
        import onnxruntime as ort

        base_file = str(bundle.export("onnx", precision="fp32", progress=False))
        session = ort.InferenceSession(base_file, providers=["CPUExecutionProvider"])
        baseline, output = "onnxruntime fp32 (imported graph)", bundle.spec.action.output

        def base_call(x):
            return session.run([output], x)[0]
    runners, errors = _single_pass_runners(bundle, calibration)
    calls = {baseline: (base_file, base_call), **runners}
    expected = np.concatenate([base_call(x) for x in evaluation])
    accuracy = {label: error_stats(np.concatenate([call(x) for x in evaluation]), expected)
                for label, (_, call) in calls.items()}
    rows = _rows(calls, accuracy, evaluation, args.rounds)
    targets = {}
    for target in [t.strip() for t in (args.targets or "").split(",") if t.strip()]:
        from vla_accel.commands.targets import check_target

        try:
            targets[target] = check_target(bundle, target, calibration,
                                           evaluation if target.startswith("qnn") else None)
        except Exception as exc:  # noqa: BLE001 (an absent tool is a row saying so)
            targets[target] = {"error": f"{type(exc).__name__}: {exc}"}
    return {"model": name, "kind": "single_pass", "baseline": baseline, "calibration": calibration.record(),
            "evaluation": f"{args.eval_samples} generated camera-like frames (seed {EVAL_SEED}), not in the "
            "calibration set", "rounds": args.rounds, "rows": rows, "errors": errors, "targets": targets}


PROGRAM_VARIANTS = (
    # label, format, activation bits per graph
    ("onnxruntime static QDQ int8", "onnx", {}),
    ("onnxruntime static QDQ int8, time embedding float", "onnx", "float-time"),
    ("onnxruntime static QDQ int8, step graph A16W8", "onnx", {"step": 16}),
    ("openvino int8 (NNCF)", "openvino", {}),
    ("litert full-integer int8", "tflite", {}),
    ("litert full-integer, step graph A16W8", "tflite", {"step": 16}),
)


def bench_program(name: str, bundle, args) -> dict[str, Any]:
    """A policy program: every graph quantised on what it receives in the fp32 program; the whole
    loop timed; the action chunk compared with the fp32 torch program under the same noise."""
    from vla_accel.benchmarks.int8_program import (
        capture_graph_calibration, int8_program_sessions, program_error, program_outputs, program_runner,
        torch_program_runner,
    )
    from vla_accel.models.calibration_set import synthetic_calibration
    from vla_accel.models.int8_program import export_program_int8

    observations = _observations(bundle, args, args.program_calibration_samples)
    calibrations = capture_graph_calibration(bundle, observations)
    evaluation = synthetic_calibration(bundle.spec, args.eval_samples, seed=EVAL_SEED).batches
    reference = torch_program_runner(bundle)
    expected = program_outputs(reference, evaluation, PROGRAM_EVAL_CALL)
    calls: dict[str, tuple[str, Callable]] = {"torch fp32": ("", lambda x, r=reference: r.run(x, 0)[0])}
    from vla_accel.models.int8_export import error_stats

    accuracy: dict[str, dict] = {"torch fp32": error_stats(expected, expected)}
    extra: dict[str, dict] = {}
    errors: dict[str, str] = {}
    graph_files: dict[str, dict] = {}
    for label, fmt, bits in PROGRAM_VARIANTS:
        if bits == "float-time" and bundle.spec.program.step_time_features is not None:
            continue  # the runtime computes the time features: the graph has no time-only subgraph
        try:
            graphs = export_program_int8(bundle, fmt, calibrations, activation_bits=None if bits == "float-time"
                                         else bits, float_time=bits == "float-time")
            sessions = int8_program_sessions(fmt, graphs)
            runner = program_runner(bundle, sessions)
            accuracy[label] = program_error(bundle, sessions, evaluation, PROGRAM_EVAL_CALL, expected)
        except Exception as exc:  # noqa: BLE001 (a row that cannot run is reported, not fatal)
            errors[label] = f"{type(exc).__name__}: {exc}"
            continue
        calls[label] = (str(Path(next(iter(graphs.values())).path).parent), lambda x, r=runner: r.run(x, 0)[0])
        extra[label] = {"graphs": [g.summary() for g in graphs.values()],
                        "full_integer": all(g.full_integer for g in graphs.values())}
        graph_files[label] = {g.graph: g.path for g in graphs.values()}
    rows = _rows(calls, accuracy, evaluation, args.rounds, extra)
    targets = _program_targets(bundle, args, calibrations, graph_files.get("litert full-integer int8", {}))
    return {"model": name, "kind": bundle.spec.program.kind, "baseline": "torch fp32",
            "calibration": observations.record(),
            "graph_calibration": {g: c.samples for g, c in calibrations.items()},
            "evaluation": f"{args.eval_samples} generated camera-like frames (seed {EVAL_SEED}), not in the "
            f"calibration set; noise of calls {PROGRAM_EVAL_CALL}.. for every row alike",
            "rounds": args.rounds, "rows": rows, "errors": errors, "targets": targets}


def _program_targets(bundle, args, calibrations, tflite_graphs: dict[str, str]) -> dict[str, Any]:
    from vla_accel.commands import targets as tg

    out: dict[str, Any] = {}
    for target in [t.strip() for t in (args.targets or "").split(",") if t.strip()]:
        kind, value = tg.parse_target(target)
        per_graph = {}
        for graph in [g.name for g in bundle.spec.program.graphs]:
            try:
                if kind == "qnn":  # A8W8 and A16W8 (16-bit activations) per graph
                    source = bundle.export_program("onnx", progress=False)[graph]
                    for bits in (8, 16):
                        per_graph[graph if bits == 8 else f"{graph} a16w8"] = tg.qnn_graph(
                            source, calibrations[graph], calibrations[graph].batches[0], value,
                            bundle.export_dir("qnn", "graphs"), activation_bits=bits)
                    continue
                elif graph not in tflite_graphs:
                    per_graph[graph] = {"error": "no int8 .tflite of this graph (see the LiteRT row's error)"}
                elif kind == "ethos-u":
                    per_graph[graph] = tg.ethos_u(Path(tflite_graphs[graph]), value)
                else:
                    per_graph[graph] = tg.edgetpu(Path(tflite_graphs[graph]))
            except Exception as exc:  # noqa: BLE001 (an absent tool is a row saying so)
                per_graph[graph] = {"error": f"{type(exc).__name__}: {exc}"}
        out[target] = {"graphs": per_graph}
    return out


def bench_model(name: str, args) -> dict[str, Any]:
    from vla_accel.models import load_model

    path = Path(name)
    if path.is_dir():
        path = path / "spec.yaml"
    bundle = load_model(path if path.suffix in (".yaml", ".yml") else name)
    if bundle.is_program:
        return bench_program(name, bundle, args)
    return bench_single_pass(name, bundle, args)


def _print_target(target: str, t: dict, indent: str = "  ") -> None:
    if "error" in t:
        print(f"{indent}{target:<12} not checked: {t['error'][:160]}")
    elif "graphs" in t:
        for graph, result in t["graphs"].items():
            _print_target(f"{target} {graph}", result, indent)
    elif "npu_ops" in t:
        print(f"{indent}{target:<12} NPU {t['npu_ops']} ops, CPU {t['cpu_ops']} ({', '.join(t['cpu_op_types'])}); "
              f"vela estimate {t.get('estimate_ms')} ms, SRAM {t.get('sram_kib')} KiB")
    elif "all_nodes_on_qnn" in t:
        acc = t.get("accuracy_vs_fp32") or {}
        outs = t.get("outputs_vs_cpu_fp32") or {}
        err = (f"; max |da| {acc['max_abs']:.4f}, corr {acc['correlation']:.4f}" if acc else
               "".join(f"; {k} max |d| {v['max_abs']:.4f} (range {v['range']:.2f})" for k, v in outs.items()))
        print(f"{indent}{target:<12} all nodes on QNN: {t['all_nodes_on_qnn']} {t.get('node_providers', '')}"
              f"{err}; emulator {t.get('emulator_inference_s')} s/inference (not a device time)"
              + (f"; {t['strict_error'][:120]}" if t.get("strict_error") else ""))
    else:
        print(f"{indent}{target:<12} {t['ops_passing_rules']}/{t['ops']} ops pass the Edge TPU rules; first "
              f"unsupported {t['first_unsupported']} after {t['mapped_before_first_unsupported']} ops")


def run(args: argparse.Namespace) -> int:
    models = [m.strip() for m in (args.models or "").split(",") if m.strip()] or list(DEFAULT_MODELS)
    if getattr(args, "imported", ""):
        models.append(args.imported)
    results, skipped = [], {}
    for name in models:
        try:
            results.append(bench_model(name, args))
        except Exception as exc:  # noqa: BLE001 (a model the int8 exporters cannot take is reported)
            skipped[name] = f"{type(exc).__name__}: {exc}"
    report = {"benchmark": "int8", "machine": {"cpu": platform.processor() or platform.machine(),
                                                "python": platform.python_version()},
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": results, "skipped": skipped}
    if not getattr(args, "imported", ""):
        report["imported"] = ("not in this run: pass --imported DIR, the folder `vla-accel import lerobot CKPT DIR` "
                              "wrote (a LeRobot ACT checkpoint made offline: python test/lerobot_checkpoints.py "
                              "act CKPT in .venv-lerobot)")
    try:
        import os

        report["machine"]["load_average"] = list(os.getloadavg())
        from vla_accel.core.machine import cpu_model_name

        report["machine"]["cpu"] = cpu_model_name()
    except (OSError, ImportError):
        pass
    print(f"\nint8 paths against fp32, batch 1, interleaved rounds (one table, one run)")
    print(f"  {'model':<12} {'path':<46} {'p50 ms':>9} {'speedup':>8} {'max|da|':>8} {'mean|da|':>9} {'corr':>7}")
    for result in results:
        for row in result["rows"]:
            print(f"  {Path(result['model']).name[:12]:<12} {row['path']:<46} {row['p50_ms']:>9.2f} "
                  f"{row['speedup_vs_baseline']:>7.2f}x {row['max_abs']:>8.4f} {row['mean_abs']:>9.4f} "
                  f"{row['correlation']:>7.4f}")
            for graph in row.get("graphs", []):
                print(f"  {'':<12}   {graph}")
    for result in results:
        print(f"\n{result['model']}: baseline {result['baseline']}, calibration {result['calibration']['samples']} "
              f"samples ({result['calibration']['source']})")
        for label, why in result["errors"].items():
            print(f"  {label:<30} not run: {why[:200]}")
        for target, t in result["targets"].items():
            _print_target(target, t)
    for name, why in skipped.items():
        print(f"\n{name}: skipped ({why})")
    if getattr(args, "json_path", None):
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
        print(f"\nwrote {args.json_path}")
    return 0
