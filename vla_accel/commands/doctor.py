"""``vla-accel doctor``: what can run here, on what device, and exactly what is missing for the rest.

    vla-accel doctor                      probe every backend (cheap: no runtime is imported)
    vla-accel doctor --load               also load each available backend on the tiny model and
                                          run one inference (shows the real device, precision, version)
    vla-accel doctor --calibrate          measure p50 latency (batch 1) and throughput (batch N) of
                                          every available backend and store them for ``backend: auto``
    vla-accel doctor --json report.json   the same as JSON
    vla-accel doctor --model tiny --target ethos-u55|ethos-u65|ethos-u85|edgetpu|qnn:SOC
                                          which ops map to that integer accelerator, which fall back
                                          to the CPU, and the vendor compiler's estimate (commands/targets.py)
    vla-accel doctor --model SPEC.yaml    also check a user's spec and graphs (commands.model_check)

Exits 0 (a missing accelerator is information, not a failure), except that a failed model check
of a spec file exits 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from vla_accel.errors import VlaAccelError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="model for --load / --calibrate (default: tiny); a spec "
                        "file also gets a model check: spec, graph files, load-time graph contract and one "
                        "inference on onnxruntime and openvino (exit 1 when a check fails)")
    parser.add_argument("--load", action="store_true", help="load each available backend and run one inference")
    parser.add_argument("--calibrate", action="store_true",
                        help="measure every available backend and store the result for backend: auto")
    parser.add_argument("--backends", default="", help="comma-separated subset of backends (default: all)")
    parser.add_argument("--precision", default="", help="precision for --load / --calibrate where a backend "
                        "supports it (others keep fp32, or their only precision)")
    parser.add_argument("--batch", type=int, default=4, help="batch size for the throughput measurement")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per backend for --calibrate")
    parser.add_argument("--json", default="", help="also write the report as JSON to this file ('-' = stdout)")
    parser.add_argument("--target", action="append", default=[],
                        help="integer accelerator to check --model against (repeatable): edgetpu, ethos-u55, "
                             "ethos-u65, ethos-u85, qnn:SOC (e.g. qnn:43 = SM8550)")
    parser.add_argument("--calibration", default="", help="--target: calibrate the int8 model on this bag / folder")


def system_facts() -> dict[str, Any]:
    """CPU, cores, OS, Python; OpenCL platforms when pyopencl imports; CUDA when torch imports."""
    from vla_accel.core.optional import module_available
    from vla_accel.core.machine import machine_info

    facts: dict[str, Any] = machine_info()
    if module_available("pyopencl"):
        try:
            import pyopencl as cl

            facts["opencl"] = [
                {"platform": p.name, "devices": [f"{d.name} ({cl.device_type.to_string(d.type)}, "
                                                 f"{d.max_compute_units} CUs)" for d in p.get_devices()]}
                for p in cl.get_platforms()
            ]
        except (cl.Error, RuntimeError, OSError) as exc:  # no ICD loader / no platform
            facts["opencl"] = f"unavailable: {exc}"
    else:
        facts["opencl"] = "pyopencl not installed"
    if module_available("torch"):
        import torch

        if torch.cuda.is_available():
            facts["cuda"] = [f"{torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
        else:
            facts["cuda"] = f"not available (torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})"
    else:
        facts["cuda"] = "torch not installed"
    from vla_accel.backends.npu_backend import intel_npu_device_nodes

    facts["accel_device_nodes"] = intel_npu_device_nodes()
    facts["edgetpu_usb"] = _coral_usb_present()
    return facts


def _coral_usb_present() -> bool:
    """Coral USB Accelerator ids (1a6e:089a before firmware load, 18d1:9302 after)."""
    root = Path("/sys/bus/usb/devices")
    if not root.is_dir():
        return False
    for device in root.iterdir():
        try:
            vendor = (device / "idVendor").read_text().strip()
            product = (device / "idProduct").read_text().strip()
        except OSError:
            continue
        if (vendor, product) in (("1a6e", "089a"), ("18d1", "9302")):
            return True
    return False


def _options_for(cls, precision: str, batch: int):
    from vla_accel.backends.base import BackendOptions

    # A requested precision applies where the backend has it; the others keep their default, so
    # e.g. `--precision int8` compares int8 LiteRT against the fp32 torch baseline in one run.
    default = "fp32" if "fp32" in cls.precisions else cls.precisions[0]
    chosen = precision if precision in cls.precisions else default
    return BackendOptions(precision=chosen, max_batch=batch)


def backend_report(names: list[str], *, model=None, load: bool = False, precision: str = "",
                   batch: int = 1) -> list[dict[str, Any]]:
    """One entry per backend: available, detail / missing + hint, and with ``load`` the device."""
    from vla_accel.core.spec import example_inputs
    from vla_accel.backends.registry import backend_class

    rows: list[dict[str, Any]] = []
    for name in names:
        row: dict[str, Any] = {"backend": name}
        try:
            cls = backend_class(name)
        except ImportError as exc:
            row.update(available=False, missing=[f"module for backend '{name}' ({exc})"],
                       hint="this build of vla_accel lacks that backend module")
            rows.append(row)
            continue
        row["description"] = cls.description
        row["precisions"] = list(cls.precisions)
        availability = cls.probe()
        row["available"] = availability.ok
        if availability.ok:
            row["detail"] = availability.detail
        else:
            row["missing"] = list(availability.missing)
            row["hint"] = availability.hint
        if load and availability.ok and model is not None:
            row["load"] = _try_load(cls, name, model, _options_for(cls, precision, batch), example_inputs)
        rows.append(row)
    return rows


def _try_load(cls, name: str, model, options, example_inputs) -> dict[str, Any]:
    try:
        backend = cls(model, options)
        backend.load()
        try:
            backend.infer(example_inputs(model.spec, 1, seed=0))
            info = backend.device_info()
        finally:
            backend.close()
    except VlaAccelError as exc:
        out = {"ok": False, "error": str(exc), "reason": exc.reason}
        if getattr(exc, "missing", None):
            out["missing"] = list(exc.missing)
        return out
    except (RuntimeError, OSError, ValueError, ImportError) as exc:  # a runtime's own failure
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "reason": "runtime_error"}
    return {"ok": True, "device": info.device, "kind": info.kind, "precision": info.precision,
            "runtime": info.runtime_version, "parallel_units": info.parallel_units,
            "hardware_id": info.hardware_id}


def _print_report(facts: dict[str, Any], rows: list[dict[str, Any]], calibration: dict | None, out) -> None:
    print("System", file=out)
    for key in ("cpu", "logical_cpus", "usable_cpus", "machine", "os", "python", "cuda"):
        print(f"  {key:14s} {facts.get(key)}", file=out)
    opencl = facts.get("opencl")
    if isinstance(opencl, list):
        for plat in opencl or [{"platform": "none", "devices": []}]:
            print(f"  {'opencl':14s} {plat['platform']}: {', '.join(plat['devices']) or 'no devices'}", file=out)
    else:
        print(f"  {'opencl':14s} {opencl}", file=out)
    print(f"  {'npu nodes':14s} {', '.join(facts['accel_device_nodes']) or 'none'}", file=out)
    print(f"  {'coral usb':14s} {'present' if facts['edgetpu_usb'] else 'none'}", file=out)
    print("\nBackends", file=out)
    for row in rows:
        mark = "ok  " if row["available"] else "--  "
        print(f"  {mark}{row['backend']:12s} {row.get('description', '')}", file=out)
        if row["available"]:
            print(f"        {row.get('detail', '')}", file=out)
        else:
            print(f"        missing: {'; '.join(row['missing'])}", file=out)
            print(f"        install: {row['hint']}", file=out)
        load = row.get("load")
        if load:
            if load["ok"]:
                print(f"        loaded: {load['hardware_id']} ({load['kind']}, {load['precision']}, "
                      f"{load['runtime']}, {load['parallel_units']} units)", file=out)
            else:
                print(f"        load failed: {load['error']}", file=out)
    usable = [r["backend"] for r in rows if r["available"] and (not r.get("load") or r["load"]["ok"])]
    print(f"\n{len(usable)} of {len(rows)} backends can run here: {', '.join(usable) or 'none'}", file=out)
    if calibration is not None:
        print("\nCalibration (stored for backend: auto)", file=out)
        from vla_accel.core.metrics import speedup

        baseline = next((r for r in calibration["records"] if r["backend"] == "torch"), None)
        for rec in calibration["records"]:
            ratio = f"  {speedup(baseline['p50_ms'], rec['p50_ms']):5.2f}x vs torch" if baseline else ""
            print(f"  {rec['backend']:12s} {rec['precision']:5s} p50 {rec['p50_ms']:8.2f} ms (batch 1)   "
                  f"{rec['throughput_fps']:8.1f} samples/s (batch {rec['batch']}){ratio}   {rec['device']}", file=out)
        for name, why in calibration["failures"].items():
            print(f"  {name:12s} not measured: {why}", file=out)
        print(f"  stored in {calibration['path']}", file=out)
        if calibration.get("load_average"):
            print(f"  load average {calibration['load_average'][0]:.1f} on {facts['logical_cpus']} CPUs (measured one "
                  "backend after another: other processes skew the ratios; `vla-accel bench` interleaves)", file=out)


def parse_backend_entries(text: str) -> list[tuple[str, str]]:
    """"torch,tflite:int8" -> [("torch", ""), ("tflite", "int8")] with canonical backend names."""
    from vla_accel.backends.registry import canonical_name, split_backend_spec

    entries = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            name, precision = split_backend_spec(part)
            entries.append((canonical_name(name), precision))
    return entries


def run_targets(args: argparse.Namespace) -> int:
    from vla_accel.commands.targets import check_target
    from vla_accel.models import load_model

    bundle = load_model(args.model)
    calibration = None
    if args.calibration:
        from vla_accel.bags.calibration import calibration_from_source

        calibration = calibration_from_source(args.calibration, bundle.spec)
    results = {}
    for target in args.target:
        try:
            results[target] = check_target(bundle, target, calibration)
        except VlaAccelError as exc:
            results[target] = {"error": str(exc)}
        result = results[target]
        print(f"{bundle.name} on {target}:")
        for key, value in result.items():
            print(f"  {key}: {value}")
    if args.json:
        text = json.dumps({"model": bundle.name, "targets": results}, indent=2, default=str)
        print(text) if args.json == "-" else Path(args.json).write_text(text, encoding="utf-8")
    return 0


def run(args: argparse.Namespace) -> int:
    from vla_accel.backends.registry import list_backends

    if args.target:
        return run_targets(args)

    entries = parse_backend_entries(args.backends) if args.backends else [(n, "") for n in list_backends()]
    names = list(dict.fromkeys(name for name, _ in entries))
    facts = system_facts()
    model = None
    if args.load or args.calibrate:
        from vla_accel.models import load_model

        model = load_model(args.model)
    rows = backend_report(names, model=model, load=args.load, precision=args.precision, batch=1)
    calibration = None
    if args.calibrate:
        from vla_accel.backends.registry import backend_class
        from vla_accel.backends.calibration import CalibrationStore, calibrate

        store = CalibrationStore()
        runnable = {r["backend"] for r in rows if r["available"] and (not r.get("load") or r["load"]["ok"])}
        records, failures = [], {}
        for name, precision in entries:
            if name not in runnable:
                continue
            options = _options_for(backend_class(name), precision or args.precision, args.batch)
            measured, failed = calibrate(model, [name], options, store=store, batch=args.batch, budget_s=args.seconds)
            records += measured
            failures.update({f"{n}:{options.precision}": why for n, why in failed.items()})
        calibration = {"path": str(store.path), "records": [r.__dict__ for r in records], "failures": failures,
                       "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else []}
    report = {"system": facts, "backends": rows}
    if calibration is not None:
        report["calibration"] = calibration
    model_rows = None
    if str(args.model).endswith((".yaml", ".yml")):
        from vla_accel.commands.model_check import check_model

        model_rows = check_model(args.model, [n for n in ("onnxruntime", "openvino") if n in names] or names)
        report["model_check"] = model_rows
    if args.json == "-":
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
    else:
        _print_report(facts, rows, calibration, sys.stdout)
        if model_rows is not None:
            from vla_accel.commands.model_check import print_rows

            print_rows(model_rows, sys.stdout)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
            print(f"\nreport written to {args.json}")
    return 1 if model_rows is not None and not all(r["ok"] for r in model_rows) else 0
