"""What every int8 export is checked with: the float ops left in a .tflite, the exported model's
error against the torch network, and the per-tensor report written beside the model.

``<model>.quant.json`` / ``.png`` next to an int8 file hold: the model's own max / mean |Δa| and
correlation against fp32 torch on the calibration inputs (in-sample: the set the ranges came from),
and the per-tensor loss in action units (``quant_report.sensitivity``), worst first.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.models.bundle import ModelBundle
    from vla_accel.models.calibration_set import CalibrationSet

log = logging.getLogger(__name__)
REPORT_EVAL_SAMPLES = 8  # evaluation inputs for the per-tensor sweep (one forward per tensor each)
REPORT_RANGE_SAMPLES = 32


def report_path(model_file: Path) -> Path:
    return Path(model_file).with_suffix(".quant.json")


def tflite_op_dtypes(path: str | Path) -> list[tuple[str, list[str]]]:
    """(op name, dtypes of its inputs and outputs) for every op of a .tflite, delegates off."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    out = []
    for op in interp._get_ops_details():  # noqa: SLF001 (LiteRT's only op listing)
        dtypes = [np.dtype(tensors[i]["dtype"]).name for i in (*op["inputs"], *op["outputs"]) if i >= 0]
        out.append((op["op_name"], dtypes))
    return out


def tflite_op_shapes(path: str | Path) -> list[tuple[str, list[str], list[tuple[int, ...]]]]:
    """(op name, dtypes of its inputs and outputs, shapes of its activation tensors: the ones an op
    produces or the model takes as input, not constant weights) for every op of a .tflite."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()  # noqa: SLF001 (LiteRT's only op listing)
    activations = {i for op in ops for i in op["outputs"]} | {d["index"] for d in interp.get_input_details()}
    out = []
    for op in ops:
        used = [tensors[i] for i in (*op["inputs"], *op["outputs"]) if i >= 0]
        out.append((op["op_name"], [np.dtype(t["dtype"]).name for t in used],
                    [tuple(int(d) for d in t["shape"]) for t in used if t["index"] in activations]))
    return out


def tflite_float_ops(path: str | Path) -> list[str]:
    """Ops of the file that read or write a float tensor: an integer-only accelerator (Edge TPU,
    Ethos-U, Hexagon) hands each of them, and what follows, back to the CPU."""
    return [name for name, dtypes in tflite_op_dtypes(path) if any(d.startswith("float") for d in dtypes)]


def run_tflite(path: str | Path, batches: Sequence[dict[str, np.ndarray]], output: str) -> np.ndarray:
    """Run a .tflite on float input batches (quantising / dequantising integer I/O with the file's
    parameters); returns the concatenated float32 output."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    runner = interp.get_signature_runner("serving_default")
    details = runner.get_input_details()
    outs = []
    for batch in batches:
        feed = {}
        for name, value in batch.items():
            d = details[name]
            scale, zero = d["quantization"]
            if np.issubdtype(d["dtype"], np.integer) and scale:
                info = np.iinfo(d["dtype"])
                feed[name] = np.clip(np.round(value / scale + zero), info.min, info.max).astype(d["dtype"])
            else:
                feed[name] = value.astype(d["dtype"])
        result = runner(**feed)[output]
        od = runner.get_output_details()[output]
        scale, zero = od["quantization"]
        outs.append((result.astype(np.float32) - zero) * scale if scale else result.astype(np.float32))
    return np.concatenate(outs)


def torch_outputs(bundle: "ModelBundle", batches: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    import torch

    module = bundle.torch_module()
    with torch.inference_mode():
        return np.concatenate([module(*[torch.from_numpy(b[n]) for n in bundle.spec.input_names]).numpy()
                               for b in batches])


def reference_outputs(bundle: "ModelBundle", batches: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    """fp32 outputs to compare an integer model with: the torch network where the model has one,
    else (an imported ONNX graph) ONNX Runtime's CPU provider on the fp32 file."""
    if bundle.has_torch_network:
        return torch_outputs(bundle, batches)
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle.export("onnx", precision="fp32", progress=False)),
                                   providers=["CPUExecutionProvider"])
    output = bundle.spec.action.output
    return np.concatenate([session.run([output], dict(b))[0] for b in batches])


def error_stats(actual: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    corr = float(np.corrcoef(actual.ravel(), expected.ravel())[0, 1]) if actual.size > 1 else 1.0
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "correlation": corr}


def _subset(calibration: "CalibrationSet", samples: int) -> list[dict[str, np.ndarray]]:
    one = calibration.rebatched(1).batches
    stride = max(1, len(one) // samples)
    picked = one[::stride][:samples]
    return [{n: np.concatenate([b[n] for b in picked]) for n in picked[0]}]


def write_report(bundle: "ModelBundle", model_file: Path, calibration: "CalibrationSet",
                 model_error: dict[str, Any], *, kind: str) -> Path:
    """The per-tensor sensitivity of ``bundle``'s torch network plus the exported model's own
    error; written as ``<model_file>.quant.json`` + ``.png``. Returns the JSON path."""
    from vla_accel.models.quant_report import sensitivity

    ranges = calibration.rebatched(1).batches[:REPORT_RANGE_SAMPLES]
    ranges = [{n: np.concatenate([b[n] for b in ranges[i:i + 8]]) for n in ranges[0]}
              for i in range(0, len(ranges), 8)]
    evaluation = _subset(calibration, REPORT_EVAL_SAMPLES)
    info = {"model": bundle.name, "file": str(model_file), "kind": kind, **model_error,
            "error_measured_on": f"{calibration.samples} calibration samples (in-sample)",
            "calibration": calibration.record()}
    result = sensitivity(bundle.torch_module(), bundle.spec.input_names, ranges, evaluation, model_info=info)
    path = report_path(model_file)
    result.save(path)
    return path


def write_tflite_report(bundle: "ModelBundle", model_file: Path, calibration: "CalibrationSet",
                        meta: dict[str, Any]) -> Path | None:
    """int8 .tflite: float ops left, error against torch, per-tensor report. Never fails the export
    (the model is already written); a failure is logged."""
    try:
        batches = calibration.rebatched(int(meta.get("batch", 1))).batches
        expected = torch_outputs(bundle, batches)
        actual = run_tflite(model_file, batches, bundle.spec.action.output)
        stats = error_stats(actual, expected)
        stats["float_ops"] = tflite_float_ops(model_file)
        return write_report(bundle, model_file, calibration, stats, kind="tflite full-integer int8")
    except Exception as exc:  # noqa: BLE001 (a report failure must not lose the export)
        log.warning("int8 quantisation report for %s failed: %s: %s", model_file, type(exc).__name__, exc)
        return None


def write_onnx_report(bundle: "ModelBundle", model_file: Path, calibration: "CalibrationSet") -> Path | None:
    """Static QDQ ONNX: error against torch (ONNX Runtime CPU) and the per-tensor report."""
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        fixed = session.get_inputs()[0].shape[0]
        batches = calibration.rebatched(fixed).batches if isinstance(fixed, int) else calibration.batches
        actual = np.concatenate([session.run(None, b)[0] for b in batches])
        stats = error_stats(actual, torch_outputs(bundle, batches))
        return write_report(bundle, model_file, calibration, stats, kind="onnx static QDQ int8")
    except Exception as exc:  # noqa: BLE001 (a report failure must not lose the export)
        log.warning("int8 quantisation report for %s failed: %s: %s", model_file, type(exc).__name__, exc)
        return None


def write_openvino_report(bundle: "ModelBundle", model_file: Path, calibration: "CalibrationSet") -> Path | None:
    """NNCF int8 IR: error against torch (OpenVINO CPU, f32 hint) and the per-tensor report."""
    try:
        import openvino as ov

        compiled = ov.Core().compile_model(str(model_file), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        actual = np.concatenate([compiled(b)[0] for b in calibration.batches])
        stats = error_stats(actual, torch_outputs(bundle, calibration.batches))
        return write_report(bundle, model_file, calibration, stats, kind="openvino int8 (nncf)")
    except Exception as exc:  # noqa: BLE001
        log.warning("int8 quantisation report for %s failed: %s: %s", model_file, type(exc).__name__, exc)
        return None
