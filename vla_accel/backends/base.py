"""The one interface every backend implements.

A backend turns named input tensors (numpy, names and shapes from the ModelSpec) into named output
tensors. Everything around that (image decoding, tokenising, un-normalising, scheduling, metrics)
is shared code in ``vla_accel.core``, so backends only hold their runtime's quirks.

Subclasses implement ``probe`` (cheap: is the runtime importable / the library present?),
``_load``, ``_infer``, ``_device_info`` and optionally ``_close``. The heavy runtime is imported
inside ``_load`` only, never at module import.

Fault injection (for fallback tests and drills on a robot): the environment variable
``VLA_ACCEL_FAULT`` holds comma-separated ``backend:load``, ``backend:infer[:after=N]`` or
``backend:nan[:after=N]`` entries; a matching backend raises BackendError at load, raises on every
inference after N successful ones, or (nan) returns NaN outputs after N good ones, as a runtime whose
numerics broke would.
The same can be passed per instance as ``BackendOptions.fault``.
"""
from __future__ import annotations

import abc
import importlib.util
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np

from vla_accel.errors import BackendError, BackendUnavailableError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.spec import ModelSpec
    from vla_accel.models.bundle import ModelBundle

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
FAULT_ENV = "VLA_ACCEL_FAULT"


@dataclass
class BackendOptions:
    """Options common to all backends; runtime-specific ones go in ``extra``.

    device: runtime device string ("" = the backend's default: "CPU", "cuda:0", "NPU", ...)
    precision: fp32 | fp16 | bf16 | int8 (a backend rejects the ones it cannot run)
    threads: intra-op threads, 0 = runtime default
    max_batch: the largest batch the backend must accept (static buffers are sized to it)
    cache_dir: where exports and compiled engines are cached (default: ~/.cache/vla_accel)
    extra: e.g. {"delegate_path": "/usr/lib/libedgetpu.so.1", "dla_core": 0}
    fault: fault-injection spec as in VLA_ACCEL_FAULT, for this instance only
    """

    device: str = ""
    precision: str = "fp32"
    threads: int = 0
    max_batch: int = 1
    cache_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    fault: str = ""


@dataclass(frozen=True)
class Availability:
    """Result of a cheap probe: can this backend run here, and if not, what exactly is missing."""

    ok: bool
    missing: tuple[str, ...] = ()
    hint: str = ""
    detail: str = ""

    def require(self, backend: str) -> None:
        if not self.ok:
            raise BackendUnavailableError(backend, self.missing, self.hint)


@dataclass(frozen=True)
class DeviceInfo:
    """What actually runs. ``parallel_units`` is P in the parallel efficiency E = S / P
    (CPU: threads used; GPU: streaming multiprocessors; OpenCL: compute units; TPU/NPU: cores)."""

    backend: str
    device: str
    kind: str  # cpu | gpu | tpu | npu | dsp | fpga
    parallel_units: int
    precision: str
    runtime_version: str = ""
    memory_bytes: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def hardware_id(self) -> str:
        return f"{self.backend}@{self.device}"


def module_available(name: str) -> bool:
    """True if ``name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class _Fault:
    def __init__(self, backend: str, spec: str):
        self.at_load = False
        self.infer_after: int | None = None
        self.nan_after: int | None = None
        for entry in filter(None, (e.strip() for e in spec.split(","))):
            parts = entry.split(":")
            if parts[0] != backend or len(parts) < 2:
                continue
            after = 0
            for p in parts[2:]:
                if p.startswith("after="):
                    after = int(p.split("=", 1)[1])
            if parts[1] == "load":
                self.at_load = True
            elif parts[1] == "infer":
                self.infer_after = after
            elif parts[1] == "nan":
                self.nan_after = after


class Backend(abc.ABC):
    """Base class. Lifecycle: construct -> load() -> warmup() -> infer()* -> close()."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "cpu"
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    description: ClassVar[str] = ""
    # Policy-program kinds this backend runs (see backends/program.py); others fail at load, saying so.
    program_kinds: ClassVar[tuple[str, ...]] = ("single_pass",)

    def __init__(self, model: "ModelBundle", options: BackendOptions | None = None):
        self.model = model
        self.spec: "ModelSpec" = model.spec
        self.options = options or BackendOptions()
        if self.options.precision not in self.precisions:
            raise BackendError(
                f"backend '{self.name}' supports precision {', '.join(self.precisions)}; "
                f"got '{self.options.precision}'",
                reason="bad_precision",
            )
        self._loaded = False
        self._runner = None  # ProgramRunner for multi-graph programs
        self._program_calls = 0
        self._program_lock = threading.Lock()  # one program call at a time (call counter, sessions)
        self.last_stage_ms: dict[str, float] = {}  # per-stage times of the last program call
        self._fault = _Fault(self.name, ",".join(filter(None, [os.environ.get(FAULT_ENV, ""), self.options.fault])))
        self._calls = 0

    # --- to implement -------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def probe(cls) -> Availability:
        """Cheap check (find_spec, find_library, device nodes): never imports the runtime."""

    @abc.abstractmethod
    def _load(self) -> None:
        """Import the runtime, load or build the model; raise BackendUnavailableError when absent."""

    @abc.abstractmethod
    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: named numpy inputs -> named numpy outputs (float32 actions)."""

    @abc.abstractmethod
    def _device_info(self) -> DeviceInfo:
        """Describe what actually runs (after load)."""

    def _close(self) -> None:
        """Release runtime resources."""

    def _load_program(self):
        """Load every graph of a multi-graph program: returns (graph name -> GraphSession, TensorOps).
        Backends that run programs override this (and list the kinds in ``program_kinds``)."""
        raise BackendError(
            f"backend '{self.name}' runs single graphs fed from observations only; model '{self.spec.name}' "
            f"({self.spec.program.kind}) needs the program runner (several graphs, or runtime-generated noise): "
            "run it on torch, onnxruntime or openvino",
            reason="program_unsupported",
        )

    def graph_signatures(self) -> "dict[str, Any] | None":
        """Graph name -> GraphSignature (inputs / outputs with dtypes and shapes) read from the loaded
        model files, for the load-time contract check; None where the graph is built from the spec
        itself (the reference torch network)."""
        return None

    def run_program(self, inputs: Mapping[str, np.ndarray], noise: np.ndarray) -> "np.ndarray | None":
        """Whole-loop hook: a backend that runs the complete program itself (e.g. one CUDA graph over
        prefix + N steps) returns the normalised actions for ``noise`` (the call's start noise, from
        ProgramRunner.start_noise); None means: let the ProgramRunner drive the graphs."""
        return None

    def _check_contract(self) -> None:
        from vla_accel.backends.program import TensorInfo, check_graph, expected_feeds

        signatures = self.graph_signatures()
        if not signatures:
            return
        program = self.spec.program
        if not program.is_single_pass:
            produced: dict[str, TensorInfo] = {}
            for graph in program.graphs:
                sig = signatures.get(graph.name)
                if sig is None:
                    continue
                expected = expected_feeds(self.spec, graph.inputs, produced)
                for name, dtype in graph.dtypes.items():
                    expected[name] = TensorInfo(dtype, expected[name].shape if name in expected else None)
                check_graph(self.name, graph.name, getattr(self, "_graph_paths", {}).get(graph.name, ""), sig,
                            expected, graph.outputs)
                produced.update(sig.outputs)
            return
        expected = {n: TensorInfo(dt.name, tuple(shape)) for n, (shape, dt) in input_signature(self.spec).items()}
        graph = program.graphs[0] if program.graphs else None
        outputs = tuple(graph.outputs) if graph is not None else (self.spec.action.output,)
        if graph is not None and program.noise in graph.inputs:  # an unrolled loop reads the noise
            expected[program.noise] = TensorInfo("float32", (self.spec.action.steps, self.spec.action.dims))
        for name, sig in signatures.items():
            check_graph(self.name, name, getattr(self, "_path", ""), sig, expected, outputs)

    def availability(self) -> Availability:
        """Instance-level check run by load(): probe() by default; a backend whose options name a
        library (e.g. a delegate path) overrides this to check that library instead."""
        return self.probe()

    # --- public API ---------------------------------------------------------------------------
    def load(self) -> "Backend":
        if self._loaded:
            return self
        if self._fault.at_load:
            raise BackendError(f"backend '{self.name}': injected load fault ({FAULT_ENV})", reason="injected_fault")
        kind = self.spec.program.kind
        if kind not in self.program_kinds:  # said before anything is loaded, whatever is installed
            raise BackendError(
                f"backend '{self.name}' runs {', '.join(self.program_kinds)} programs only; model "
                f"'{self.spec.name}' is a {kind} program (torch, onnxruntime and openvino run every kind)",
                reason="program_unsupported")
        self.availability().require(self.name)
        if uses_program_runner(self.spec):
            from vla_accel.backends.program import ProgramRunner

            sessions, ops = self._load_program()
            self._runner = ProgramRunner(self.spec, sessions, ops)
        else:
            self._load()
        try:
            self._check_contract()
        except BaseException:
            self._close()
            raise
        self._loaded = True
        return self

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._loaded:
            raise BackendError(f"backend '{self.name}' used before load()", reason="not_loaded")
        if self._fault.infer_after is not None and self._calls >= self._fault.infer_after:
            raise BackendError(
                f"backend '{self.name}': injected inference fault after {self._calls} calls ({FAULT_ENV})",
                reason="injected_fault",
            )
        self._calls += 1
        program = self.spec.program
        noise = inputs.get(program.noise) if self._runner is not None else None
        batch, arrays = gather_inputs(self.spec, inputs, None, self.name)
        if noise is not None:
            arrays[program.noise] = np.ascontiguousarray(noise, dtype=np.float32)
        fixed = self.spec.fixed_batch
        if fixed and batch != fixed:
            outputs = self._infer_fixed(arrays, batch, fixed)
        else:
            outputs = self._infer_checked(arrays)
        if self._fault.nan_after is not None and self._calls > self._fault.nan_after:
            outputs = {name: np.full_like(value, np.nan) for name, value in outputs.items()}
        return outputs

    def _infer_checked(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._runner is None:
            return self._infer(arrays)
        import time as _time

        with self._program_lock:
            call = self._program_calls
            self._program_calls += 1
            batch = next(iter(arrays.values())).shape[0]
            noise = self._runner.start_noise(arrays, batch, call)
            t0 = _time.perf_counter_ns()
            actions = self.run_program(arrays, noise)
            if actions is not None:
                self.last_stage_ms = {"program_total": (_time.perf_counter_ns() - t0) / 1e6}
            else:
                actions, times = self._runner.run({**arrays, self.spec.program.noise: noise}, call)
                self.last_stage_ms = times.as_dict()
        return {self.spec.action.output: actions}

    def _infer_fixed(self, arrays: Mapping[str, np.ndarray], batch: int, fixed: int) -> dict[str, np.ndarray]:
        """A model exported with a fixed batch: split larger batches, pad smaller ones (with copies of
        the last row, which are valid inputs) and drop the padding rows from the outputs."""
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, batch, fixed):
            rows = min(fixed, batch - start)
            chunk = {}
            for name, arr in arrays.items():
                part = arr[start:start + rows]
                if rows < fixed:
                    part = np.concatenate([part, np.repeat(part[-1:], fixed - rows, axis=0)], axis=0)
                chunk[name] = part
            for name, value in self._infer_checked(chunk).items():
                parts.setdefault(name, []).append(np.asarray(value)[:rows])
        return {name: np.concatenate(values, axis=0) for name, values in parts.items()}

    def warmup(self, batch_size: int = 1, iterations: int = 3) -> None:
        inputs = example_inputs(self.spec, batch_size, seed=0)
        for _ in range(iterations):
            self.infer(inputs)

    def device_info(self) -> DeviceInfo:
        if not self._loaded:
            raise BackendError(f"backend '{self.name}' not loaded", reason="not_loaded")
        return self._device_info()

    def close(self) -> None:
        if self._loaded:
            self._close()
            self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def __enter__(self) -> "Backend":
        return self.load()

    def __exit__(self, *exc) -> None:
        self.close()


def uses_program_runner(spec) -> bool:
    """Multi-graph programs, and single graphs that read runtime-generated noise (unrolled loops)."""
    program = spec.program
    return (not program.is_single_pass or bool(program.history)
            or bool(program.graphs and program.noise in program.graphs[0].inputs))


def example_inputs(spec: "ModelSpec", batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Random but valid model inputs for a spec (warm-up, parity tests, benchmarks)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for cam in spec.cameras:
        shape = (batch, *cam.shape)
        if cam.dtype == "uint8":
            out[cam.input] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        else:
            out[cam.input] = rng.standard_normal(shape).astype(cam.dtype)
    ins = spec.instruction
    if ins.enabled:
        n = ins.max_tokens
        lengths = rng.integers(1, n + 1, size=batch)
        tokens = np.full((batch, n), ins.pad_id, dtype=np.int32)
        mask = np.zeros((batch, n), dtype=np.float32)
        for b, length in enumerate(lengths):
            tokens[b, :length] = rng.integers(1, ins.vocab_size, size=length)
            mask[b, :length] = 1.0
        out[ins.input] = tokens.astype(ins.ids_dtype, copy=False)
        out[ins.mask_input] = mask.astype(ins.mask_dtype, copy=False)
    if spec.state is not None:
        out[spec.state.input] = rng.standard_normal((batch, spec.state.dims)).astype(np.float32)
    return out


def input_signature(spec) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Every model input's per-sample shape (after the batch dimension) and dtype, in spec order:
    the signature every export of the reference network declares."""
    expected: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for cam in spec.cameras:
        expected[cam.input] = (tuple(cam.shape), np.dtype(cam.dtype))
    ins = spec.instruction
    if ins.enabled:
        expected[ins.input] = ((ins.max_tokens,), np.dtype(ins.ids_dtype))
        expected[ins.mask_input] = ((ins.max_tokens,), np.dtype(ins.mask_dtype))
    if spec.state is not None:
        expected[spec.state.input] = ((spec.state.dims,), np.dtype(np.float32))
    return expected


def gather_inputs(
    spec, inputs: Mapping[str, np.ndarray], max_batch: int | None, backend: str
) -> tuple[int, dict[str, np.ndarray]]:
    """Check named inputs against the spec; returns (batch, C-contiguous arrays in the spec's dtypes).

    Every backend checks its inputs here, so a wrong name, shape or a batch over ``max_batch``
    (None: no limit) raises an InputError naming the tensor instead of a runtime's stack trace
    (the frame is dropped and counted by the engine); values are converted only when their dtype
    differs (e.g. int64 tokens), else passed without a copy.
    """
    expected = input_signature(spec)
    missing = sorted(set(expected) - set(inputs))
    if missing:
        raise InputError(
            f"backend '{backend}': missing input tensor {', '.join(repr(m) for m in missing)} "
            f"(model inputs: {', '.join(spec.input_names)})",
            reason="missing_input",
        )
    batch = None
    out: dict[str, np.ndarray] = {}
    for name, (shape, dtype) in expected.items():
        arr = np.asarray(inputs[name])
        if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != tuple(shape):
            raise InputError(
                f"backend '{backend}': input '{name}' has per-sample shape {tuple(arr.shape[1:])}, "
                f"the model needs {tuple(shape)} (after the batch dimension)",
                reason="bad_input_shape",
            )
        if batch is None:
            batch = arr.shape[0]
        elif arr.shape[0] != batch:
            raise InputError(
                f"backend '{backend}': input '{name}' has batch {arr.shape[0]}, other inputs have {batch}",
                reason="bad_input_shape",
            )
        out[name] = np.ascontiguousarray(arr, dtype=dtype)
    if not batch:
        raise InputError(f"backend '{backend}': empty batch", reason="bad_input_shape")
    if max_batch is not None and batch > max_batch:
        raise InputError(
            f"backend '{backend}': batch {batch} is larger than max_batch {max_batch} this backend was loaded for "
            f"(buffers are preallocated; raise BackendOptions.max_batch)",
            reason="batch_too_large",
        )
    return batch, out


def as_model_inputs(backend: str, spec, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """gather_inputs without a batch limit: validated arrays in the graph's dtypes."""
    return gather_inputs(spec, inputs, None, backend)[1]
