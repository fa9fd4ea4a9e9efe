"""Which ops of a model an integer accelerator takes, which fall back to the CPU, and what its
vendor compiler estimates (``vla-accel doctor --model M --target T``).

* ``ethos-u55`` / ``ethos-u65`` / ``ethos-u85``: Arm's compiler ``ethos-u-vela`` on the full-integer
  int8 .tflite (re-serialised first with every weight buffer inside the flatbuffer, which vela
  needs): NPU / CPU operator counts, the CPU ops with vela's reasons, SRAM use and its
  inference-time estimate (from vela's summary CSV).
* ``edgetpu``: no Edge TPU compiler is obtainable here, so the int8 .tflite is checked against
  Coral's published model requirements (coral.ai/docs/edgetpu/models-intro): the supported-op list,
  8-bit tensors (int32 only for biases and index inputs), and at most the 3 innermost dimensions of
  a tensor larger than 1. The op-specific limitations of that list (e.g. Mean and Pad along x / y
  only, Softmax on a 1-D input) are not checked: passing here is necessary, not sufficient. The
  compiler maps one partition, up to the first unsupported op; that op and everything after it run
  on the CPU.
* ``qnn:SOC``: the model is compiled for that Hexagon HTP (the ``qnn-ort`` backend: static QDQ int8,
  ``ep.context_enable`` context binary for the SoC) with CPU fallback disabled, one inference run,
  and ORT's profile read back for each node's provider; when the strict load fails, again with
  fallback allowed to list the nodes left to the CPU. (With fallback allowed ORT leaves the graph's
  input QuantizeLinear / output DequantizeLinear to the CPU even when QNN takes them in strict mode.)
"""
from __future__ import annotations

import csv
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vla_accel.errors import BackendUnavailableError, VlaAccelError

ETHOS_CONFIGS = {"ethos-u55": "ethos-u55-128", "ethos-u65": "ethos-u65-256", "ethos-u85": "ethos-u85-256"}
VELA_HINT = "Install Arm's Ethos-U compiler: pip install -r requirements/quantization.txt (ethos-u-vela)"
# The Edge TPU compiler's supported operations (coral.ai/docs/edgetpu/models-intro, "Supported
# operations", compiler / runtime 14+), as TFLite builtin names. DEQUANTIZE is not among them (a
# dequantised float output runs on the CPU; QUANTIZE is listed), nor are GATHER / GATHER_ND,
# BATCH_MATMUL, the comparisons and SELECT.
EDGETPU_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM",
    "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6",
    "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX",
    "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "SQUARED_DIFFERENCE", "TANH",
    "TRANSPOSE", "TRANSPOSE_CONV",
})
EDGETPU_MAX_INNER_DIMS = 3  # "only the 3 innermost dimensions may have a size greater than 1"


def parse_target(text: str) -> tuple[str, str]:
    """``ethos-u55`` -> ("ethos-u", "ethos-u55-128"); ``qnn:43`` / ``qnn:SM8550`` -> ("qnn", "43")."""
    value = text.strip().lower()
    if value in ETHOS_CONFIGS:
        return "ethos-u", ETHOS_CONFIGS[value]
    if value in ETHOS_CONFIGS.values():
        return "ethos-u", value
    if value == "edgetpu":
        return "edgetpu", ""
    if value.startswith("qnn"):
        soc = value.partition(":")[2] or "43"
        return "qnn", soc
    raise VlaAccelError(f"unknown target {text!r}; choose edgetpu, ethos-u55, ethos-u65, ethos-u85 or qnn:SOC "
                        "(SOC = QNN soc_model number, e.g. 43 for SM8550)", reason="bad_argument")


def inline_buffers(source: Path, target: Path) -> int:
    """Re-serialise a .tflite with every buffer inside the flatbuffer (converters may store large
    weights after it, addressed by offset); returns how many were moved in."""
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    raw = Path(source).read_bytes()
    model = fbu.read_model_from_bytearray(bytearray(raw))
    moved = 0
    for buffer in model.buffers:
        offset = int(getattr(buffer, "offset", 0) or 0)
        if offset > 1:
            buffer.data = bytearray(raw[offset:offset + int(buffer.size)])
            buffer.offset, buffer.size = 0, 0
            moved += 1
    Path(target).write_bytes(bytes(fbu.convert_object_to_bytearray(model)))
    return moved


def ethos_u(model_file: Path, config: str) -> dict[str, Any]:
    from vla_accel.core.optional import module_available

    if not module_available("ethosu"):
        raise BackendUnavailableError("ethos-u", ["ethos-u-vela"], VELA_HINT)
    with tempfile.TemporaryDirectory(prefix="vela-") as tmp:
        inline = Path(tmp) / "model.tflite"
        moved = inline_buffers(model_file, inline)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "ethosu.vela", str(inline), "--accelerator-config", config,
                               "--output-dir", str(Path(tmp) / "out")], capture_output=True, text=True, timeout=1800)
        seconds = time.perf_counter() - started
        text = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise VlaAccelError(f"ethos-u-vela failed on {model_file} ({config}): {text.strip()[-800:]}",
                                reason="compiler_failed")
        summary = next((Path(tmp) / "out").glob("*_summary_*.csv"), None)
        row = next(csv.DictReader(summary.open(encoding="utf-8"))) if summary else {}
    cpu_ops = re.findall(r"operator: (\w+),.*?\nReason: ([^\n]+)", text)
    counts = {k: int(v) for k, v in re.findall(r"(CPU|NPU) operators = (\d+)", text)}
    out = {
        "target": config, "compiler": "ethos-u-vela", "npu_ops": counts.get("NPU", 0), "cpu_ops": counts.get("CPU", 0),
        "cpu_op_types": sorted({op for op, _ in cpu_ops}),
        "cpu_reasons": sorted({f"{op}: {why.strip()}" for op, why in cpu_ops}),
        "buffers_inlined": moved, "compile_s": round(seconds, 1),
    }
    if row:
        out.update({"estimate_ms": round(float(row["inference_time"]) * 1e3, 2),
                    "system_config": row.get("system_config"), "sram_kib": round(float(row["sram_memory_used"]), 1),
                    "macs": int(float(row.get("nn_macs") or 0)) if row.get("nn_macs") else None})
    return out


def too_many_dims(shape) -> bool:
    """The Edge TPU rule on a tensor's shape: outside the 3 innermost dimensions every size is 1."""
    outer = list(shape)[:-EDGETPU_MAX_INNER_DIMS]
    return any(int(d) != 1 for d in outer)


def edgetpu(model_file: Path) -> dict[str, Any]:
    """The Edge TPU compiler's rules applied op by op, in graph order."""
    from vla_accel.models.int8_export import tflite_op_shapes

    ops = tflite_op_shapes(model_file)
    mapped, fallback, first_unsupported = 0, [], None
    for index, (name, dtypes, shapes) in enumerate(ops):
        reasons = []
        if name not in EDGETPU_OPS:
            reasons.append("op not supported by the Edge TPU compiler")
        if any(not d.startswith(("int8", "uint8", "int32")) for d in dtypes):
            reasons.append(f"non-8-bit tensor ({', '.join(sorted(set(dtypes)))})")
        if any(too_many_dims(shape) for shape in shapes):
            reasons.append("a tensor with more than 3 dimensions larger than 1")
        if reasons:
            fallback.append(f"{name}: {'; '.join(reasons)}")
            if first_unsupported is None:
                first_unsupported = index
        elif first_unsupported is None:
            mapped += 1
    counts: dict[str, int] = {}
    for entry in fallback:
        counts[entry] = counts.get(entry, 0) + 1
    return {"target": "edgetpu", "compiler": "rules (Edge TPU compiler not obtainable here)", "ops": len(ops),
            "ops_passing_rules": len(ops) - len(fallback),
            "rules": "coral.ai/docs/edgetpu/models-intro: supported ops, 8-bit tensors, 3 innermost dims; "
                     "op-specific limitations not checked",
            "mapped_before_first_unsupported": mapped,
            "first_unsupported": ops[first_unsupported][0] if first_unsupported is not None else None,
            "unsupported": [f"{k} (x{v})" for k, v in sorted(counts.items())],
            "note": "the compiler maps one partition up to the first unsupported op; ops after it run on the CPU"}


def qnn(bundle, soc: str, calibration=None, evaluation=None, activation_bits: int = 8) -> dict[str, Any]:
    """Strict first (CPU fallback disabled: the load fails unless QNN takes every node); when that
    fails, again with fallback allowed, to list the nodes left to the CPU. With ``calibration`` the
    int8 model is calibrated on it; with ``evaluation`` (input batches) the HTP's actions on them are
    compared with fp32 torch (max / mean |Δa|, correlation)."""
    from vla_accel.backends.base import BackendOptions
    from vla_accel.core.spec import example_inputs
    from vla_accel.backends.qnn_ort_backend import QnnOrtBackend
    from vla_accel.errors import BackendError

    strict_error = None
    for allow_fallback in (False, True):
        started = time.perf_counter()
        extra = {"soc_model": int(soc), "allow_cpu_fallback": allow_fallback, "activation_bits": activation_bits}
        if calibration is not None:
            extra["calibration"] = calibration
        try:
            backend = QnnOrtBackend(bundle, BackendOptions(precision="int8", extra=extra)).load()
        except BackendError as exc:
            if allow_fallback or "fallback" not in str(exc).lower():
                raise
            strict_error = str(exc)
            continue
        try:
            compile_s = time.perf_counter() - started
            t0 = time.perf_counter()
            first = evaluation[0] if evaluation else example_inputs(bundle.spec, 1, seed=0)
            first = {n: v[:1] for n, v in first.items()}
            backend.infer(first)
            infer_s = time.perf_counter() - t0
            accuracy = None
            if evaluation and not allow_fallback:
                from vla_accel.models.int8_export import error_stats, reference_outputs

                output = bundle.spec.action.output
                actual = np.concatenate([backend.infer(b)[output] for b in evaluation])
                accuracy = error_stats(actual, reference_outputs(bundle, evaluation))
                accuracy["samples"] = int(actual.shape[0])
            placement = backend.placement()
            info = backend.device_info()
        finally:
            backend.close()
        break
    providers = placement.get("node_providers", {})
    cpu_nodes = sorted(n for n, p in placement.get("nodes", {}).items() if "CPU" in p)
    return {"target": f"qnn soc_model {soc}", "compiler": "QNN HTP (onnxruntime-qnn context binary)",
            "all_nodes_on_qnn": strict_error is None and not cpu_nodes, "strict_error": strict_error,
            "node_providers": providers, "cpu_nodes": cpu_nodes,
            "context_binary": info.detail.get("context_binary"), "compile_and_load_s": round(compile_s, 1),
            "emulator_inference_s": round(infer_s, 2), "activation_bits": activation_bits,
            "accuracy_vs_fp32": accuracy,
            "note": "x86-64 HTP emulator: its time is not the device's"}


def qnn_graph(source: Path, calibration, feeds: dict, soc: str, out_dir: Path, activation_bits: int = 8,
              ) -> dict[str, Any]:
    """One ONNX graph (e.g. a graph of a policy program) on the Hexagon HTP: quantised to static
    QDQ for the HTP on ``calibration`` at batch 1, loaded with CPU fallback disabled, run on the
    first row of ``feeds``; every node's provider, and each output's max |Δ| against the fp32 graph
    on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    from vla_accel.backends.qnn_ort_backend import DEFAULT_HTP_ARCH, QnnWorkerClient, qnn_python
    from vla_accel.errors import BackendError
    from vla_accel.models.int8_static import quantize_onnx_qdq

    flavour = "qnn-a16" if activation_bits == 16 else "qnn"
    model = Path(out_dir) / f"{Path(source).stem}-{flavour}-{calibration.digest()}.onnx"
    if not model.is_file():
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        quantize_onnx_qdq(source, model, calibration, flavour=flavour, batch=1)
    row = {n: np.ascontiguousarray(v[:1]) for n, v in feeds.items()}
    reference = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in reference.get_inputs()}
    row = {n: v for n, v in row.items() if n in wanted}
    expected = dict(zip([o.name for o in reference.get_outputs()], reference.run(None, row)))
    options = {"backend_type": "htp", "soc_model": int(soc), "htp_arch": DEFAULT_HTP_ARCH,
               "htp_performance_mode": "burst"}
    started = time.perf_counter()
    client = QnnWorkerClient(qnn_python())
    try:
        try:
            client.request({"op": "load", "model": str(model), "provider_options": options,
                            "session_config": {"session.disable_cpu_ep_fallback": "1"}, "profile": True})
        except BackendError as exc:
            return {"target": f"qnn soc_model {soc}", "graph": Path(source).stem, "all_nodes_on_qnn": False,
                    "strict_error": str(exc)[:400], "activation_bits": activation_bits}
        load_s = time.perf_counter() - started
        t0 = time.perf_counter()
        reply = client.request({"op": "run"}, list(row.items()))
        infer_s = time.perf_counter() - t0
        placement = client.request({"op": "placement"})
    finally:
        client.close()
    errors = {}
    for name, value in reply["_arrays"].items():
        want = expected[name].astype(np.float64)
        errors[name] = {"max_abs": float(np.abs(value.astype(np.float64) - want).max()),
                        "range": float(np.abs(want).max())}
    providers = placement.get("node_providers", {})
    return {"target": f"qnn soc_model {soc}", "graph": Path(source).stem, "model_file": str(model),
            "all_nodes_on_qnn": bool(providers) and set(providers) == {"QNNExecutionProvider"},
            "node_providers": providers, "activation_bits": activation_bits,
            "compile_and_load_s": round(load_s, 1), "emulator_inference_s": round(infer_s, 2),
            "outputs_vs_cpu_fp32": errors, "note": "x86-64 HTP emulator: its time is not the device's; "
            "one calibration-set row, error against the fp32 graph on the CPU provider"}


def check_target(bundle, target: str, calibration=None, evaluation=None) -> dict[str, Any]:
    kind, value = parse_target(target)
    if kind == "qnn":
        return qnn(bundle, value, calibration, evaluation)
    from vla_accel.models.export_tflite import export_tflite

    model_file = export_tflite(bundle, "int8", progress=False, calibration=calibration)
    result = ethos_u(model_file, value) if kind == "ethos-u" else edgetpu(model_file)
    result["model_file"] = str(model_file)
    return result
