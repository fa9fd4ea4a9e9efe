"""Static int8 from one calibration set for ONNX Runtime (QDQ) and OpenVINO (NNCF).

The same ``CalibrationSet`` that calibrates the full-integer TFLite model feeds:

* ONNX Runtime static quantisation (``onnxruntime.quantization.quantize_static``, QDQ format):
  QuantizeLinear / DequantizeLinear pairs around every quantised op, int8 weights, per-tensor 8-bit
  activation ranges from min/max over the set. ``flavour="qnn"`` makes the QDQ model the Hexagon HTP
  takes (uint8 activations, int8 weights, every op quantised, ``onnxruntime.quantization``'s QNN
  configuration), ``"qnn-a16"`` the same with 16-bit activations (A16W8, which the HTP runs
  natively), ``"cpu"`` the one ONNX Runtime's CPU kernels run fastest (uint8 activations,
  per-channel int8 weights),
  ``"cpu-a16"`` the same with int16 activations (A16W8; ONNX Runtime's CPU runs it through
  dequantised float kernels, an accuracy reference rather than a fast path).
  For the HTP flavours the written-out LayerNorms are first folded into ``LayerNormalization``
  nodes (``models/onnx_rewrite.py``: the HTP's quantised ``Reciprocal`` scaled every LayerNorm by
  ~0.57, the whole error of int8 on the HTP), with their scale vectors quantised uint8 asymmetric
  (the HTP's LayerNorm refuses an int8 symmetric scale next to unsigned activations).
* OpenVINO through NNCF (``nncf.quantize`` on the fp32 OpenVINO model, transformer preset), the
  maintained post-training quantisation for OpenVINO; the result is saved as IR.

Each export lives in ``<cache>/exports/<content hash>/<format>-int8-static/<flavour>-<calibration
digest>/`` with a ``calibration.json`` sidecar (the set's provenance), so a different set is a
different file and the provenance stays beside the model.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from vla_accel.core.fileio import atomic_write_text
from vla_accel.errors import BackendUnavailableError, ModelFileError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.models.bundle import ModelBundle
    from vla_accel.models.calibration_set import CalibrationSet

ORT_FLAVOURS = ("cpu", "cpu-a16", "qnn", "qnn-a16")
# Bumped whenever a flavour's quantiser settings change: part of the cached file's path.
QDQ_RECIPE = 4
NNCF_HINT = "Install NNCF: pip install -r requirements/quantization.txt (nncf; works with the pinned openvino)"


def _publish(tmp_dir: Path, final_dir: Path) -> None:
    from vla_accel.models.publish import publish_directory

    if final_dir.exists():
        shutil.rmtree(final_dir)
    publish_directory(tmp_dir, final_dir)


def _sidecar(calibration: "CalibrationSet", **extra) -> str:
    return json.dumps({"calibration": calibration.record(), **extra}, indent=2, sort_keys=True, default=str)


def onnx_qdq_path(bundle: "ModelBundle", calibration: "CalibrationSet", flavour: str = "cpu",
                  batch: int | None = None) -> Path:
    tag = f"{flavour}-r{QDQ_RECIPE}-{calibration.digest()}" + (f"-b{batch}" if batch else "")
    return bundle.export_dir("onnx", "int8-static") / tag / "model.onnx"


def export_onnx_qdq(bundle: "ModelBundle", calibration: "CalibrationSet", *, flavour: str = "cpu",
                    batch: int | None = None, force: bool = False, progress: bool = False) -> Path:
    """Static QDQ int8 ONNX of ``bundle`` calibrated on ``calibration`` (cached per set).
    ``batch`` fixes the batch dimension first (QNN's HTP runs static shapes)."""
    if flavour not in ORT_FLAVOURS:
        raise ModelFileError(f"ONNX static int8 flavour must be one of {ORT_FLAVOURS}, got {flavour!r}",
                             reason="bad_precision")
    target = onnx_qdq_path(bundle, calibration, flavour, batch)
    if target.is_file() and not force:
        return target
    from vla_accel.models.progress import ExportProgress

    report = ExportProgress(f"{bundle.name} onnx int8 static ({flavour})", progress)
    source = bundle.export("onnx", precision="fp32", progress=progress)
    return _build_cached(target, ".qdq.", report, lambda tmp_dir: _sidecar(
        calibration, flavour=flavour, batch=batch, source=str(source),
        **quantize_onnx_qdq(source, tmp_dir / "model.onnx", calibration, flavour=flavour, batch=batch, report=report)))


def quantize_onnx_qdq(source: Path, out: Path, calibration: "CalibrationSet", *, flavour: str = "cpu",
                      batch: int | None = None, report=None, float_inputs: tuple[str, ...] = ()) -> dict:
    """Quantise the fp32 ONNX file ``source`` into the static QDQ model ``out`` (one graph: a
    single-pass model or one graph of a policy program) calibrated on ``calibration``, whose batches
    are keyed by the graph's input names. ``float_inputs``: graph inputs whose own subgraph (every
    node computed from them and constants alone) stays in float. Returns what the sidecar records
    (quantiser, rewrites, nodes kept in float)."""
    try:
        import onnx
        from onnxruntime import quantization as q
    except ImportError as exc:
        raise BackendUnavailableError("onnxruntime", ["onnxruntime"], "pip install onnxruntime onnx") from exc
    if flavour not in ORT_FLAVOURS:
        raise ModelFileError(f"ONNX static int8 flavour must be one of {ORT_FLAVOURS}, got {flavour!r}",
                             reason="bad_precision")
    model = onnx.load(str(source))
    if batch:
        for value in list(model.graph.input) + list(model.graph.output):
            dim = value.type.tensor_type.shape.dim[0]
            dim.ClearField("dim_param")
            dim.dim_value = int(batch)
    rewrite = None
    if flavour.startswith("qnn"):
        from vla_accel.models.onnx_rewrite import fuse_layer_norms

        rewrite = fuse_layer_norms(model)
        if report is not None:
            report.stage(f"layer norms folded for the HTP: {rewrite.fused}"
                         + (f" ({len(rewrite.skipped)} left written out)" if rewrite.skipped else ""))
    kept = float_subgraph(model, float_inputs) if float_inputs else []
    fixed = Path(out).with_name(Path(out).stem + ".fp32.onnx")
    onnx.save(model, str(fixed))
    data = calibration.rebatched(batch) if batch else calibration
    names = {i.name for i in model.graph.input}
    unfed = sorted(names - set(data.batches[0])) if data.batches else sorted(names)
    if unfed:
        raise ModelFileError(f"calibration set for {Path(source).name} does not feed {unfed}", reason="bad_calibration")

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self._it = iter(data.batches)

        def get_next(self):
            item = next(self._it, None)
            return None if item is None else {n: v for n, v in item.items() if n in names}

        def rewind(self):
            self._it = iter(data.batches)

    if report is not None:
        report.stage(f"calibrating on {data.samples} samples ({calibration.provenance.get('source')})")
    try:
        if flavour.startswith("qnn"):
            from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

            activations = q.QuantType.QUInt16 if flavour == "qnn-a16" else q.QuantType.QUInt8
            scales = {n.input[1]: [{"quant_type": q.QuantType.QUInt8}] for n in model.graph.node
                      if n.op_type == "LayerNormalization" and len(n.input) > 1}
            config = get_qnn_qdq_config(str(fixed), Reader(), activation_type=activations,
                                        weight_type=q.QuantType.QInt8, per_channel=True,
                                        init_overrides=scales or None, nodes_to_exclude=kept or None)
            q.quantize(str(fixed), str(out), config)
        else:
            # uint8 activations with int8 weights (U8S8): what ONNX Runtime's x86 int8 kernels run
            # fastest (measured 3.7x faster than S8S8 on the imported ACT, same mean error)
            activations = q.QuantType.QInt16 if flavour == "cpu-a16" else q.QuantType.QUInt8
            q.quantize_static(str(fixed), str(out), Reader(), quant_format=q.QuantFormat.QDQ,
                              activation_type=activations, weight_type=q.QuantType.QInt8,
                              per_channel=True, calibrate_method=q.CalibrationMethod.MinMax,
                              nodes_to_exclude=kept or None)
    finally:
        fixed.unlink(missing_ok=True)
    return {"quantizer": "onnxruntime.quantization QDQ", "recipe": QDQ_RECIPE,
            "rewrites": rewrite.record() if rewrite else None, "float_nodes": kept,
            "float_node_types": [n.op_type for n in model.graph.node if n.name in set(kept)]}


def float_subgraph(model, inputs: tuple[str, ...]) -> list[str]:
    """Names of the nodes of ``model`` computed from ``inputs`` and constants alone (in graph order).
    Why: a flow step graph's sinusoidal time embedding multiplies t by up to 1000 before sin / cos;
    an 8-bit grid over those angles is several radians wide, so the embedding becomes noise. The
    subgraph of a scalar input per row costs little in float."""
    constants = {i.name for i in model.graph.initializer}
    derived = set(inputs)
    names = []
    for index, node in enumerate(model.graph.node):
        sources = [i for i in node.input if i]
        if node.op_type == "Constant":
            constants.update(node.output)
            continue
        if sources and any(i in derived for i in sources) and all(i in derived or i in constants for i in sources):
            derived.update(node.output)
            if not node.name:
                node.name = f"float_subgraph_{index}"
            names.append(node.name)
    return names


def nncf_available() -> bool:
    from vla_accel.core.optional import module_available

    return module_available("nncf")


def export_openvino_nncf(bundle: "ModelBundle", calibration: "CalibrationSet", *, force: bool = False,
                         progress: bool = False) -> Path:
    """OpenVINO int8 IR quantised by NNCF on ``calibration`` (cached per set)."""
    target = bundle.export_dir("openvino", "int8-static") / f"nncf-{calibration.digest()}" / "model.xml"
    if target.is_file() and target.with_suffix(".bin").is_file() and not force:
        return target
    if not nncf_available():
        raise BackendUnavailableError("openvino", ["nncf"], NNCF_HINT)
    from vla_accel.models.progress import ExportProgress

    report = ExportProgress(f"{bundle.name} openvino int8 (nncf)", progress)
    source = bundle.export("onnx", precision="fp32", progress=progress)
    return _build_cached(target, ".nncf.", report, lambda tmp_dir: _sidecar(
        calibration, source=str(source), **quantize_openvino_nncf(source, tmp_dir / "model.xml", calibration,
                                                                   report=report)))


def _build_cached(target: Path, prefix: str, report, build) -> Path:
    """Make ``target``'s folder in a temporary sibling (``build(tmp_dir)`` writes the model and returns
    its calibration sidecar) and publish it whole, so a failed or interrupted build leaves no cache entry."""
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent.parent))
    try:
        atomic_write_text(tmp_dir / "calibration.json", build(tmp_dir))
        _publish(tmp_dir, target.parent)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    report.stage(f"done: {target}")
    return target


def quantize_openvino_nncf(source: Path, out: Path, calibration: "CalibrationSet", *, report=None) -> dict:
    """NNCF int8 of the fp32 ONNX file ``source`` (one graph), saved as IR ``out`` (+ .bin);
    ``calibration``'s batches are keyed by the graph's input names."""
    if not nncf_available():
        raise BackendUnavailableError("openvino", ["nncf"], NNCF_HINT)
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(source))
    names = [i.get_any_name() for i in model.inputs]
    unfed = [n for n in names if calibration.batches and n not in calibration.batches[0]]
    if unfed or not calibration.batches:
        raise ModelFileError(f"calibration set for {Path(source).name} does not feed {unfed or names}",
                             reason="bad_calibration")
    items = [{n: b[n] for n in names} for b in calibration.batches]
    if report is not None:
        report.stage(f"nncf.quantize on {calibration.samples} samples ({calibration.provenance.get('source')})")
    quantised = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                              preset=nncf.QuantizationPreset.MIXED, subset_size=max(1, len(items)))
    ov.save_model(quantised, str(out), compress_to_fp16=False)
    return {"quantizer": f"nncf {nncf.__version__}"}
