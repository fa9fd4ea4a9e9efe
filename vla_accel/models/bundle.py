"""``ModelBundle``: a model spec plus its weights or model file, and the exports made from it.

A bundle is cheap to construct; weights are generated / verified on first use. Exports are cached
under ``<cache_dir>/exports/<content_hash>/<format>-<precision>/`` and written into a temporary
folder that is renamed into place only when complete, so a killed export never leaves a half-written
model that a later run would pick up.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vla_accel.errors import ModelFileError, SpecError
from vla_accel.models.architecture import NetworkConfig
from vla_accel.models.progress import ExportProgress
from vla_accel.models.publish import ONNX_OPSET, publish_directory

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from vla_accel.core.spec import ModelSpec

CACHE_ENV = "VLA_ACCEL_CACHE"
MODEL_FORMATS = ("safetensors", "onnx", "tflite", "openvino", "engine", "pt2")
EXPORT_FORMATS = ("onnx", "openvino", "tflite", "pt2")
# What each export format can be asked for; a request outside this fails before any work is done.
# onnx int8: ONNX Runtime dynamic quantisation (int8 weights, activations quantised per call).
EXPORT_PRECISIONS = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "fp16")}
# The file a model-file format must end with.
FORMAT_SUFFIXES = {"onnx": ".onnx", "tflite": ".tflite", "openvino": ".xml", "engine": ".engine", "pt2": ".pt2"}


def default_cache_dir() -> Path:
    """$VLA_ACCEL_CACHE, else ~/.cache/vla_accel."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vla_accel"


def _sha256_file(path: Path, h: "hashlib._Hash | None" = None) -> "hashlib._Hash":
    h = h or hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h


class ModelBundle:
    """A VLA model: ``spec`` (ModelSpec), weights (reference network) or a ready model file."""

    def __init__(self, spec: "ModelSpec", *, name: str | None = None, cache_dir: str | Path | None = None,
                 builtin: bool = False):
        if spec.format not in MODEL_FORMATS:
            raise SpecError(
                f"model '{spec.name}': format must be one of {', '.join(MODEL_FORMATS)}, got {spec.format!r}"
            )
        self.spec = spec
        self.name = name or spec.name
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.builtin = builtin
        self._lock = threading.RLock()
        self._config: NetworkConfig | None = None
        self._weights: dict[str, "np.ndarray"] | None = None
        self._weights_digest: str | None = None
        self._content_hash: str | None = None

    def __repr__(self) -> str:
        return f"ModelBundle(name={self.name!r}, format={self.spec.format!r}, cache_dir={str(self.cache_dir)!r})"

    # --- what the bundle is made of -----------------------------------------------------------
    @property
    def format(self) -> str:
        return self.spec.format

    @property
    def has_torch_network(self) -> bool:
        """True when the model is the reference network with safetensors weights."""
        return self.spec.format == "safetensors"

    @property
    def is_program(self) -> bool:
        """A policy program of several graphs / a loop (flow matching, diffusion, autoregressive)."""
        return self.spec.program.kind != "single_pass"

    @property
    def network_config(self) -> NetworkConfig:
        if self.is_program and self.has_torch_network:
            raise ModelFileError(
                f"model '{self.name}' is a {self.spec.program.kind} program: its torch graphs come from "
                "graph_modules(), not torch_module()", reason="program_model")
        if self._config is None:
            if not self.has_torch_network:
                raise ModelFileError(
                    f"model '{self.name}' is a ready {self.spec.format} file ({self.model_file}); it has no "
                    "reference torch network (use a backend that runs that format)",
                    reason="no_torch_network",
                )
            self._config = NetworkConfig.from_spec(self.spec)
        return self._config

    @property
    def generated_weights(self) -> bool:
        """Weights come from the architecture seed (builtins, or a user spec without ``weights``)."""
        return self.has_torch_network and not self.spec.weights

    @property
    def weights_file(self) -> Path:
        """The safetensors file: the spec's ``weights``, or the generated file in the cache."""
        config = self.network_config  # raises for ready model files, which have no torch network
        if self.spec.weights:
            return self.spec.weights_path()
        return self.cache_dir / "weights" / f"{self.name}-{config.digest()}.safetensors"

    def graph_modules(self, device: "str | torch.device" = "cpu", dtype: "torch.dtype | None" = None) -> dict:
        """A reference program's graphs as torch modules (graph name -> module, eval mode)."""
        from vla_accel.models.program_bundle import graph_modules

        return graph_modules(self, device, dtype)

    def export_program(self, fmt: str, *, precision: str = "fp32", progress: bool = True,
                       force: bool = False) -> dict[str, Path]:
        """Each graph of a program exported to ``fmt`` (graph name -> model file, cached)."""
        from vla_accel.models.program_bundle import export_program

        return export_program(self, fmt, precision, progress, force)

    @property
    def model_file(self) -> Path | None:
        """A ready model file (onnx / tflite / OpenVINO .xml / TensorRT .engine) named by the spec,
        checked to exist; None for the reference network (use ``export``)."""
        if self.has_torch_network:
            return None
        if self.spec.program.graphs and any(g.file for g in self.spec.program.graphs):
            from vla_accel.models.program_bundle import graph_files

            return next(iter(graph_files(self).values()))
        path = self.spec.weights_path()
        if path is None:
            raise ModelFileError(
                f"model '{self.name}': format {self.spec.format} needs 'weights' naming the model file "
                f"(a {FORMAT_SUFFIXES[self.spec.format]} file)",
                reason="missing_model_file",
            )
        if not path.is_file():
            raise ModelFileError(f"model file not found: {path} (named by {self.spec.source})",
                                 reason="missing_model_file")
        if path.suffix.lower() != FORMAT_SUFFIXES[self.spec.format]:
            raise ModelFileError(
                f"model file {path} does not look like a {self.spec.format} model (expected a "
                f"{FORMAT_SUFFIXES[self.spec.format]} file)",
                reason="bad_model_file",
            )
        if self.spec.format == "openvino" and not path.with_suffix(".bin").is_file():
            raise ModelFileError(f"OpenVINO model {path} has no weights file {path.with_suffix('.bin')}",
                                 reason="missing_model_file")
        if path.stat().st_size == 0:
            raise ModelFileError(f"model file {path} is empty", reason="bad_model_file")
        return path

    def _regenerate_hint(self) -> str:
        if self.generated_weights:
            return f"Delete {self.weights_file} and it will be regenerated from the seed on next use."
        return "Re-export or re-download the weights named by the spec."

    # --- weights ------------------------------------------------------------------------------
    def ensure_weights(self) -> Path:
        """Generate the weights file if it is a generated one and absent; return its path."""
        path = self.weights_file
        if self.generated_weights and not path.is_file():
            from vla_accel.models.weights import generate_weights, save_weights

            with self._lock:
                if not path.is_file():
                    tensors = generate_weights(self.network_config)
                    save_weights(path, tensors, self.network_config)
        if not path.is_file():
            raise ModelFileError(f"weights file not found: {path}. {self._regenerate_hint()}",
                                 reason="missing_weights")
        return path

    def load_weights(self) -> dict[str, "np.ndarray"]:
        """Verified weights (name -> float32 array); read once and kept (read-only) in the bundle."""
        with self._lock:
            if self._weights is None:
                from vla_accel.models.weights import load_weights

                path = self.ensure_weights()
                tensors, digest = load_weights(path, self.network_config, regenerate_hint=self._regenerate_hint())
                for arr in tensors.values():
                    arr.flags.writeable = False
                self._weights, self._weights_digest = tensors, digest
            return self._weights

    def content_hash(self) -> str:
        """Hash of the spec and the weights / model file: the key of every cached export."""
        with self._lock:
            if self._content_hash is None:
                h = hashlib.sha256()
                spec_dict = self.spec.to_dict()
                h.update(json.dumps(spec_dict, sort_keys=True, default=str).encode())
                if self.has_torch_network and self.is_program:
                    from vla_accel.models.architecture import NETWORK_REVISION
                    from vla_accel.models.program_bundle import program_weights
                    from vla_accel.models.weights import tensor_digest

                    # the program graphs share the network's blocks and mask bias: a revision of
                    # those must not reuse exports made before it
                    h.update(f"network-revision:{NETWORK_REVISION}|".encode())
                    h.update(tensor_digest(program_weights(self)).encode())
                elif self.has_torch_network:
                    from vla_accel.models.architecture import NETWORK_REVISION

                    h.update(f"network-revision:{NETWORK_REVISION}|".encode())
                    h.update(self._weights_identity().encode())
                else:
                    # every file the model consists of: OpenVINO .bin, ONNX external data, each graph
                    from vla_accel.models.program_bundle import model_files

                    for path in model_files(self):
                        h.update(path.name.encode())
                        _sha256_file(path, h)
                self._content_hash = h.hexdigest()[:20]
            return self._content_hash

    def _weights_identity(self) -> str:
        if self._weights_digest is not None:
            return self._weights_digest
        from vla_accel.models.weights import read_metadata

        path = self.ensure_weights()
        recorded = read_metadata(path).get("tensor_digest")
        if recorded:
            return recorded
        return _sha256_file(path).hexdigest()

    # --- torch ----------------------------------------------------------------------------------
    def torch_module(self, device: "str | torch.device" = "cpu", dtype: "torch.dtype | None" = None) -> "torch.nn.Module":
        """The reference network in eval mode: forward(*inputs in spec.input_names order) ->
        normalised actions (B, steps, dims) float32. ``dtype`` (e.g. torch.float16) sets the
        compute precision; inputs are cast inside and the output is always float32."""
        import torch

        from vla_accel.models.network import ReferenceVLA

        weights = self.load_weights()
        with torch.device("meta"):
            module = ReferenceVLA(self.network_config)
        state = {name: torch.tensor(arr) for name, arr in weights.items()}
        module.load_state_dict(state, strict=True, assign=True)
        module = module.to(device=device, dtype=dtype) if dtype is not None else module.to(device=device)
        module.eval()
        module.requires_grad_(False)
        return module

    def program_stats(self, batch: int = 1) -> dict[str, Any]:
        """Per-graph parameters and FLOPs read from the graphs (torch modules or ONNX files), and one
        chunk's total (see graph_stats.program_stats); cached per batch."""
        from vla_accel.models.graph_stats import program_stats

        cache = self.__dict__.setdefault("_program_stats", {})
        if batch not in cache:
            cache[batch] = program_stats(self, batch)
        return cache[batch]

    def parameter_count(self) -> int:
        from vla_accel.models.architecture import count_parameters

        if self.is_program or not self.has_torch_network:
            return int(self.program_stats(1)["parameters"])
        return count_parameters(self.network_config)

    def flops(self, batch: int = 1) -> int:
        from vla_accel.models.architecture import flops_per_inference

        if self.is_program or not self.has_torch_network:
            return int(self.program_stats(batch)["flops_per_chunk"] or 0)
        return flops_per_inference(self.network_config, batch)

    # --- export ---------------------------------------------------------------------------------
    def export_dir(self, fmt: str, precision: str) -> Path:
        return self.cache_dir / "exports" / self.content_hash() / f"{fmt}-{precision}"

    def export(self, fmt: str, *, precision: str = "fp32", progress: bool = True, force: bool = False,
               aoti_device: str = "") -> Path:
        """Export to ``fmt`` (onnx | openvino | tflite | pt2) and return the model file path (cached).

        A user model that already is in ``fmt`` is returned as is; ONNX converts to OpenVINO;
        other conversions raise ModelFileError saying what is unavailable. pt2 is a torch.export
        program; with ``aoti_device`` (cpu | cuda) an AOTInductor package compiled for that device."""
        fmt = fmt.lower()
        if fmt == "pt2":
            from vla_accel.models.export_pt2 import export_pt2

            return export_pt2(self, precision=precision, aoti_device=aoti_device, progress=progress, force=force)
        if self.is_program:  # one file per graph, in one folder: the folder is returned
            paths = self.export_program(fmt, precision=precision, progress=progress, force=force)
            return next(iter(paths.values())).parent
        if fmt not in EXPORT_FORMATS and fmt != self.spec.format:
            raise ModelFileError(
                f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}", reason="bad_export_format"
            )
        if not self.has_torch_network:
            if fmt == self.spec.format and not (fmt == "onnx" and precision == "int8"):
                return self.model_file
            if not (fmt in ("openvino", "onnx") and self.spec.format == "onnx"):
                raise ModelFileError(
                    f"model '{self.name}' is a {self.spec.format} file ({self.spec.weights_path()}); conversion "
                    f"{self.spec.format} -> {fmt} is not available here (only onnx -> openvino and onnx -> int8 "
                    f"onnx are). Provide a "
                    f"{fmt} model in the spec or use a backend that runs {self.spec.format}.",
                    reason="conversion_unavailable",
                )
        if fmt == "tflite":
            from vla_accel.models.export_tflite import export_tflite  # heavy dependencies, imported on use

            return export_tflite(self, precision, progress, force)
        allowed = EXPORT_PRECISIONS[fmt]
        if precision not in allowed:
            raise ModelFileError(
                f"{fmt} export supports precision {', '.join(allowed)}; got {precision!r}", reason="bad_precision"
            )
        final_dir = self.export_dir(fmt, precision)
        filename = "model.onnx" if fmt == "onnx" else "model.xml"
        target = final_dir / filename
        with self._lock:
            complete = target.is_file() and (fmt != "openvino" or target.with_suffix(".bin").is_file())
            if complete and not force:
                return target
            if final_dir.exists() and not complete:
                shutil.rmtree(final_dir)  # damaged by hand (a file deleted): export again
            report = ExportProgress(f"{self.name} {fmt} {precision}", progress)
            final_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp_dir = Path(tempfile.mkdtemp(prefix=f".{fmt}-{precision}.", dir=final_dir.parent))
            try:
                if fmt == "onnx" and precision == "int8":
                    self._quantize_onnx_int8(tmp_dir / filename, report)
                elif fmt == "onnx":
                    self._export_onnx(tmp_dir / filename, report)
                else:
                    self._export_openvino(tmp_dir / filename, precision, report)
                os.chmod(tmp_dir, 0o755)  # mkdtemp creates 0700
                if force and final_dir.exists():
                    shutil.rmtree(final_dir)
                publish_directory(tmp_dir, final_dir)
            finally:
                if tmp_dir.exists():
                    shutil.rmtree(tmp_dir, ignore_errors=True)
            report.stage(f"done: {target}")
            return target

    def _export_onnx(self, path: Path, report: ExportProgress) -> None:
        import torch

        from vla_accel.core.spec import example_inputs
        from vla_accel.models.quiet import quiet_call

        report.stage("loading weights into the torch network")
        module = self.torch_module()
        sample = example_inputs(self.spec, batch=2, seed=0)
        args = tuple(torch.from_numpy(sample[name]) for name in self.spec.input_names)
        batch = torch.export.Dim("batch", min=1, max=4096)
        # forward(*inputs): torch.export sees one argument, the tuple of inputs.
        dynamic_shapes = (tuple({0: batch} for _ in args),)
        report.stage(f"exporting to ONNX (opset {ONNX_OPSET}, torch.export)")
        # The exporter's notes about torchvision ops and pytree deprecations are not actionable here.
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|copyreg).*")
            warnings.filterwarnings("ignore", message=r".*axis name.*will not be used.*")
            # Our progress lines only: the exporter's own output goes to a log beside the cache entry.
            log_path = path.parent.parent / f"{self.name}-onnx-export.log"
            program = quiet_call(
                log_path,
                torch.onnx.export,
                module,
                args,
                input_names=list(self.spec.input_names),
                output_names=[self.spec.action.output],
                opset_version=ONNX_OPSET,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                optimize=True,
                verbose=False,
            )
        report.stage(f"exporter output in {log_path}")
        report.stage("saving ONNX model")
        program.save(str(path), external_data=False)
        import onnx

        onnx.checker.check_model(str(path))
        report.stage(f"checked ONNX model ({path.stat().st_size / 1e6:.1f} MB)")

    def _quantize_onnx_int8(self, path: Path, report: ExportProgress) -> None:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        source = self.export("onnx", precision="fp32", progress=report.enabled)
        report.stage("quantising to int8 (ONNX Runtime dynamic quantisation: int8 weights, activations "
                     "quantised per call)")
        try:
            model = onnx.load(str(source))
            # The quantizer re-runs shape inference after rewriting Gemm weights; the exporter's stored
            # value_info then disagrees with it and fails, so drop it (runtimes infer shapes anyway).
            del model.graph.value_info[:]
            staging = path.with_name("fp32_for_quantisation.onnx")
            onnx.save(model, str(staging))
            quantize_dynamic(str(staging), str(path), weight_type=QuantType.QInt8)
            staging.unlink()
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError,
                ValueError, RuntimeError, OSError) as exc:
            raise ModelFileError(f"int8 quantisation of {source} failed: {exc}", reason="quantisation_failed") from exc
        report.stage(f"saved int8 ONNX model ({path.stat().st_size / 1e6:.1f} MB)")

    def _export_openvino(self, path: Path, precision: str, report: ExportProgress) -> None:
        import openvino as ov

        source = self.model_file if not self.has_torch_network else self.export("onnx", progress=report.enabled)
        report.stage(f"converting {source.name} to OpenVINO IR")
        try:
            # read_model parses ONNX with OpenVINO's ONNX frontend (what convert_model does for ONNX,
            # without loading the converter's other frontends); its errors are RuntimeError.
            model = ov.Core().read_model(str(source))
        except RuntimeError as exc:
            raise ModelFileError(f"OpenVINO cannot convert {source}: it is corrupt or not a supported ONNX model "
                                 f"({exc})", reason="bad_model_file") from exc
        # Weights stay fp32 unless fp16 is asked for: ov.save_model compresses to fp16 by default.
        ov.save_model(model, str(path), compress_to_fp16=(precision == "fp16"))
        report.stage(f"saved OpenVINO IR ({path.with_suffix('.bin').stat().st_size / 1e6:.1f} MB weights)")

    def info(self) -> dict[str, Any]:
        """Summary for ``vla-accel info`` and benchmark reports."""
        out: dict[str, Any] = {
            "name": self.name,
            "format": self.spec.format,
            "inputs": list(self.spec.input_names),
            "outputs": list(self.spec.output_names),
            "cache_dir": str(self.cache_dir),
        }
        if self.is_program:
            stats = self.program_stats(1)
            out.update({"program": self.spec.program.kind, "steps": self.spec.program.steps,
                        "parameters": stats["parameters"], "graphs": stats["graphs"],
                        "gflops_batch1": (stats["flops_per_chunk"] or 0) / 1e9})
        elif self.has_torch_network:
            from vla_accel.models.architecture import describe

            out.update(describe(self.network_config))
            out["weights_file"] = str(self.weights_file)
        else:
            out["model_file"] = str(self.spec.weights_path())
        return out
