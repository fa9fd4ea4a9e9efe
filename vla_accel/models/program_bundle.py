"""The graphs of a policy program: reference programs (seeded torch modules) and user exports (one
model file per graph), their exports to ONNX / OpenVINO (one file per graph, cached like single-pass
exports) and every file a model consists of (for the export cache key).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vla_accel.errors import ModelFileError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.models.bundle import ModelBundle

PROGRAM_EXPORT_FORMATS = ("onnx", "openvino", "tflite")


def is_program(bundle: "ModelBundle") -> bool:
    return bundle.spec.program.kind != "single_pass"


def policy_config(bundle: "ModelBundle"):
    from vla_accel.models.policy_config import PolicyConfig

    cached = getattr(bundle, "_policy_config", None)
    if cached is None:
        cached = bundle._policy_config = PolicyConfig.from_spec(bundle.spec)
    return cached


def program_weights(bundle: "ModelBundle") -> dict[str, np.ndarray]:
    """The reference program's seeded weights (generated in memory, read-only, kept in the bundle)."""
    with bundle._lock:
        cached = getattr(bundle, "_program_weights", None)
        if cached is None:
            import torch  # noqa: F401  (the module shapes come from the torch definition)

            from vla_accel.models.policy_network import build_graph_modules, generate_policy_weights, parameter_tensors

            config = policy_config(bundle)
            with torch.device("meta"):
                shapes = parameter_tensors(build_graph_modules(config))
            cached = generate_policy_weights(config, shapes)
            for arr in cached.values():
                arr.flags.writeable = False
            bundle._program_weights = cached
        return cached


def graph_modules(bundle: "ModelBundle", device: Any = "cpu", dtype: Any = None) -> dict[str, Any]:
    """Graph name -> torch module (forward takes the graph's inputs positionally, spec order)."""
    if not bundle.has_torch_network:
        raise ModelFileError(f"model '{bundle.name}' is a set of ready {bundle.spec.format} graphs; it has no "
                             "reference torch modules", reason="no_torch_network")
    from vla_accel.models.policy_network import load_graph_modules

    return load_graph_modules(policy_config(bundle), program_weights(bundle), device, dtype)


def graph_files(bundle: "ModelBundle") -> dict[str, Path]:
    """A user program's model file per graph (``program.graphs[i].file``, relative to the spec)."""
    out = {}
    for graph in bundle.spec.program.graphs:
        name = graph.file
        if not name and len(bundle.spec.program.graphs) == 1:
            name = bundle.spec.weights  # one graph: the spec's model file
        if not name:
            raise ModelFileError(f"model '{bundle.name}': program graph '{graph.name}' names no file",
                                 reason="missing_model_file")
        path = Path(name)
        if not path.is_absolute() and bundle.spec.source is not None:
            path = bundle.spec.source.parent / path
        if not path.is_file():
            raise ModelFileError(f"model file of graph '{graph.name}' not found: {path}", reason="missing_model_file")
        out[graph.name] = path
    return out


def onnx_external_files(path: Path) -> list[Path]:
    """The external-data files an ONNX model references (weights stored beside it)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001  (protobuf decode errors vary by version)
        raise ModelFileError(f"ONNX model {path} is corrupt: {exc}", reason="bad_model_file") from exc
    names = set()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    names.add(entry.value)
    return [path.parent / name for name in sorted(names)]


def model_files(bundle: "ModelBundle") -> list[Path]:
    """Every file a ready model consists of: graph files, OpenVINO .bin, ONNX external data."""
    if bundle.spec.program.graphs and any(g.file for g in bundle.spec.program.graphs):
        mains = list(graph_files(bundle).values())
    else:
        mains = [bundle.model_file]
    out = []
    for path in mains:
        out.append(path)
        if path.suffix.lower() == ".xml":
            out.append(path.with_suffix(".bin"))
        elif path.suffix.lower() == ".onnx":
            for extra in onnx_external_files(path):
                if not extra.is_file():
                    raise ModelFileError(f"ONNX model {path} references external data {extra}, which is missing",
                                         reason="missing_model_file")
                out.append(extra)
    return out


def example_feeds(bundle: "ModelBundle", batch: int = 2, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per graph: example inputs by name (observation, runtime, and earlier graphs' outputs from the torch
    modules), used to export each graph."""
    import torch

    program = bundle.spec.program
    env = program_example_feeds(bundle.spec, batch, seed)
    modules = graph_modules(bundle)
    out = {}
    for graph in program.graphs:
        feeds = {n: env[n] for n in graph.inputs}
        out[graph.name] = feeds
        with torch.inference_mode():
            results = modules[graph.name](*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in graph.inputs])
        if not isinstance(results, tuple):
            results = (results,)
        env.update({n: r.numpy() for n, r in zip(graph.outputs, results)})
        if program.kind == "autoregressive":
            for present, past in program.tokens.cache.items():
                env[past] = env[present]
    return out


def export_program(bundle: "ModelBundle", fmt: str, precision: str = "fp32", progress: bool = True,
                   force: bool = False) -> dict[str, Path]:
    """Export every graph to ``fmt`` (onnx | openvino); returns graph name -> model file (cached)."""
    from vla_accel.models.bundle import ExportProgress, publish_directory

    fmt = fmt.lower()
    if not bundle.has_torch_network:
        files = graph_files(bundle)
        if fmt == bundle.spec.format:
            return files
        if not (fmt == "openvino" and bundle.spec.format == "onnx"):
            raise ModelFileError(f"model '{bundle.name}': conversion of {bundle.spec.format} graphs to {fmt} is not "
                                 "available (only onnx -> openvino)", reason="conversion_unavailable")
    if fmt == "tflite" and (precision != "fp32" or bundle.spec.program.kind == "autoregressive"):
        raise ModelFileError(
            f"model '{bundle.name}': TFLite export of {bundle.spec.program.kind} programs is available in fp32 for "
            "flow matching and diffusion only (the next-token graph's key/value cache grows every call, and "
            "litert-torch converts fixed shapes); run it on onnxruntime or openvino", reason="conversion_unavailable")
    if fmt not in ("onnx", "openvino", "tflite") or precision not in ("fp32", "fp16") or (
            fmt != "openvino" and precision != "fp32"):
        raise ModelFileError(f"program export supports onnx fp32 and openvino fp32 / fp16; got {fmt} {precision}",
                             reason="bad_precision")
    final_dir = bundle.export_dir(fmt, precision)
    suffix = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}[fmt]
    targets = {g.name: final_dir / f"{g.name}{suffix}" for g in bundle.spec.program.graphs}
    with bundle._lock:
        if all(p.is_file() for p in targets.values()) and not force:
            return targets
        if final_dir.exists():
            shutil.rmtree(final_dir)
        report = ExportProgress(f"{bundle.name} {fmt} {precision}", progress)
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{fmt}-{precision}.", dir=final_dir.parent))
        try:
            if fmt == "onnx":
                _export_onnx_graphs(bundle, tmp_dir, report)
            elif fmt == "tflite":
                _export_tflite_graphs(bundle, tmp_dir, report)
            else:
                import openvino as ov

                sources = export_program(bundle, "onnx", progress=progress) if bundle.has_torch_network \
                    else graph_files(bundle)
                for name, source in sources.items():
                    report.stage(f"converting graph '{name}' to OpenVINO IR")
                    try:
                        model = ov.Core().read_model(str(source))
                    except RuntimeError as exc:
                        raise ModelFileError(f"OpenVINO cannot convert {source}: {exc}", reason="bad_model_file") from exc
                    ov.save_model(model, str(tmp_dir / f"{name}.xml"), compress_to_fp16=(precision == "fp16"))
            os.chmod(tmp_dir, 0o755)
            publish_directory(tmp_dir, final_dir)
        finally:
            if tmp_dir.exists():
                shutil.rmtree(tmp_dir, ignore_errors=True)
        report.stage(f"done: {final_dir}")
        return targets


def _export_onnx_graphs(bundle: "ModelBundle", directory: Path, report) -> None:
    import onnx
    import torch

    from vla_accel.models.bundle import ONNX_OPSET

    program = bundle.spec.program
    report.stage("building the torch graphs and example feeds")
    feeds = example_feeds(bundle, batch=2)
    modules = graph_modules(bundle)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    batch = torch.export.Dim("batch", min=1, max=4096)
    past = torch.export.Dim("past", min=1, max=65536)
    cache_inputs = set(program.tokens.cache.values()) if program.kind == "autoregressive" else set()
    for graph in program.graphs:
        module = modules[graph.name]
        args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[graph.name][n])) for n in graph.inputs)
        shapes = tuple({0: batch, 2: past} if n in cache_inputs else {0: batch} for n in graph.inputs)

        class Wrapped(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, *inputs):
                return self.inner(*inputs)

        report.stage(f"exporting graph '{graph.name}' to ONNX (opset {ONNX_OPSET})")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|copyreg).*")
            warnings.filterwarnings("ignore", message=r".*axis name.*will not be used.*")
            exported = torch.onnx.export(Wrapped(module).eval(), args, input_names=list(graph.inputs),
                                         output_names=list(graph.outputs), opset_version=ONNX_OPSET, dynamo=True,
                                         dynamic_shapes=(shapes,), optimize=True, verbose=False)
        path = directory / f"{graph.name}.onnx"
        exported.save(str(path), external_data=False)
        onnx.checker.check_model(str(path))
        report.stage(f"checked graph '{graph.name}' ({path.stat().st_size / 1e6:.1f} MB)")


def _export_tflite_graphs(bundle: "ModelBundle", directory: Path, report) -> None:
    """Each graph through litert-torch at batch 1 (the backend runs larger batches row by row); the
    signature inputs carry the graph's input names, the outputs its output names."""
    import keyword

    import torch

    try:
        import litert_torch
    except ImportError as exc:
        from vla_accel.models.export_tflite import CONVERTER_HINT

        raise ModelFileError(f"tflite export needs litert-torch: {CONVERTER_HINT}", reason="converter_missing") from exc
    program = bundle.spec.program
    feeds = example_feeds(bundle, batch=1)
    modules = graph_modules(bundle)
    for graph in program.graphs:
        for name in (*graph.inputs, *graph.outputs):
            if not name.isidentifier() or keyword.iskeyword(name):
                raise ModelFileError(f"graph '{graph.name}': tensor name {name!r} is not a Python identifier; the "
                                     "tflite signature is named after it", reason="bad_tensor_name")
        params = ", ".join(graph.inputs)
        source = (f"def forward(self, {params}):\n    out = self.inner({params})\n"
                  "    out = out if isinstance(out, tuple) else (out,)\n"
                  "    return dict(zip(self.names, out))\n")
        namespace: dict = {}
        exec(compile(source, "<vla_accel program graph>", "exec"), namespace)  # noqa: S102 (names checked)
        wrapper = type("ProgramGraph", (torch.nn.Module,), {"forward": namespace["forward"]})()
        wrapper.inner = modules[graph.name]
        wrapper.names = tuple(graph.outputs)
        sample = {n: torch.from_numpy(np.ascontiguousarray(feeds[graph.name][n])) for n in graph.inputs}
        report.stage(f"converting graph '{graph.name}' with litert-torch {litert_torch.__version__} (batch 1)")
        try:
            converted = litert_torch.convert(wrapper.eval(), sample_kwargs=sample)
            converted.export(str(directory / f"{graph.name}.tflite"))
        except Exception as exc:  # noqa: BLE001  (the converter raises many types; name the graph and the cause)
            raise ModelFileError(f"litert-torch could not convert graph '{graph.name}' of '{bundle.name}': "
                                 f"{type(exc).__name__}: {str(exc)[:400]}", reason="conversion_failed") from exc


def program_example_feeds(spec, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Observation and runtime inputs of a program by name (example values for exports)."""
    from vla_accel.backends.base import example_inputs
    from vla_accel.core.program import call_noise

    program = spec.program
    obs = example_inputs(spec, batch, seed)
    runtime = {
        program.noise: call_noise(seed, 0, (batch, spec.action.steps, spec.action.dims)),
        program.sample: call_noise(seed, 1, (batch, spec.action.steps, spec.action.dims)),
        program.time: np.full((batch,), 0.5 if program.kind == "flow_matching" else 3,
                              dtype=program.flow.time_dtype if program.kind == "flow_matching" else program.diffusion.time_dtype),
        "token": np.ones((batch, 1), dtype=np.int64),
        "position": np.ones((batch, 1), dtype=np.int64),
    }
    if program.step_index:
        runtime[program.step_index] = np.zeros((batch,), dtype=np.int64)
    return {**obs, **runtime}
