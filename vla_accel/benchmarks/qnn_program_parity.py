"""A policy program's graphs on the Hexagon HTP (``qnn-ort``; the x86-64 emulator here) against the
same program in ONNX Runtime on the CPU, per precision and per graph.

    python -m vla_accel.benchmarks.qnn_program_parity [--model tiny-flow] [--observations 2] \\
        [--steps N] [--json docs/measurements/qnn_program_parity.json]

For each variant (fp16; int8 with every graph A8W8; int8 with the step graph A16W8):

* ``chunk``: the whole action chunk of the HTP program against the CPU program, same observations,
  same seeded noise per call: max / mean |Δa|, correlation, and the correlation of the chunk's
  displacement from its start noise (the chunk is noise plus what the step graph integrated, so the
  chunk's own correlation is high whatever the step graph does);
* ``graphs``: each graph on its own, fed exactly what the CPU program fed it (every call of the
  step graph), each output's max |Δ| against the CPU graph's and the output's range;
* where every node ran (ORT's profile per graph; CPU fallback is refused at load).

Observations are generated scenes the int8 calibration did not see (seed 424242). Emulator
seconds are not a device time and are not reported.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np

VARIANTS = {"fp16": ("fp16", None), "int8-a8w8": ("int8", 8), "int8-step-a16w8": ("int8", {"step": 16})}


def _bundle(name: str, steps: int | None):
    from vla_accel.models import load_model
    from vla_accel.models.bundle import ModelBundle

    bundle = load_model(name)
    if not steps or steps == bundle.spec.program.steps:
        return bundle
    spec = dataclasses.replace(bundle.spec, program=dataclasses.replace(bundle.spec.program, steps=steps))
    return ModelBundle(spec, name=bundle.name, cache_dir=bundle.cache_dir, builtin=bundle.builtin)


def _stats(actual: np.ndarray, expected: np.ndarray) -> dict:
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    constant = float(np.std(actual)) == 0.0 or float(np.std(expected)) == 0.0
    correlation = 1.0 if constant and diff.max() == 0 else (
        float("nan") if constant else float(np.corrcoef(actual.ravel(), expected.ravel())[0, 1]))
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "correlation": correlation,
            "range": float(np.abs(expected).max())}


def measure(bundle, label: str, observations: list[dict]) -> dict:
    from vla_accel.backends.base import BackendOptions
    from vla_accel.backends.program_calibration import _Recording
    from vla_accel.backends.registry import create_backend
    from vla_accel.core.program import call_noise

    precision, bits = VARIANTS[label]
    spec = bundle.spec
    extra = {} if bits is None else {"activation_bits": bits}
    cpu = create_backend("onnxruntime", bundle, BackendOptions(precision="fp32")).load()
    htp = create_backend("qnn-ort", bundle, BackendOptions(precision=precision, extra=extra)).load()
    try:
        feeds: dict[str, list] = {name: [] for name in cpu._runner.sessions}
        cpu_sessions = dict(cpu._runner.sessions)
        cpu._runner.sessions = {n: _Recording(s, feeds[n]) for n, s in cpu_sessions.items()}
        chunks, refs, noises = [], [], []
        for index, observation in enumerate(observations):
            noise = call_noise(spec.program.seed, 1000 + index, (1, spec.action.steps, spec.action.dims))
            feed = {**observation, spec.program.noise: noise}
            refs.append(cpu.infer(feed)[spec.action.output])
            chunks.append(htp.infer(feed)[spec.action.output])
            noises.append(noise)
        actual, expected, noise = np.concatenate(chunks), np.concatenate(refs), np.concatenate(noises)
        chunk = _stats(actual, expected)
        chunk["displacement_correlation"] = float(np.corrcoef((actual - noise).ravel(), (expected - noise).ravel())[0, 1])
        graphs = {}
        for name, calls in feeds.items():
            per_output: dict[str, dict] = {}
            for call_feeds in calls:
                want = cpu_sessions[name].run(call_feeds)
                have = htp._runner.sessions[name].run(call_feeds)
                for output in want:
                    s = _stats(np.asarray(have[output]), np.asarray(want[output]))
                    old = per_output.get(output)
                    per_output[output] = s if old is None else {
                        "max_abs": max(old["max_abs"], s["max_abs"]), "range": max(old["range"], s["range"]),
                        "mean_abs": (old["mean_abs"] * old.get("_n", 1) + s["mean_abs"]) / (old.get("_n", 1) + 1),
                        "correlation": min(old["correlation"], s["correlation"]), "_n": old.get("_n", 1) + 1}
            for s in per_output.values():
                s.pop("_n", None)
            graphs[name] = {"calls": len(calls), "outputs": per_output}
        placement = htp.placement()
        info = htp.device_info().detail
        for name in graphs:
            graphs[name]["node_providers"] = placement["graphs"][name].get("node_providers", {})
            graphs[name]["model_file"] = Path(info["graphs"][name]["model_file"]).name
        return {"variant": label, "precision": precision, "activation_bits": bits if bits is not None else "fp16",
                "chunk": chunk, "graphs": graphs,
                "all_nodes_on_qnn": all(set(g["node_providers"]) == {"QNNExecutionProvider"} for g in graphs.values()),
                "calibration": info.get("calibration")}
    finally:
        htp.close()
        cpu.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-flow")
    parser.add_argument("--observations", type=int, default=2)
    parser.add_argument("--steps", type=int, default=0, help="integration steps (default: the spec's)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", dest="json_path", default="")
    args = parser.parse_args(argv)
    from vla_accel.models.calibration_set import synthetic_calibration

    bundle = _bundle(args.model, args.steps)
    observations = synthetic_calibration(bundle.spec, args.observations, batch=1, seed=424242).batches
    report = {"benchmark": "qnn_program_parity", "model": args.model, "program": bundle.spec.program.kind,
              "steps": bundle.spec.program.steps, "observations": args.observations,
              "reference": "the same program in onnxruntime fp32 on the CPU, same seeded noise",
              "target": "qnn-ort, Hexagon HTP emulator (onnxruntime-qnn, soc_model 43, htp_arch 73)",
              "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "variants": {}}
    for label in [v.strip() for v in args.variants.split(",") if v.strip()]:
        result = measure(bundle, label, observations)
        report["variants"][label] = result
        c = result["chunk"]
        print(f"{label:<16} chunk max |da| {c['max_abs']:.4f} mean {c['mean_abs']:.4f} corr {c['correlation']:.5f} "
              f"displacement corr {c['displacement_correlation']:.5f}; all nodes on QNN {result['all_nodes_on_qnn']}")
        for name, g in result["graphs"].items():
            outs = ", ".join(f"{o} {s['max_abs']:.4f} (range {s['range']:.2f})" for o, s in g["outputs"].items())
            print(f"{'':<16}   {name} x{g['calls']}: {outs}")
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
        print(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
