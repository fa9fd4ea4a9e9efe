"""torch -> LiteRT (.tflite) export of the reference network, in fp32, fp16 and full-integer int8.

Converter choice (measured on the project machine, see docs/backends.md):
* ``litert-torch`` lowers ``torch.export`` graphs straight to a .tflite flatbuffer and keeps
  torch==2.13.0; the alternatives (onnx2tf, onnx-tf) go through TensorFlow, a larger install that
  converts ONNX graphs op by op with its own layout guesses.
* ``ai-edge-quantizer`` (installed with litert-torch) then rewrites that fp32 file: ``fp16`` casts the
  weights to float16 (the classic TFLite "float16 quantisation": the GPU delegates run it in fp16,
  XNNPACK dequantises once at load); ``int8`` is static full-integer quantisation (int8 weights and
  activations, int8 model inputs and outputs) calibrated on representative frames, the form the
  Edge TPU compiler and most NPU delegates require. The backend quantises inputs and dequantises
  outputs with the scale / zero point stored in the file.

Shapes are static: litert-torch cannot lower the embedding lookup with a symbolic batch, so each
export is made for one batch size (``model_b<batch>.tflite``); the backend pads smaller batches.
Inputs are named exactly as the spec's tensor names (``serving_default`` signature), so backends
match them by name, never by position.

Everything is cached under ``<cache_dir>/exports/<content_hash>/tflite-<precision>/`` and written
to a temporary file first, then renamed into place, so an interrupted export is never picked up.
"""
from __future__ import annotations

import json
import keyword
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from vla_accel.core.fileio import atomic_path, atomic_write_text
from vla_accel.errors import BackendUnavailableError, ModelFileError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.spec import ModelSpec
    from vla_accel.models.bundle import ModelBundle
    from vla_accel.models.calibration_set import CalibrationSet

TFLITE_PRECISIONS = ("fp32", "fp16", "int8")
SIGNATURE_KEY = "serving_default"
CONVERTER_HINT = (
    "Install the LiteRT converter: pip install -r requirements/litert.txt "
    "(litert-torch + ai-edge-quantizer; keep torch==2.13.0 with `-c` a constraints file)."
)
# Calibration frames for int8: enough to see the activation ranges of varied scenes and
# instructions, few enough that calibration stays a few seconds on two cores.
DEFAULT_CALIBRATION_SAMPLES = 32

# What each precision's file is made with; a cached file made with another recipe is re-exported.
RECIPES = {
    "fp32": "litert-torch",
    "fp16": "litert-torch + float16 weight casting",
    # Full-integer with min/max ranges. ai-edge-quantizer's MSE ranges are 5x more accurate here
    # (max error 0.12 vs 0.56) but quantise only FULLY_CONNECTED / CONV_2D and leave the rest in
    # float: not an int8 model the Edge TPU compiler or an NPU delegate can take whole.
    "int8": "litert-torch + full-integer int8, min/max ranges",
}

_export_lock = threading.Lock()  # one conversion at a time per process (they use every core)


def tflite_path(bundle: "ModelBundle", precision: str, batch: int = 1) -> Path:
    """Where the export for (precision, batch) is cached."""
    return bundle.export_dir("tflite", precision) / f"model_b{int(batch)}.tflite"


def converter_available() -> bool:
    from vla_accel.core.optional import module_available

    return module_available("litert_torch") and module_available("ai_edge_quantizer")


def export_tflite(
    bundle: "ModelBundle",
    precision: str = "fp32",
    progress: bool = True,
    force: bool = False,
    *,
    batch: int = 1,
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    calibration: "CalibrationSet | None" = None,
    quant_report: bool = False,
) -> Path:
    """Export ``bundle`` to .tflite at ``precision`` for a fixed ``batch``; returns the cached file.

    int8: ``calibration`` (a CalibrationSet, e.g. from a rosbag) gives the representative inputs;
    without it, an existing int8 export is reused whatever it was calibrated on, else synthetic
    scenes are used. A different set re-exports. Its provenance goes into the sidecar JSON; with
    ``quant_report`` the per-tensor loss report (``model_b<batch>.quant.json`` / ``.png``) too."""
    if precision not in TFLITE_PRECISIONS:
        raise ModelFileError(
            f"tflite export supports precision {', '.join(TFLITE_PRECISIONS)}; got {precision!r}",
            reason="bad_precision",
        )
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 256:
        raise ModelFileError(f"tflite export batch must be an integer in 1..256, got {batch!r}", reason="bad_batch")
    if not bundle.has_torch_network:
        if bundle.spec.format == "tflite":
            return bundle.model_file
        raise ModelFileError(
            f"model '{bundle.name}' is a {bundle.spec.format} file; only the reference network (safetensors) "
            "can be converted to tflite here. Provide a .tflite model in the spec (format: tflite).",
            reason="conversion_unavailable",
        )
    target = tflite_path(bundle, precision, batch)
    wanted = calibration.digest() if (calibration is not None and precision == "int8") else None
    if _is_current(target, precision, wanted) and not force:
        return target
    if not converter_available():
        missing = [m for m, mod in (("litert-torch", "litert_torch"), ("ai-edge-quantizer", "ai_edge_quantizer"))
                   if not _importable(mod)]
        raise BackendUnavailableError("tflite", missing, CONVERTER_HINT)

    from vla_accel.models.progress import ExportProgress

    source = None
    if precision != "fp32":  # quantised variants are rewritten from the fp32 file
        source = export_tflite(bundle, "fp32", progress, force, batch=batch)
    report = ExportProgress(f"{bundle.name} tflite {precision} b{batch}", progress)
    with _export_lock:
        if _is_current(target, precision, wanted) and not force:  # another thread finished it while we waited
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        if source is None:
            meta = _convert_fp32(bundle, batch, target, report, progress)
        else:
            if precision == "int8" and calibration is None:
                from vla_accel.models.calibration_set import synthetic_calibration

                calibration = synthetic_calibration(bundle.spec, calibration_samples * batch, batch=batch)
            meta = _quantize(bundle, source, precision, batch, target, calibration, report)
        meta.update(
            recipe=RECIPES[precision],
            model=bundle.name,
            content_hash=bundle.content_hash(),
            precision=precision,
            batch=batch,
            seconds=round(time.perf_counter() - started, 2),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        atomic_write_text(target.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True))
        if precision == "int8" and quant_report:
            report.stage("per-tensor quantisation report")
            from vla_accel.models.int8_export import write_tflite_report

            write_tflite_report(bundle, target, calibration, meta)
    report.stage(f"done: {target} ({target.stat().st_size / 1e6:.2f} MB)")
    return target


def _is_current(target: Path, precision: str, calibration_digest: str | None = None) -> bool:
    """The cached file exists and was made with the current recipe (per its sidecar) and, when
    ``calibration_digest`` is given, calibrated on that set."""
    if not target.is_file():
        return False
    try:
        meta = json.loads(target.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if calibration_digest is not None and (meta.get("calibration") or {}).get("inputs_digest") != calibration_digest:
        return False
    return meta.get("recipe") == RECIPES[precision]


def _importable(module: str) -> bool:
    from vla_accel.core.optional import module_available

    return module_available(module)


def named_input_module(module, input_names: tuple[str, ...], output_name: str):
    """Wrap ``module`` (positional inputs) in a module whose forward has one parameter per spec
    input name and returns ``{output_name: actions}``.

    Why generated code: torch.export / litert-torch name the .tflite signature's inputs after the
    forward's parameter names (``*args`` gives ``args_0``...), and the dynamic-shape and kwargs
    plumbing in both rejects ``**kwargs`` wrappers. The names are checked to be plain identifiers
    before they are used.
    """
    import torch

    for name in (*input_names, output_name):
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ModelFileError(
                f"tensor name {name!r} is not a valid Python identifier; the tflite export names its "
                "signature inputs after the spec's tensor names (use letters, digits and '_')",
                reason="bad_tensor_name",
            )
    params = ", ".join(input_names)
    source = f"def forward(self, {params}):\n    return {{{output_name!r}: self.inner({params})}}\n"
    namespace: dict = {}
    exec(compile(source, "<vla_accel named_input_module>", "exec"), namespace)  # noqa: S102 (names checked)
    wrapper_type = type("NamedInputVLA", (torch.nn.Module,), {"forward": namespace["forward"]})
    wrapper = wrapper_type()
    wrapper.inner = module
    return wrapper.eval()


def _convert_fp32(bundle: "ModelBundle", batch: int, target: Path, report, progress: bool) -> dict:
    import torch

    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "y" if progress else "n")
    import litert_torch

    from vla_accel.core.spec import example_inputs

    spec = bundle.spec
    report.stage("loading weights into the torch network")
    module = named_input_module(bundle.torch_module("cpu"), spec.input_names, spec.action.output)
    sample = example_inputs(spec, batch=batch, seed=0)
    kwargs = {name: torch.from_numpy(sample[name]) for name in spec.input_names}
    report.stage(f"converting with litert-torch {litert_torch.__version__} (batch {batch})")
    with torch.no_grad():
        edge_model = litert_torch.convert(module, sample_kwargs=kwargs)
    with atomic_path(target, suffix=".tflite") as tmp:
        edge_model.export(str(tmp))
        _check_signature(tmp, spec)
    return {"converter": f"litert-torch {litert_torch.__version__}", "source": "torch"}


def _check_signature(path: Path, spec: "ModelSpec") -> None:
    """The converted file must expose the spec's tensor names; fail now rather than at run time."""
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_path=str(path)).get_signature_list()
    found = signatures.get(SIGNATURE_KEY, {})
    missing = [n for n in spec.input_names if n not in found.get("inputs", [])]
    if missing or spec.action.output not in found.get("outputs", []):
        raise ModelFileError(
            f"converted tflite signature {found} does not carry the spec's tensor names "
            f"(inputs {list(spec.input_names)}, output {spec.action.output!r})",
            reason="bad_model_file",
        )


def _quantize(bundle: "ModelBundle", source: Path, precision: str, batch: int, target: Path,
              calibration: "CalibrationSet | None", report) -> dict:
    import ai_edge_quantizer
    from ai_edge_quantizer import qtyping, quantizer, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    version = getattr(ai_edge_quantizer, "__version__", "") or _dist_version("ai-edge-quantizer")
    quant = quantizer.Quantizer(str(source))
    meta: dict = {"converter": f"litert-torch + ai-edge-quantizer {version}", "source": source.name}
    if precision == "fp16":
        manager = recipe_manager.RecipeManager()
        manager.add_weight_only_config(
            regex=".*",
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            num_bits=16,
            algorithm_key=AlgorithmName.FLOAT_CASTING,
        )
        quant.load_quantization_recipe(manager.get_quantization_recipe())
        report.stage("casting weights to float16")
        result = quant.quantize(enable_progress_report=False)
        meta["scheme"] = "fp16 weights, fp32 activations"
    else:
        quant.load_quantization_recipe(recipe.static_wi8_ai8())
        calibration = calibration.rebatched(batch)
        samples = list(calibration.batches)
        report.stage(f"calibrating int8 ranges on {len(samples)} batches ({calibration.provenance.get('source')})")
        ranges = quant.calibrate({SIGNATURE_KEY: samples}, num_threads=os.cpu_count() or 1)
        report.stage("quantising to full-integer int8")
        result = quant.quantize(ranges, enable_progress_report=False)
        meta["scheme"] = "full-integer int8 (weights, activations, inputs and outputs)"
        meta["calibration_samples"] = len(samples) * batch
        meta["calibration"] = calibration.record()
    with atomic_path(target, suffix=".tflite") as tmp:  # a fresh name: export_model refuses to overwrite
        result.export_model(str(tmp))
    return meta


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


# --- representative data (int8 calibration here, TensorRT int8 calibration) ---------------------
