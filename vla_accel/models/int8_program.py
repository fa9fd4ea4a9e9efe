"""int8 for policy programs, graph by graph (a flow-matching prefix graph and its step graph, ...).

Each graph of the program is quantised on its own calibration set: the inputs that graph really
receives while the fp32 program runs on representative observations (the prefix graph: the
observations; the step graph: every step's sample, time, state and the prefix outputs), captured by
the caller (``benchmarks/int8_program.py`` runs the program and records them). Paths:

* ``onnx``: ONNX Runtime static QDQ int8 (``int8_static.quantize_onnx_qdq``, the CPU flavour);
* ``openvino``: OpenVINO int8 through NNCF (``int8_static.quantize_openvino_nncf``);
* ``tflite``: LiteRT full-integer int8 (ai-edge-quantizer's static int8 weights and activations,
  integer inputs and outputs) on the fp32 .tflite of each graph.

Never silently: a graph whose quantisation fails is kept in fp32, and a full-integer .tflite that
still has float ops lists them; both are in the result (``GraphInt8``) and in ``program_int8.json``
beside the files. ``keep_float`` keeps chosen graphs in fp32 on purpose (e.g. a step graph a target
runs in fp16), also recorded.

Cached under ``<cache>/exports/<content hash>/<format>-int8-static/program-r<recipe>-<digest>/``;
the digest covers every graph's calibration set and the kept-float graphs.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from vla_accel.core.fileio import atomic_write_text
from vla_accel.errors import ModelFileError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.models.bundle import ModelBundle
    from vla_accel.models.calibration_set import CalibrationSet

PROGRAM_INT8_FORMATS = ("onnx", "openvino", "tflite")
# 2: LiteRT graphs calibrated on the global min/max of every tensor over the set (was ai-edge-quantizer's
#    moving average of per-sample extremes, which clipped the step graph's velocity output)
PROGRAM_INT8_RECIPE = 2
SIDECAR = "program_int8.json"


@dataclass
class GraphInt8:
    """One graph's integer export: its file, whether it is int8 (``precision``), the float ops a
    full-integer .tflite kept, and why a graph stayed in float."""

    graph: str
    path: str
    precision: str  # "int8" | "a16w8" (16-bit activations, int8 weights) | "fp32" (kept in float)
    quantizer: str = ""
    float_ops: list[str] = field(default_factory=list)
    note: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def full_integer(self) -> bool:
        return self.precision in ("int8", "a16w8") and not self.float_ops

    def summary(self) -> str:
        if self.precision == "fp32":
            return f"{self.graph}: kept {self.precision} ({self.note})"
        if self.float_ops:
            counts: dict[str, int] = {}
            for op in self.float_ops:
                counts[op] = counts.get(op, 0) + 1
            listed = ", ".join(f"{op} x{n}" for op, n in sorted(counts.items()))
            return f"{self.graph}: {self.precision} with {len(self.float_ops)} float ops ({listed})"
        return f"{self.graph}: {self.precision}"


def program_calibration_digest(calibrations: Mapping[str, "CalibrationSet"], keep_float: Sequence[str] = ()) -> str:
    h = hashlib.sha256()
    for name in sorted(calibrations):
        h.update(f"{name}:{calibrations[name].digest()}|".encode())
    h.update(("keep:" + ",".join(sorted(keep_float))).encode())
    return h.hexdigest()[:16]


def program_int8_dir(bundle: "ModelBundle", fmt: str, calibrations: Mapping[str, "CalibrationSet"],
                     keep_float: Sequence[str] = (), bits: Mapping[str, int] | None = None) -> Path:
    from vla_accel.models.int8_static import QDQ_RECIPE

    digest = program_calibration_digest(calibrations, keep_float)
    tag = "".join(f"-{g}a16" for g, b in sorted((bits or {}).items()) if b == 16)
    # the graph quantisers' own recipe is part of the key: a changed QDQ recipe re-exports
    recipe = f"{PROGRAM_INT8_RECIPE}.{QDQ_RECIPE}" if fmt == "onnx" else str(PROGRAM_INT8_RECIPE)
    return bundle.export_dir(fmt, "int8-static") / f"program-r{recipe}-{digest}{tag}"


def load_program_int8(directory: Path) -> dict[str, GraphInt8]:
    data = json.loads((Path(directory) / SIDECAR).read_text(encoding="utf-8"))
    return {name: GraphInt8(**entry) for name, entry in data["graphs"].items()}


def export_program_int8(bundle: "ModelBundle", fmt: str, calibrations: Mapping[str, "CalibrationSet"], *,
                        keep_float: Sequence[str] = (), activation_bits: Mapping[str, int] | None = None,
                        float_time: bool = False, force: bool = False, progress: bool = False,
                        ) -> dict[str, GraphInt8]:
    """Quantise every graph of ``bundle``'s program for ``fmt`` (onnx | openvino | tflite), each on
    ``calibrations[graph]``; returns graph name -> GraphInt8 (cached per calibration sets).
    ``activation_bits``: graph -> 16 for 16-bit activations with int8 weights (A16W8: ONNX Runtime
    int16 QDQ, LiteRT's 16x8 full-integer mode; not for OpenVINO / NNCF); default 8.
    ``float_time`` (onnx): the nodes computed from the program's time input alone stay in float
    (``int8_static.float_subgraph``), listed in the graph's ``float_ops``."""
    from vla_accel.models.program_bundle import is_program
    from vla_accel.models.progress import ExportProgress

    if fmt not in PROGRAM_INT8_FORMATS:
        raise ModelFileError(f"program int8 export supports {PROGRAM_INT8_FORMATS}, got {fmt!r}", reason="bad_precision")
    if not is_program(bundle):
        raise ModelFileError(f"model '{bundle.name}' is a single-pass model: use int8_static / export_tflite",
                             reason="bad_precision")
    graphs = [g.name for g in bundle.spec.program.graphs]
    unknown = sorted(set(keep_float) - set(graphs))
    missing = [g for g in graphs if g not in calibrations and g not in keep_float]
    if unknown or missing:
        raise ModelFileError(f"program int8 of '{bundle.name}': graphs {graphs}; no calibration set for {missing}"
                             + (f", unknown graphs to keep in float {unknown}" if unknown else ""),
                             reason="bad_calibration")
    bits = {g: int((activation_bits or {}).get(g, 8)) for g in graphs}
    bad = {g: b for g, b in bits.items() if b not in (8, 16) or (b == 16 and fmt == "openvino")}
    if bad:
        raise ModelFileError(f"activation bits must be 8 or 16 (16 not with openvino / NNCF); got {bad}",
                             reason="bad_precision")
    if float_time and fmt != "onnx":
        raise ModelFileError("float_time is available for onnx (ONNX Runtime QDQ) only", reason="bad_precision")
    final_dir = program_int8_dir(bundle, fmt, calibrations, keep_float, bits)
    if float_time:
        final_dir = final_dir.with_name(final_dir.name + "-float-time")
    if (final_dir / SIDECAR).is_file() and not force:
        return load_program_int8(final_dir)
    report = ExportProgress(f"{bundle.name} {fmt} int8 per graph", progress)
    sources = bundle.export_program("onnx" if fmt in ("onnx", "openvino") else "tflite", progress=progress)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".program-int8.", dir=final_dir.parent))
    suffix = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}[fmt]
    results: dict[str, GraphInt8] = {}
    try:
        for name in graphs:
            out = tmp_dir / f"{name}{suffix}"
            calibration = calibrations.get(name)
            entry = GraphInt8(name, str(final_dir / out.name), "int8" if bits[name] == 8 else "a16w8",
                              calibration=calibration.record() if calibration is not None else {})
            if name in keep_float:
                entry.precision, entry.note = "fp32", "kept in float on request"
                _copy_float(sources[name], out, fmt)
            else:
                report.stage(f"graph '{name}': {calibration.samples} calibration samples")
                try:
                    time_input = bundle.spec.program.time
                    graph_inputs = next(g.inputs for g in bundle.spec.program.graphs if g.name == name)
                    float_inputs = (time_input,) if float_time and time_input in graph_inputs else ()
                    entry.quantizer, kept = _quantize_graph(fmt, sources[name], out, calibration, bits[name],
                                                            report, float_inputs)
                    if kept:
                        entry.float_ops = list(kept)
                        entry.note = (f"{len(kept)} nodes computed from the time input alone kept in float "
                                      "(the sinusoidal embedding's angles reach 1000 rad; an 8-bit grid over them "
                                      "is radians wide)")
                except (ModelFileError, RuntimeError, ValueError, TypeError, KeyError) as exc:
                    # a graph the tools cannot quantise runs in fp32, and says why
                    entry.precision = "fp32"
                    entry.note = f"quantisation failed, kept fp32: {type(exc).__name__}: {str(exc)[:300]}"
                    for stale in tmp_dir.glob(f"{name}.*"):
                        stale.unlink()
                    _copy_float(sources[name], out, fmt)
                if entry.precision != "fp32" and fmt == "tflite":
                    from vla_accel.models.int8_export import tflite_float_ops

                    entry.float_ops = tflite_float_ops(out)
                    if entry.float_ops:
                        entry.note = "float ops left by the quantiser run on the CPU of an integer accelerator"
            report.stage(entry.summary())
            results[name] = entry
        atomic_write_text(tmp_dir / SIDECAR, json.dumps(
            {"model": bundle.name, "format": fmt, "recipe": PROGRAM_INT8_RECIPE, "keep_float": sorted(keep_float),
             "graphs": {n: asdict(e) for n, e in results.items()}}, indent=2, sort_keys=True, default=str))
        from vla_accel.models.int8_static import _publish

        _publish(tmp_dir, final_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return results


def _copy_float(source: Path, out: Path, fmt: str) -> None:
    if fmt == "openvino":
        import openvino as ov

        ov.save_model(ov.Core().read_model(str(source)), str(out), compress_to_fp16=False)
    else:
        shutil.copyfile(source, out)


def _quantize_graph(fmt: str, source: Path, out: Path, calibration: "CalibrationSet", bits: int, report,
                    float_inputs: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    from vla_accel.models import int8_static

    if fmt == "onnx":
        flavour = "cpu-a16" if bits == 16 else "cpu"
        info = int8_static.quantize_onnx_qdq(source, out, calibration, flavour=flavour, report=report,
                                             float_inputs=float_inputs)
        return info["quantizer"], info["float_node_types"]
    if fmt == "openvino":
        return int8_static.quantize_openvino_nncf(source, out, calibration, report=report)["quantizer"], []
    return quantize_tflite_full_integer(source, out, calibration, activation_bits=bits), []


def quantize_tflite_full_integer(source: Path, out: Path, calibration: "CalibrationSet", *,
                                 activation_bits: int = 8) -> str:
    """ai-edge-quantizer static int8 (weights, activations, inputs and outputs) of one .tflite graph,
    calibrated row by row on ``calibration`` (batches keyed by the signature's input names);
    ``activation_bits=16``: int16 activations with int8 weights (TFLite's 16x8 mode)."""
    import numpy as np

    from vla_accel.core.fileio import atomic_path
    from vla_accel.models.export_tflite import converter_available

    if not converter_available():
        from vla_accel.errors import BackendUnavailableError
        from vla_accel.models.export_tflite import CONVERTER_HINT

        raise BackendUnavailableError("tflite", ["ai-edge-quantizer"], CONVERTER_HINT)
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    signatures = Interpreter(model_path=str(source)).get_signature_list()
    key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
    names = list(signatures[key]["inputs"])
    rows = calibration.rebatched(1).batches
    unfed = [n for n in names if rows and n not in rows[0]]
    if unfed or not rows:
        raise ModelFileError(f"calibration set for {Path(source).name} does not feed {unfed or names}",
                             reason="bad_calibration")
    samples = [{n: np.ascontiguousarray(row[n]) for n in names} for row in rows]
    quant = quantizer.Quantizer(str(source))
    name = "static_wi8_ai16" if activation_bits == 16 else "static_wi8_ai8"
    quant.load_quantization_recipe(getattr(recipe, name)())
    ranges = _global_ranges(source, getattr(recipe, name)(), {key: samples})
    result = quant.quantize(ranges, enable_progress_report=False)
    with atomic_path(out, suffix=".tflite") as tmp:
        result.export_model(str(tmp))
    return f"ai-edge-quantizer {name} (full-integer)"


def _global_min_max(qsv, new_qsv):
    """Range update across calibration samples: the extremes of every sample seen (min/max)."""
    import numpy as np

    if not qsv:
        return new_qsv
    return {**new_qsv, "min": np.minimum(qsv["min"], new_qsv["min"]), "max": np.maximum(qsv["max"], new_qsv["max"])}


def _global_ranges(source: Path, quant_recipe, data):
    """Every tensor's range over the whole calibration set, as ONNX Runtime's MinMax calibrator and
    TFLite's converter take it. ai-edge-quantizer's default keeps a moving average (0.95) of each
    sample's extremes: with one row per sample that narrows the ranges to the last samples' typical
    extremes, and values seen in calibration (the step graph's largest velocities) were clipped.
    Its calibration draws a progress bar per sample on stderr: silenced (the caller reports progress)."""
    import contextlib
    import io
    import os

    from ai_edge_quantizer import calibrator, recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(quant_recipe)
    calib = calibrator.Calibrator(str(source), num_threads=os.cpu_count() or 1, qsv_update_func=_global_min_max)
    with contextlib.redirect_stderr(io.StringIO()):
        calib.calibrate(data, manager)
    return calib.get_model_qsvs()
