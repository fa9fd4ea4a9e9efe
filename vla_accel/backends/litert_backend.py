"""The LiteRT (TFLite) family: ``tflite`` (CPU, XNNPACK), ``edgetpu`` (Coral), ``litert-gpu`` (Mali and
other GPUs), ``hexagon`` / ``qnn`` (Qualcomm DSP / NPU) and ``external`` (any vendor delegate, e.g. the
VX delegate of NXP i.MX 8M Plus).

All of them drive the same ``Interpreter(model_path, experimental_delegates=[...], num_threads=...)``
from ``ai_edge_litert.interpreter`` (or ``tflite_runtime.interpreter`` where only that is installed),
imported inside ``_load`` only. What differs is the delegate library, the precision the hardware
needs and the model file:

* tensors are matched BY NAME to the spec's tensor names through the model's signature (the
  converter sorts inputs alphabetically and may prefix them ``serving_default_``); a model whose
  names cannot be matched fails at load with both name lists;
* int8 / int16 models: inputs are quantised with the scale / zero point stored in the file and
  outputs dequantised here, so callers always pass and get float32 (tokens stay int32);
* batch: a model with a dynamic batch dimension is resized per call; a fixed-batch model (what
  litert-torch produces) runs batches up to its size by padding, larger ones are an InputError.
  For the reference network the backend exports batch 1 and ``max_batch`` and picks the smallest
  interpreter that fits, so batch-1 latency never pays for padding.

Options (``BackendOptions.extra``):
  model_path        a ready .tflite to run instead of the export (e.g. an ``*_edgetpu.tflite``)
  delegate_path     the delegate library (each backend has a default file name, see below)
  delegate_options  dict passed to ``load_delegate(path, options)``
  xnnpack           tflite only: False runs the builtin kernels without the XNNPACK delegate
  device            edgetpu only: ":0", "usb", "usb:0", "pci:0" (which Edge TPU to use)
  backend_type      qnn only: "htp" (default), "gpu" or "dsp"
"""
from __future__ import annotations

import ctypes.util
import glob
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from vla_accel.backends.base import Availability, Backend, DeviceInfo, as_model_inputs, module_available
from vla_accel.errors import BackendError, BackendUnavailableError, InputError, ModelFileError

LITERT_HINT = (
    "Install LiteRT: pip install ai-edge-litert (or, on boards whose vendor ships it, the tflite-runtime "
    "wheel; tflite-runtime 2.14 needs numpy<2)."
)
SIGNATURE_PREFIXES = ("serving_default_",)
# Library folders searched besides the dynamic loader's own list (ldconfig) and LD_LIBRARY_PATH.
LIBRARY_DIRS = (
    "/usr/lib",
    "/usr/local/lib",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/arm-linux-gnueabihf",
    "/usr/lib/x86_64-linux-gnu",
    "/lib",
    "/vendor/lib64",
    "/vendor/lib",
)


# --- small helpers shared with npu_backend and doctor ------------------------------------------
def litert_available() -> bool:
    return module_available("ai_edge_litert") or module_available("tflite_runtime")


def library_dirs() -> list[str]:
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    return dirs + [d for d in LIBRARY_DIRS if d not in dirs]


def find_library_file(library: str, extra_dirs: tuple[str, ...] | list[str] = ()) -> str | None:
    """Locate a shared library without loading it: an explicit path, the known folders (plus
    ``extra_dirs``), then the dynamic loader's cache (ctypes.util.find_library)."""
    if os.sep in library:
        return library if os.path.isfile(library) else None
    for folder in [*extra_dirs, *library_dirs()]:
        candidate = os.path.join(folder, library)
        if os.path.isfile(candidate):
            return candidate
    stem = library[3:] if library.startswith("lib") else library
    stem = stem.split(".so")[0]
    return ctypes.util.find_library(stem)


def import_interpreter_module() -> tuple[Any, str]:
    """(interpreter module, runtime label): ai_edge_litert first, else tflite_runtime."""
    from importlib import metadata

    try:
        from ai_edge_litert import interpreter as module

        dist = "ai-edge-litert"
    except ImportError:
        try:
            from tflite_runtime import interpreter as module

            dist = "tflite-runtime"
        except ImportError as exc:
            raise BackendUnavailableError("tflite", ["ai-edge-litert (or tflite-runtime)"], LITERT_HINT) from exc
    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        version = "unknown"
    return module, f"{dist} {version}"


def coral_pycoral_available() -> bool:
    """True only for Coral's own pycoral (which has pycoral/utils/edgetpu.py). The PyPI project
    named ``pycoral`` is an unrelated coral-reef tool; it is never imported or depended on."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("pycoral")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(os.path.isfile(os.path.join(loc, "utils", "edgetpu.py")) for loc in spec.submodule_search_locations)


@dataclass
class _TensorCodec:
    """How one model tensor is fed or read: name in the model, dtype, and affine quantisation."""

    spec_name: str
    model_name: str
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantised(self) -> bool:
        return self.scale > 0 and self.dtype.kind in "iu"

    def encode(self, values: np.ndarray) -> np.ndarray:
        if self.quantised:
            info = np.iinfo(self.dtype)
            q = np.rint(values.astype(np.float32) / np.float32(self.scale)) + self.zero_point
            return np.clip(q, info.min, info.max).astype(self.dtype)
        return np.ascontiguousarray(values, dtype=self.dtype)

    def decode(self, values: np.ndarray) -> np.ndarray:
        if self.quantised:
            return (values.astype(np.float32) - np.float32(self.zero_point)) * np.float32(self.scale)
        return np.array(values, dtype=np.float32, copy=True)


def _normalise_name(name: str) -> str:
    for prefix in SIGNATURE_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.split(":")[0]


def _codec(spec_name: str, model_name: str, detail: Mapping[str, Any]) -> _TensorCodec:
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []), dtype=np.float64)
    zeros = np.asarray(params.get("zero_points", []), dtype=np.int64)
    if scales.size > 1:
        raise ModelFileError(
            f"model tensor '{model_name}' uses per-channel quantisation on an input/output; only per-tensor "
            "scale/zero point is supported at the model boundary",
            reason="bad_model_file",
        )
    scale = float(scales[0]) if scales.size else float(detail.get("quantization", (0.0, 0))[0])
    zero = int(zeros[0]) if zeros.size else int(detail.get("quantization", (0.0, 0))[1])
    return _TensorCodec(spec_name, model_name, np.dtype(detail["dtype"]), scale, zero)


def match_names(wanted: tuple[str, ...], available: list[str], what: str, path: Path) -> dict[str, str]:
    """spec name -> model name: exact, else after dropping signature prefixes / ':0' suffixes."""
    mapping: dict[str, str] = {}
    normalised: dict[str, list[str]] = {}
    for name in available:
        normalised.setdefault(_normalise_name(name), []).append(name)
    for name in wanted:
        if name in available:
            mapping[name] = name
        elif len(normalised.get(name, [])) == 1:
            mapping[name] = normalised[name][0]
    missing = [n for n in wanted if n not in mapping]
    if missing:
        raise ModelFileError(
            f"{path}: cannot match the spec's {what} {missing} to the model's {what} {sorted(available)}. "
            "Export the model with the spec's tensor names (vla-accel export names them so), or edit the "
            "spec's tensor names to the model's.",
            reason="tensor_name_mismatch",
        )
    return mapping


class _Runner:
    """One interpreter (one batch size): named, (de)quantised, thread-safe invoke."""

    def __init__(self, interpreter, spec, path: Path):
        self.interpreter = interpreter
        self.path = path
        signatures = interpreter.get_signature_list()
        self.signature = None
        if signatures:
            key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
            runner = interpreter.get_signature_runner(key)
            in_details = runner.get_input_details()
            out_details = runner.get_output_details()
            self.signature = runner
        else:  # a model without signatures: the tensor names of the main graph
            interpreter.allocate_tensors()
            in_details = {d["name"]: d for d in interpreter.get_input_details()}
            out_details = {d["name"]: d for d in interpreter.get_output_details()}
        if len(in_details) != len(spec.input_names):
            raise ModelFileError(
                f"{path} has {len(in_details)} inputs {sorted(in_details)}; the spec names "
                f"{len(spec.input_names)}: {list(spec.input_names)}",
                reason="tensor_name_mismatch",
            )
        in_map = match_names(spec.input_names, list(in_details), "inputs", path)
        if len(out_details) == 1:
            # a single output is the action chunk whatever the converter called it
            out_map = {spec.action.output: next(iter(out_details))}
        else:
            out_map = match_names((spec.action.output,), list(out_details), "outputs", path)
        self.inputs = [_codec(n, in_map[n], in_details[in_map[n]]) for n in spec.input_names]
        self.output = _codec(spec.action.output, out_map[spec.action.output], out_details[out_map[spec.action.output]])
        self._index = {c.model_name: int(in_details[c.model_name]["index"]) for c in self.inputs}
        self._out_index = int(out_details[self.output.model_name]["index"])
        batches = {int(in_details[c.model_name]["shape_signature"][0]) for c in self.inputs
                   if len(in_details[c.model_name]["shape_signature"])}
        self.dynamic = -1 in batches
        fixed = {b for b in batches if b > 0}
        if len(fixed) > 1:
            raise ModelFileError(f"{path}: inputs disagree on the batch size: {sorted(fixed)}", reason="bad_model_file")
        self.batch = 0 if self.dynamic else (fixed.pop() if fixed else 1)
        self._shapes = {c.model_name: tuple(int(v) for v in in_details[c.model_name]["shape"]) for c in self.inputs}
        if not self.signature:
            self.interpreter.allocate_tensors()
        self._padded: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def quantisation(self) -> str:
        kinds = sorted({c.dtype.name for c in [*self.inputs, self.output] if c.quantised})
        return ",".join(kinds) if kinds else "float"

    def run(self, inputs: Mapping[str, np.ndarray], batch: int) -> np.ndarray:
        pad_to = batch if self.dynamic else self.batch
        encoded = [(codec, codec.encode(inputs[codec.spec_name])) for codec in self.inputs]
        with self._lock:  # the padding buffers and the interpreter are shared by all callers
            feed: dict[str, np.ndarray] = {}
            for codec, values in encoded:
                if pad_to != batch:
                    buffer = self._padded.get(codec.model_name)
                    if buffer is None:
                        buffer = np.zeros(self._shapes[codec.model_name], dtype=codec.dtype)
                        if codec.quantised:  # padding rows hold the quantised zero, not raw 0
                            buffer.fill(codec.zero_point)
                        self._padded[codec.model_name] = buffer
                    buffer[:batch] = values
                    values = buffer
                feed[codec.model_name] = values
            if self.signature is not None:
                out = self.signature(**feed)[self.output.model_name]
            else:
                for name, values in feed.items():
                    if self.dynamic and tuple(values.shape) != self._shapes[name]:
                        self.interpreter.resize_tensor_input(self._index[name], list(values.shape))
                        self._shapes[name] = tuple(values.shape)
                        self.interpreter.allocate_tensors()
                    self.interpreter.set_tensor(self._index[name], values)
                self.interpreter.invoke()
                out = self.interpreter.get_tensor(self._out_index)
            return self.output.decode(out[:batch])


class LiteRTBackend(Backend):
    """Common base: subclasses set the delegate library, the precisions and the hardware kind."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "cpu"
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8")
    # Default delegate library file name (None = plain CPU interpreter) and what installs it.
    delegate_library: ClassVar[str | None] = None
    delegate_hint: ClassVar[str] = ""

    # --- availability ---------------------------------------------------------------------------
    @classmethod
    def delegate_search_dirs(cls) -> tuple[str, ...]:
        return ()

    @classmethod
    def probe(cls) -> Availability:
        if not litert_available():
            return Availability(False, ("ai-edge-litert (or tflite-runtime)",), LITERT_HINT)
        if cls.delegate_library is None:
            return Availability(True, detail="LiteRT interpreter importable")
        found = find_library_file(cls.delegate_library, cls.delegate_search_dirs())
        if not found:
            return Availability(False, (cls.delegate_library,), cls.delegate_hint)
        return Availability(True, detail=f"delegate library found: {found}")

    def availability(self) -> Availability:
        """Like probe(), but honouring this instance's options.extra['delegate_path']."""
        configured = self.options.extra.get("delegate_path")
        if configured and self.delegate_library is not None:
            if not litert_available():
                return Availability(False, ("ai-edge-litert (or tflite-runtime)",), LITERT_HINT)
            found = find_library_file(str(configured), self.delegate_search_dirs())
            if not found:
                return Availability(False, (str(configured),), f"delegate_path does not exist. {self.delegate_hint}")
            return Availability(True, detail=f"delegate library: {found}")
        return self.probe()

    # --- loading --------------------------------------------------------------------------------
    def _delegate_path(self) -> str | None:
        if self.delegate_library is None:
            return None
        configured = self.options.extra.get("delegate_path")
        return find_library_file(str(configured or self.delegate_library), self.delegate_search_dirs())

    def _delegate_options(self) -> dict[str, str]:
        options = self.options.extra.get("delegate_options") or {}
        if not isinstance(options, Mapping):
            raise BackendError(f"delegate_options must be a mapping, got {options!r}", reason="bad_option")
        return {str(k): str(v) for k, v in options.items()}

    def _make_delegates(self, module) -> list:
        path = self._delegate_path()
        if path is None:
            return []
        options = self._delegate_options()
        try:
            # Check the plugin entry points first: load_delegate on a library without them raises
            # from a half-built Delegate whose destructor then fails noisily.
            library = ctypes.CDLL(path)
            for symbol in ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate"):
                getattr(library, symbol)
            return [module.load_delegate(path, options)]
        except (ValueError, OSError, RuntimeError, AttributeError) as exc:
            # AttributeError: ctypes found the library but not the plugin entry points
            raise BackendUnavailableError(
                self.name,
                [f"{path} (could not be loaded: {exc})"],
                "The library must be a LiteRT external-delegate plugin (exporting tflite_plugin_create_delegate) "
                f"built for this LiteRT version, and its hardware and driver must be present. {self.delegate_hint}",
            ) from exc

    def _model_files(self) -> list[Path]:
        """The .tflite file(s) to run: a configured model_path, else the export(s) of the bundle."""
        configured = self.options.extra.get("model_path")
        if configured:
            path = Path(str(configured)).expanduser()
            if not path.is_file():
                raise ModelFileError(f"backend '{self.name}': model_path {path} does not exist", reason="missing_model_file")
            return [path]
        if not self.model.has_torch_network:
            return [self.model.export("tflite", precision=self.options.precision, progress=False)]
        from vla_accel.models.export_tflite import export_tflite

        batches = sorted({1, max(1, int(self.options.max_batch))})
        return [export_tflite(self.model, self.options.precision, progress=False, batch=b) for b in batches]

    def _make_interpreter(self, module, path: Path):
        threads = int(self.options.threads) if self.options.threads else None
        kwargs: dict[str, Any] = {"model_path": str(path), "num_threads": threads}
        delegates = self._make_delegates(module)
        if delegates:
            kwargs["experimental_delegates"] = delegates
        if self.delegate_library is None and self.options.extra.get("xnnpack", True) is False:
            resolver = getattr(module, "OpResolverType", None)
            if resolver is not None:
                kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            return module.Interpreter(**kwargs)
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"backend '{self.name}': LiteRT could not load {path}: {exc}", reason="load_failed") from exc

    def _load(self) -> None:
        if self.options.threads < 0:
            raise BackendError(f"threads must be >= 0, got {self.options.threads}", reason="bad_option")
        module, runtime = import_interpreter_module()
        self._runtime = runtime
        self._runners: list[_Runner] = []
        for path in self._model_files():
            interpreter = self._make_interpreter(module, path)
            self._runners.append(_Runner(interpreter, self.spec, path))
        self._runners.sort(key=lambda r: (r.dynamic, r.batch))
        self._check_model()
        self._output = self.spec.action.output
        self._threads = int(self.options.threads) or (os.cpu_count() or 1)

    def graph_signatures(self):
        from vla_accel.backends.program import GraphSignature, TensorInfo, dtype_name

        if getattr(self, "_graphs", None):
            return {name: graph.signature() for name, graph in self._graphs.items()}
        out = {}
        for runner in self._runners:
            # quantised inputs take float32 (encoded here): only float / integer inputs are compared
            inputs = {c.spec_name: TensorInfo("" if c.quantised else dtype_name(c.dtype),
                                              (None, *runner._shapes[c.model_name][1:]))
                      for c in runner.inputs}
            out[runner.path.name] = GraphSignature(inputs, {runner.output.spec_name: TensorInfo("", None)})
        return out

    def _check_model(self) -> None:
        """Hook for subclasses (e.g. Edge TPU needs a full-integer model)."""

    # --- inference ------------------------------------------------------------------------------
    def _runner_for(self, batch: int) -> _Runner:
        for runner in self._runners:
            if runner.dynamic or runner.batch >= batch:
                return runner
        largest = max(r.batch for r in self._runners)
        raise InputError(
            f"backend '{self.name}': batch {batch} exceeds the model's fixed batch {largest} "
            f"({self._runners[-1].path.name}); set max_batch >= {batch} so a larger export is made",
            reason="bad_batch",
        )

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = as_model_inputs(self.name, self.spec, inputs)
        batch = next(iter(arrays.values())).shape[0]
        runner = self._runner_for(batch)
        try:
            actions = runner.run(arrays, batch)
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"backend '{self.name}': LiteRT inference failed: {exc}", reason="infer_failed") from exc
        return {self._output: actions}

    def _device_name(self) -> str:
        return "cpu"

    def _parallel_units(self) -> int:
        return self._threads

    def _device_info(self) -> DeviceInfo:
        from vla_accel.backends.torch_backend import cpu_model_name

        if getattr(self, "_graphs", None):
            return DeviceInfo(backend=self.name, device=self._device_name(), kind=self.kind,
                              parallel_units=self._parallel_units(), precision=self.options.precision,
                              runtime_version=self._runtime,
                              detail={"model_files": [str(g.path) for g in self._graphs.values()],
                                      "program": self.spec.program.kind, "cpu": cpu_model_name()})
        first = self._runners[0]
        detail: dict[str, Any] = {
            "model_files": [str(r.path) for r in self._runners],
            "model_batches": ["dynamic" if r.dynamic else r.batch for r in self._runners],
            "quantisation": first.quantisation,
            "delegate": self._delegate_path() or ("none (builtin kernels)" if self.options.extra.get("xnnpack", True) is False
                                                  else "XNNPACK (default CPU delegate)"),
        }
        if self.kind == "cpu":
            detail["cpu"] = cpu_model_name()
        return DeviceInfo(
            backend=self.name,
            device=self._device_name(),
            kind=self.kind,
            parallel_units=self._parallel_units(),
            precision=self.options.precision,
            runtime_version=self._runtime,
            detail=detail,
        )

    def _close(self) -> None:
        self._runners = []


class TFLiteBackend(LiteRTBackend):
    name = "tflite"
    kind = "cpu"
    precisions = ("fp32", "fp16", "int8")
    description = "LiteRT (TFLite) on the CPU with XNNPACK; fp32, fp16 weights or full-integer int8"
    program_kinds = ("single_pass", "flow_matching", "diffusion")

    def _load_program(self):
        from vla_accel.backends.program import NumpyOps

        if self.options.precision != "fp32":
            raise BackendError("tflite runs policy programs in fp32 only", reason="bad_precision")
        if self.options.threads < 0:
            raise BackendError(f"threads must be >= 0, got {self.options.threads}", reason="bad_option")
        module, self._runtime = import_interpreter_module()
        paths = self.model.export_program("tflite", progress=False)
        self._graph_paths = paths
        self._graphs = {name: _ProgramGraph(self._make_interpreter(module, path), path) for name, path in paths.items()}
        self._runners = []
        self._threads = int(self.options.threads) or (os.cpu_count() or 1)
        return self._graphs, NumpyOps()


class _ProgramGraph:
    """One graph of a program (exported at batch 1): named signature inputs and outputs; a batch runs
    row by row."""

    def __init__(self, interpreter, path: Path):
        self.path = path
        signatures = interpreter.get_signature_list()
        key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
        self.runner = interpreter.get_signature_runner(key)
        self.inputs = self.runner.get_input_details()
        self.outputs = self.runner.get_output_details()
        self._lock = threading.Lock()

    def run(self, feeds):
        batch = next(iter(feeds.values())).shape[0]
        rows: dict[str, list[np.ndarray]] = {}
        with self._lock:
            for row in range(batch):
                args = {name: np.ascontiguousarray(feeds[name][row:row + 1], dtype=self.inputs[name]["dtype"])
                        for name in self.inputs}
                try:
                    out = self.runner(**args)
                except (ValueError, RuntimeError) as exc:
                    raise BackendError(f"LiteRT inference of {self.path.name} failed: {exc}",
                                       reason="infer_failed") from exc
                for name, value in out.items():
                    rows.setdefault(name, []).append(np.array(value, copy=True))
        return {name: np.concatenate(values, axis=0) for name, values in rows.items()}

    def signature(self):
        from vla_accel.backends.program import GraphSignature, TensorInfo, dtype_name

        def info(detail):
            shape = tuple(int(v) for v in detail.get("shape_signature", detail["shape"]))
            return TensorInfo(dtype_name(detail["dtype"]), (None, *shape[1:]) if shape else ())

        return GraphSignature({n: info(d) for n, d in self.inputs.items()},
                              {n: info(d) for n, d in self.outputs.items()})


EDGETPU_HINT = (
    "Install the Edge TPU runtime from Coral's apt repository (see coral.ai/software): "
    "sudo apt-get install libedgetpu1-std (or libedgetpu1-max), connect the USB Accelerator or install the "
    "M.2/PCIe card (PCIe also needs gasket-dkms), then re-plug the device."
)
EDGETPU_COMPILER_HINT = (
    "Compile the int8 model for the Edge TPU: sudo apt-get install edgetpu-compiler (x86-64 Debian/Ubuntu, "
    "from Coral's apt repository) and run `edgetpu_compiler -s -o <dir> <model>.tflite`, then pass the "
    "resulting <model>_edgetpu.tflite as extra model_path (or leave edgetpu_compiler on PATH and the backend "
    "runs it once and caches the result)."
)


class EdgeTPUBackend(LiteRTBackend):
    """Coral Edge TPU: a full-integer int8 model compiled by edgetpu_compiler + the libedgetpu delegate.

    The delegate only runs the ``edgetpu-custom-op`` that the compiler creates; an uncompiled int8
    model would silently run on the CPU, so the backend refuses one (it compiles it itself when
    ``edgetpu_compiler`` is on PATH). With Coral's own pycoral installed, its ``make_interpreter``
    and ``list_edge_tpus`` are used (device enumeration); otherwise the plain delegate is loaded.
    """

    name = "edgetpu"
    kind = "tpu"
    precisions = ("int8",)
    description = "Coral Edge TPU via LiteRT + libedgetpu (full-integer int8, compiled by edgetpu_compiler)"
    delegate_library = "libedgetpu.so.1"
    delegate_hint = EDGETPU_HINT

    def _delegate_options(self) -> dict[str, str]:
        options = super()._delegate_options()
        device = self.options.extra.get("device") or self.options.device
        if device and "device" not in options:
            options["device"] = str(device)
        return options

    def _model_files(self) -> list[Path]:
        if self.options.extra.get("model_path"):
            return super()._model_files()
        compiled = []
        for path in super()._model_files():
            target = path.with_name(path.stem + "_edgetpu.tflite")
            if not target.is_file():
                compiler = shutil.which("edgetpu_compiler")
                if compiler is None:
                    raise BackendUnavailableError(self.name, ["edgetpu_compiler (or a compiled *_edgetpu.tflite)"],
                                                  EDGETPU_COMPILER_HINT)
                result = subprocess.run([compiler, "-s", "-o", str(path.parent), str(path)],
                                        capture_output=True, text=True, timeout=600, check=False)
                if result.returncode != 0 or not target.is_file():
                    raise BackendError(f"edgetpu_compiler failed on {path}: {result.stdout[-2000:]} {result.stderr[-2000:]}",
                                       reason="load_failed")
            compiled.append(target)
        return compiled

    def _make_interpreter(self, module, path: Path):
        if coral_pycoral_available():
            from pycoral.utils import edgetpu

            device = self._delegate_options().get("device")
            return edgetpu.make_interpreter(str(path), device=device or None)
        return super()._make_interpreter(module, path)

    def _check_model(self) -> None:
        for runner in self._runners:
            # The compiler stores its op under this custom-op name; without it nothing runs on the TPU.
            if b"edgetpu-custom-op" not in runner.path.read_bytes():
                raise ModelFileError(
                    f"{runner.path} contains no edgetpu-custom-op: it is not compiled for the Edge TPU and "
                    "would run on the CPU. " + EDGETPU_COMPILER_HINT,
                    reason="not_compiled_for_edgetpu",
                )

    def _device_name(self) -> str:
        if coral_pycoral_available():
            from pycoral.utils import edgetpu

            tpus = edgetpu.list_edge_tpus()
            if tpus:
                return ",".join(f"{t.get('type', '?')}:{t.get('path', '?')}" for t in tpus)
        return f"edgetpu{self._delegate_options().get('device', ':0')}"

    def _parallel_units(self) -> int:
        return 1  # one Edge TPU per interpreter


class LiteRTGpuBackend(LiteRTBackend):
    name = "litert-gpu"
    kind = "gpu"
    precisions = ("fp32", "fp16")
    description = "LiteRT + GPU delegate (Arm Mali and other OpenCL / OpenGL ES GPUs)"
    delegate_library = "libtensorflowlite_gpu_delegate.so"
    delegate_hint = (
        "Build the LiteRT GPU delegate as an external-delegate plugin for the board (bazel target "
        "//tensorflow/lite/delegates/gpu:libtensorflowlite_gpu_delegate.so, or the board vendor's build), "
        "install the GPU's OpenCL driver (e.g. the Mali driver from the board vendor's BSP, "
        "`clinfo` must list the GPU) and pass its path as extra delegate_path."
    )

    def _device_name(self) -> str:
        return str(self.options.device or "gpu:0")

    def _parallel_units(self) -> int:
        # Unknown unless the user states it (extra parallel_units): 0 makes the efficiency read
        # "unknown" instead of presenting a made-up P as measured.
        return int(self.options.extra.get("parallel_units", 0))


class HexagonBackend(LiteRTBackend):
    name = "hexagon"
    kind = "dsp"
    precisions = ("int8",)
    description = "LiteRT + Hexagon delegate (Qualcomm Hexagon DSP; int8 models)"
    delegate_library = "libhexagon_delegate.so"
    delegate_hint = (
        "Install the TFLite Hexagon delegate (libhexagon_delegate.so) and Qualcomm's libhexagon_nn_skel*.so "
        "for the SoC's DSP version (on the DSP library path, ADSP_LIBRARY_PATH). Qualcomm has moved to the "
        "QNN SDK: on recent Snapdragon SoCs use backend 'qnn' instead."
    )

    def _device_name(self) -> str:
        return "hexagon-dsp"

    def _parallel_units(self) -> int:
        # Unknown unless the user states it (extra parallel_units): 0 makes the efficiency read
        # "unknown" instead of presenting a made-up P as measured.
        return int(self.options.extra.get("parallel_units", 0))


class QnnBackend(LiteRTBackend):
    name = "qnn"
    kind = "npu"
    precisions = ("int8", "fp16", "fp32")
    description = "LiteRT + Qualcomm AI Engine Direct (QNN) delegate: HTP (NPU), GPU or DSP"
    delegate_library = "libQnnTFLiteDelegate.so"
    delegate_hint = (
        "Install Qualcomm's AI Engine Direct (QNN) SDK and put its lib/<target>/ folder (libQnnTFLiteDelegate.so, "
        "libQnnHtp.so, libQnnSystem.so) on LD_LIBRARY_PATH and the HTP skel libraries (libQnnHtpV*Skel.so) on "
        "ADSP_LIBRARY_PATH, or set QNN_SDK_ROOT."
    )
    backend_types = ("htp", "gpu", "dsp")

    @classmethod
    def delegate_search_dirs(cls) -> tuple[str, ...]:
        root = os.environ.get("QNN_SDK_ROOT")
        return tuple(sorted(glob.glob(os.path.join(root, "lib", "*")))) if root else ()

    def _delegate_options(self) -> dict[str, str]:
        options = super()._delegate_options()
        backend_type = str(self.options.extra.get("backend_type", options.get("backend_type", "htp"))).lower()
        if backend_type not in self.backend_types:
            raise BackendError(
                f"qnn backend_type must be one of {', '.join(self.backend_types)}; got {backend_type!r}",
                reason="bad_option",
            )
        options["backend_type"] = backend_type
        return options

    def _device_name(self) -> str:
        return f"qnn-{self._delegate_options()['backend_type']}"

    def _parallel_units(self) -> int:
        # Unknown unless the user states it (extra parallel_units): 0 makes the efficiency read
        # "unknown" instead of presenting a made-up P as measured.
        return int(self.options.extra.get("parallel_units", 0))


# Vendor delegates that the ``external`` (and ``npu``) backends look for when none is configured.
KNOWN_EXTERNAL_DELEGATES = (
    ("libvx_delegate.so", "NXP i.MX 8M Plus / i.MX 95 NPU (VX delegate, from NXP's BSP: tim-vx + tflite-vx-delegate)"),
    ("libethosu_delegate.so", "Arm Ethos-U NPU (i.MX 93; ethos-u-driver-stack + ethos-u-vela compiled model)"),
    ("libarmnnDelegate.so", "Arm NN delegate (Mali GPU / Cortex-A CpuAcc backends)"),
    ("libtidl_tfl_delegate.so", "TI TIDL (TDA4 / AM6x C7x DSP + MMA)"),
    ("libneuron_delegate.so", "MediaTek NeuroPilot Neuron delegate (APU)"),
)
EXTERNAL_HINT = (
    "Pass extra delegate_path=/path/to/lib<vendor>_delegate.so (a LiteRT external-delegate plugin from the "
    "board vendor's BSP, e.g. NXP's libvx_delegate.so) and its options as extra delegate_options."
)


def find_known_external_delegate() -> tuple[str, str] | None:
    for library, what in KNOWN_EXTERNAL_DELEGATES:
        found = find_library_file(library)
        if found:
            return found, what
    return None


class ExternalDelegateBackend(LiteRTBackend):
    name = "external"
    kind = "npu"
    precisions = ("int8", "fp16", "fp32")
    description = "LiteRT + any vendor external delegate (VX on i.MX, Ethos-U, Arm NN, TIDL, ...)"
    delegate_library = "external delegate (delegate_path)"
    delegate_hint = EXTERNAL_HINT

    @classmethod
    def probe(cls) -> Availability:
        if not litert_available():
            return Availability(False, ("ai-edge-litert (or tflite-runtime)",), LITERT_HINT)
        found = find_known_external_delegate()
        if found is None:
            return Availability(
                False,
                ("an external delegate library (none configured; none of "
                 + ", ".join(lib for lib, _ in KNOWN_EXTERNAL_DELEGATES) + " found)",),
                EXTERNAL_HINT,
            )
        return Availability(True, detail=f"{found[1]}: {found[0]}")

    def _delegate_path(self) -> str | None:
        configured = self.options.extra.get("delegate_path")
        if configured:
            return find_library_file(str(configured))
        found = find_known_external_delegate()
        return found[0] if found else None

    def _device_name(self) -> str:
        return os.path.basename(self._delegate_path() or "external")

    def _parallel_units(self) -> int:
        # Unknown unless the user states it (extra parallel_units): 0 makes the efficiency read
        # "unknown" instead of presenting a made-up P as measured.
        return int(self.options.extra.get("parallel_units", 0))
