"""``tensorrt``: a TensorRT engine built from the model's ONNX export, cached, run on an NVIDIA GPU or a
Jetson DLA core (with GPU fallback for layers DLA cannot run).

Written against the TensorRT 10 Python API (JetPack 6 on Jetson, ``pip install tensorrt-cu12`` on x86):
Builder -> create_network (explicit batch is the default in 10) -> OnnxParser.parse -> BuilderConfig
(set_memory_pool_limit, FP16 / INT8 flags, DLA default_device_type + DLA_core + GPU_FALLBACK, an
optimisation profile over the batch dimension, an entropy calibrator for int8) ->
build_serialized_network -> Runtime.deserialize_cuda_engine -> IExecutionContext with
set_input_shape / set_tensor_address / execute_async_v3 on a CUDA stream. Device memory is torch
CUDA tensors (preallocated for ``max_batch``; a batch uses the leading rows).

TensorRT 11 removed the weak-typing flags (FP16 / INT8) and implicit int8 calibration: there, only
fp32 engines are built from our fp32 ONNX, and fp16 / int8 fail with a message saying so.

Engine cache: ``<cache>/exports/<content_hash>/tensorrt/<key>.engine`` + ``<key>.json`` where the key
hashes the ONNX file's sha256, the TensorRT version, the GPU name and compute capability, the
precision, the DLA core and the batch profile. A start loads the cached engine unless
``extra["force_rebuild"]``; a cached engine that TensorRT cannot deserialise (corrupt, other
version) is rebuilt with a warning.

Options (``BackendOptions.extra``):
  workspace_mb         builder workspace pool limit (default 1024)
  opt_batch            the batch size the profile is tuned for (default 1; min is 1, max is max_batch)
  dla_core             int: build for this DLA core (Jetson Xavier / Orin); needs fp16 or int8
  gpu_fallback         bool (default True): let DLA-unsupported layers run on the GPU
  force_rebuild        bool: rebuild the engine even if a cached one matches
  calibration_samples  int8: number of representative batches for the entropy calibrator (default 16)
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from vla_accel.core.fileio import atomic_write_bytes
from vla_accel.backends.base import Availability, Backend, BackendOptions, DeviceInfo, gather_inputs
from vla_accel.core.optional import module_available
from vla_accel.core.spec import input_signature
from vla_accel.errors import BackendError, BackendUnavailableError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.spec import ModelSpec
    from vla_accel.models.bundle import ModelBundle

log = logging.getLogger(__name__)

TENSORRT_HINT = (
    "On Jetson, TensorRT comes with JetPack: sudo apt install nvidia-jetpack (or only the Python bindings: "
    "sudo apt install python3-libnvinfer python3-libnvinfer-dev). On x86-64 with an NVIDIA GPU: "
    "pip install tensorrt-cu12 (or tensorrt-cu13), matching the CUDA version that `nvidia-smi` reports, "
    "plus a CUDA build of PyTorch for device memory."
)
CUDA_HINT = (
    "TensorRT needs an NVIDIA GPU with its driver and a CUDA build of PyTorch here (device memory and the "
    "stream): check `nvidia-smi`, then install torch for your CUDA version (Jetson: NVIDIA's JetPack wheel)."
)
DEFAULT_WORKSPACE_MB = 1024
DEFAULT_CALIBRATION_SAMPLES = 16
ENGINE_FOLDER = "tensorrt"


@dataclass(frozen=True)
class TensorRTSettings:
    """Validated build settings; everything that changes the engine is part of the cache key."""

    precision: str
    min_batch: int
    opt_batch: int
    max_batch: int
    workspace_mb: int
    dla_core: int | None
    gpu_fallback: bool
    force_rebuild: bool
    calibration_samples: int
    calibration_digest: str = ""  # of extra["calibration"] (a CalibrationSet), part of the engine key

    @classmethod
    def from_options(cls, options: BackendOptions) -> "TensorRTSettings":
        extra = dict(options.extra)

        def integer(key: str, default: int | None, minimum: int) -> int | None:
            value = extra.get(key, default)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise BackendError(f"tensorrt option {key} must be an integer >= {minimum}, got {value!r}",
                                   reason="bad_option")
            return int(value)

        max_batch = int(options.max_batch)
        if max_batch < 1:
            raise BackendError(f"max_batch must be >= 1, got {max_batch}", reason="bad_option")
        opt_batch = integer("opt_batch", 1, 1)
        if opt_batch > max_batch:
            raise BackendError(f"tensorrt opt_batch {opt_batch} exceeds max_batch {max_batch}", reason="bad_option")
        dla_core = integer("dla_core", None, 0)
        if dla_core is not None and options.precision == "fp32":
            raise BackendError("DLA runs fp16 or int8 only: set precision fp16 or int8 with dla_core",
                               reason="bad_option")
        unknown = set(extra) - {"workspace_mb", "opt_batch", "dla_core", "gpu_fallback", "force_rebuild",
                                "calibration_samples", "calibration"}
        if unknown:
            raise BackendError(f"unknown tensorrt options: {sorted(unknown)}", reason="bad_option")
        return cls(
            precision=options.precision,
            min_batch=1,
            opt_batch=opt_batch,
            max_batch=max_batch,
            workspace_mb=integer("workspace_mb", DEFAULT_WORKSPACE_MB, 16),
            dla_core=dla_core,
            gpu_fallback=bool(extra.get("gpu_fallback", True)),
            force_rebuild=bool(extra.get("force_rebuild", False)),
            calibration_samples=integer("calibration_samples", DEFAULT_CALIBRATION_SAMPLES, 1),
            calibration_digest=extra["calibration"].digest() if hasattr(extra.get("calibration"), "digest") else "",
        )

    def key_fields(self) -> dict[str, Any]:
        """The settings that change the built engine (not force_rebuild)."""
        fields = asdict(self)
        fields.pop("force_rebuild")
        if self.precision != "int8":
            fields.pop("calibration_samples")
        if self.precision != "int8" or not self.calibration_digest:
            fields.pop("calibration_digest")
        if self.dla_core is None:
            fields.pop("gpu_fallback")
        return fields


def profile_shapes(spec: "ModelSpec", settings: TensorRTSettings) -> dict[str, tuple[tuple[int, ...], ...]]:
    """input name -> (min, opt, max) shapes of the optimisation profile (only the batch varies)."""
    shapes = {}
    for name, (sample, _) in input_signature(spec).items():
        shapes[name] = tuple((batch, *sample) for batch in (settings.min_batch, settings.opt_batch, settings.max_batch))
    return shapes


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def engine_cache_key(onnx_sha256: str, tensorrt_version: str, gpu: str, settings: TensorRTSettings) -> str:
    payload = json.dumps(
        {"onnx": onnx_sha256, "tensorrt": tensorrt_version, "gpu": gpu, **settings.key_fields()}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class EngineCache:
    """Serialized engines with a JSON sidecar saying what they were built from, written atomically."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{key}.engine", self.folder / f"{key}.json"

    def load(self, key: str) -> bytes | None:
        engine, sidecar = self.paths(key)
        if not (engine.is_file() and sidecar.is_file()):
            return None  # an engine without its sidecar was never completely written
        return engine.read_bytes()

    def metadata(self, key: str) -> dict[str, Any] | None:
        sidecar = self.paths(key)[1]
        try:
            return json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def store(self, key: str, data: bytes, meta: Mapping[str, Any]) -> Path:
        engine, sidecar = self.paths(key)
        self.folder.mkdir(parents=True, exist_ok=True)
        for path, payload in ((engine, bytes(data)), (sidecar, json.dumps(dict(meta), indent=2, sort_keys=True).encode())):
            atomic_write_bytes(path, payload)
        return engine

    def discard(self, key: str) -> None:
        for path in self.paths(key):
            if path.exists():
                path.unlink()


def engine_cache_for(model: "ModelBundle") -> EngineCache:
    return EngineCache(model.cache_dir / "exports" / model.content_hash() / ENGINE_FOLDER)


def calibration_batches(spec: "ModelSpec", count: int, batch: int) -> list[dict[str, np.ndarray]]:
    """Representative input batches for the int8 entropy calibrator (shared preprocessing)."""
    from vla_accel.models.calibration_set import representative_inputs

    return list(representative_inputs(spec, count, batch=batch, seed=11))


def make_entropy_calibrator(trt, torch, batches: list[dict[str, np.ndarray]], cache_file: Path, device):
    """An IInt8EntropyCalibrator2 fed from ``batches`` (defined here: its base class is TensorRT's)."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = batches
            self._position = 0
            self._device_inputs: dict[str, Any] = {}

        def get_batch_size(self) -> int:
            return int(next(iter(batches[0].values())).shape[0]) if batches else 1

        def get_batch(self, names):
            if self._position >= len(self._batches):
                return None  # tells TensorRT calibration data is exhausted
            current = self._batches[self._position]
            self._position += 1
            pointers = []
            for name in names:
                tensor = torch.from_numpy(current[name]).to(device)
                self._device_inputs[name] = tensor  # keep alive until the next call
                pointers.append(int(tensor.data_ptr()))
            return pointers

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_bytes(bytes(cache))

    return EntropyCalibrator()


class TensorRTBackend(Backend):
    name = "tensorrt"
    kind = "gpu"
    precisions = ("fp32", "fp16", "int8")
    description = "TensorRT engine from ONNX (NVIDIA GPU / Jetson GPU or DLA), cached per GPU and version"

    @classmethod
    def probe(cls) -> Availability:
        if not module_available("tensorrt"):
            return Availability(False, ("tensorrt",), TENSORRT_HINT)
        if not module_available("torch"):
            return Availability(False, ("torch (CUDA build)",), CUDA_HINT)
        return Availability(True, detail="tensorrt importable (GPU checked at load)")

    def __init__(self, model: "ModelBundle", options: BackendOptions | None = None):
        super().__init__(model, options)
        # Validate options now, so a bad configuration fails before any heavy work.
        self.settings = TensorRTSettings.from_options(self.options)

    # --- build / load -------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailableError(self.name, ["tensorrt"], TENSORRT_HINT) from exc
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError(self.name, ["a CUDA GPU visible to torch"], CUDA_HINT)
        self._trt, self._torch = trt, torch
        major = int(trt.__version__.split(".")[0])
        if major >= 11 and self.settings.precision != "fp32":
            raise BackendError(
                f"TensorRT {trt.__version__} builds strongly typed networks only (the FP16/INT8 builder flags and "
                "int8 calibration were removed in 11): use precision fp32 here, or TensorRT 10 (JetPack 6) for "
                "fp16 / int8 engines",
                reason="unsupported_precision",
            )
        device_index = 0
        if self.options.device and self.options.device.startswith("cuda:"):
            device_index = int(self.options.device.split(":", 1)[1])
        self._device = torch.device("cuda", device_index)
        props = torch.cuda.get_device_properties(self._device)
        gpu = f"{props.name} sm_{props.major}{props.minor}"
        self._gpu, self._sm_count = gpu, int(props.multi_processor_count)

        onnx_path = self.model.export("onnx", precision="fp32", progress=False)
        onnx_hash = file_sha256(onnx_path)
        cache = engine_cache_for(self.model)
        key = engine_cache_key(onnx_hash, trt.__version__, gpu, self.settings)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        if self.settings.dla_core is not None:
            runtime.DLA_core = self.settings.dla_core
        engine = None
        data = None if self.settings.force_rebuild else cache.load(key)
        if data is not None:
            engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                log.warning("cached TensorRT engine %s could not be deserialised (corrupt or built by another "
                            "TensorRT); rebuilding it", cache.paths(key)[0])
                cache.discard(key)
        self._built = False
        if engine is None:
            started = time.perf_counter()
            data = self._build(trt, onnx_path, cache.paths(key)[0].with_suffix(".calib"))
            cache.store(key, data, {
                "model": self.model.name, "onnx": str(onnx_path), "onnx_sha256": onnx_hash,
                "tensorrt": trt.__version__, "gpu": gpu, **self.settings.key_fields(),
                "build_seconds": round(time.perf_counter() - started, 1),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })
            engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise BackendError("TensorRT built an engine it cannot deserialise", reason="load_failed")
            self._built = True
        self._engine_path = cache.paths(key)[0]
        self._runtime, self._engine = runtime, engine
        self._context = engine.create_execution_context()
        self._stream = torch.cuda.Stream(device=self._device)
        self._allocate(trt, torch)
        self._lock = threading.Lock()

    def _build(self, trt, onnx_path: Path, calibration_cache: Path) -> bytes:
        builder = trt.Builder(self._logger)
        major = int(trt.__version__.split(".")[0])
        flags = 0
        if major < 10:  # explicit batch is the only mode (and the default) from TensorRT 10 on
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT could not parse {onnx_path}: {errors}", reason="load_failed")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.settings.workspace_mb << 20)
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile_shapes(self.spec, self.settings).items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
        if self.settings.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)  # int8 keeps fp16 for layers without int8 kernels
        if self.settings.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            given = self.options.extra.get("calibration")  # a CalibrationSet (e.g. from a bag), else generated
            batches = (given.rebatched(1).batches if hasattr(given, "rebatched")
                       else calibration_batches(self.spec, self.settings.calibration_samples, batch=1))
            config.int8_calibrator = make_entropy_calibrator(trt, self._torch, batches, calibration_cache, self._device)
            config.set_calibration_profile(profile)
        if self.settings.dla_core is not None:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = self.settings.dla_core
            if self.settings.gpu_fallback:
                config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        log.info("building TensorRT engine for %s (%s, batch %d..%d); this takes a while once", self.model.name,
                 self.settings.precision, self.settings.min_batch, self.settings.max_batch)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError("TensorRT engine build failed (see the TensorRT log above)", reason="load_failed")
        return bytes(serialized)

    def _allocate(self, trt, torch) -> None:
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) != trt.TensorIOMode.INPUT]
        missing = [n for n in self.spec.input_names if n not in inputs]
        if missing or self.spec.action.output not in outputs:
            raise BackendError(
                f"TensorRT engine tensors (inputs {inputs}, outputs {outputs}) do not match the spec "
                f"(inputs {list(self.spec.input_names)}, output {self.spec.action.output!r})",
                reason="tensor_name_mismatch",
            )
        self._buffers: dict[str, Any] = {}
        self._dtypes: dict[str, np.dtype] = {}
        for name in names:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            self._dtypes[name] = dtype
        for name, (_low, _opt, high) in profile_shapes(self.spec, self.settings).items():
            self._buffers[name] = torch.empty(high, dtype=_torch_dtype(torch, self._dtypes[name]), device=self._device)
        out_shape = (self.settings.max_batch, self.spec.action.steps, self.spec.action.dims)
        self._output = self.spec.action.output
        self._buffers[self._output] = torch.empty(out_shape, dtype=_torch_dtype(torch, self._dtypes[self._output]),
                                                  device=self._device)

    # --- inference ----------------------------------------------------------------------------------
    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        gather_inputs(self.spec, inputs, None, self.name)
        batch = int(next(iter(inputs.values())).shape[0])
        if batch > self.settings.max_batch:
            raise InputError(f"backend 'tensorrt': batch {batch} exceeds the engine profile's max_batch "
                             f"{self.settings.max_batch}", reason="bad_batch")
        torch = self._torch
        with self._lock, torch.cuda.stream(self._stream):
            for name in self.spec.input_names:
                view = self._buffers[name][:batch]
                host = np.ascontiguousarray(inputs[name], dtype=self._dtypes[name])
                view.copy_(torch.from_numpy(host), non_blocking=False)
                self._context.set_input_shape(name, tuple(view.shape))
                self._context.set_tensor_address(name, int(view.data_ptr()))
            out = self._buffers[self._output][:batch]
            self._context.set_tensor_address(self._output, int(out.data_ptr()))
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise BackendError("TensorRT execute_async_v3 failed", reason="infer_failed")
            result = out.float().cpu().numpy()
            self._stream.synchronize()
        return {self._output: result}

    def _device_info(self) -> DeviceInfo:
        dla = self.settings.dla_core
        return DeviceInfo(
            backend=self.name,
            device=f"dla:{dla}" if dla is not None else str(self._device),
            kind="npu" if dla is not None else "gpu",
            parallel_units=1 if dla is not None else self._sm_count,
            precision=self.settings.precision,
            runtime_version=f"tensorrt {self._trt.__version__}",
            memory_bytes=int(self._engine.device_memory_size_v2) if hasattr(self._engine, "device_memory_size_v2") else None,
            detail={"gpu": self._gpu, "engine": str(self._engine_path), "built_now": self._built,
                    "profile_batches": [self.settings.min_batch, self.settings.opt_batch, self.settings.max_batch],
                    "gpu_fallback": self.settings.gpu_fallback if dla is not None else None},
        )

    def _close(self) -> None:
        self._context = None
        self._engine = None
        self._buffers = {}


def _torch_dtype(torch, dtype: np.dtype):
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
            np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64,
            np.dtype(np.int8): torch.int8, np.dtype(np.bool_): torch.bool}[np.dtype(dtype)]
