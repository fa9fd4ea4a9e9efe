"""``onnxruntime``: the ONNX export of the model in ONNX Runtime (CPU by default).

ONNX Runtime falls back silently when a requested execution provider cannot be created, so after
loading this backend reads the providers the session actually uses and fails (BackendError,
reason "provider_inactive") when the first requested one is not among them.

Options:
  threads   intra-op threads (0 = ORT's default: one per physical core)
  device    "" / "cpu" (CPUExecutionProvider) or "cuda" (CUDAExecutionProvider, then CPU)
  extra     providers: explicit ordered provider list (overrides device), e.g.
              ["CUDAExecutionProvider", "CPUExecutionProvider"]
            graph_optimization: "all" (default) | "extended" | "basic" | "disable"
            inter_op_threads: int (only used with execution_mode "parallel")
            execution_mode: "sequential" (default) | "parallel"
            optimized_model_path: write the graph ORT optimised (for inspection)
            allow_spinning: "during_run" (default) | true (ORT's own default) | false. Intra-op
              threads busy-wait for work inside a run (fast hand-over between operators); with
              "during_run" they sleep once the run returns (session.force_spinning_stop), so the
              decode, preprocessing and ROS callbacks between two frames get the cores (and an idle
              robot burns no CPU). true keeps them spinning between runs too: lowest latency only for
              back-to-back runs with the cores to themselves (replay of a JPEG bag on 2 cores: 37 % on
              top of bare against 21 %, docs/measurements/cpu_replay_ort_spinning.json). false never
              spins (the side-by-side benchmark uses it, so other runtimes' threads do not starve).
Precision: fp32, or int8 (the fp32 ONNX model through ONNX Runtime's dynamic quantisation: int8
weights, activations quantised per call; uses VNNI / AVX512-VNNI integer dot products where the CPU
has them). A user model whose spec format is "onnx" is run from its own file (int8: quantised from
it); the reference network is exported (cached) first.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from vla_accel.backends.base import Availability, Backend, DeviceInfo, as_model_inputs
from vla_accel.core.machine import cpu_model_name
from vla_accel.core.optional import module_available
from vla_accel.errors import BackendError, BackendUnavailableError, GraphContractError, ModelFileError

ORT_HINT = "Install ONNX Runtime: pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA)."
GRAPH_OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
DEVICE_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


def ort_errors() -> tuple[type[BaseException], ...]:
    """ONNX Runtime's own exception classes (they derive from Exception, not RuntimeError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NoModel",
             "NotImplemented", "RuntimeException", "EPFail", "EngineError", "NotFound")
    found = tuple(getattr(state, n) for n in names if isinstance(getattr(state, n, None), type))
    return found + (RuntimeError, ValueError)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    kind = "cpu"
    precisions = ("fp32", "int8")
    description = "ONNX Runtime (explicit execution providers; CPU here); fp32, or int8 by dynamic quantisation"
    program_kinds = ("single_pass", "flow_matching", "diffusion", "autoregressive")

    @classmethod
    def probe(cls) -> Availability:
        if not module_available("onnxruntime"):
            return Availability(False, ("onnxruntime",), ORT_HINT)
        return Availability(True, detail="onnxruntime importable")

    def _providers(self, available: list[str]) -> list[str]:
        extra = self.options.extra
        if extra.get("providers"):
            requested = list(extra["providers"])
        else:
            device = (self.options.device or "cpu").lower().split(":")[0]
            if device not in DEVICE_PROVIDERS:
                raise BackendError(
                    f"backend 'onnxruntime': unknown device '{self.options.device}'; use one of "
                    f"{', '.join(DEVICE_PROVIDERS)} or pass extra providers=[...]",
                    reason="bad_device",
                )
            requested = DEVICE_PROVIDERS[device]
        missing = [p for p in requested if p not in available]
        if requested[0] in missing:
            raise BackendUnavailableError(
                self.name,
                [requested[0]],
                f"This onnxruntime build offers {', '.join(available)}. For CUDA install onnxruntime-gpu "
                "(and a matching CUDA/cuDNN); other providers need their own onnxruntime build.",
            )
        # Later (fallback) providers that are absent are dropped; the first one must be there.
        return [p for p in requested if p in available]

    def _load(self) -> None:
        path = self.model.export("onnx", precision=self.options.precision)
        session = self._open(path)
        graph_inputs = {i.name for i in session.get_inputs()}
        missing = [n for n in self.spec.input_names if n not in graph_inputs]
        if missing:
            raise GraphContractError(
                f"ONNX model {path} lacks inputs {missing} named by the spec (it has {sorted(graph_inputs)})",
            )
        self._session = session
        self._path = path
        self._output = self.spec.action.output
        self._output_names = [self._output]

    def _load_program(self):
        from vla_accel.backends.program import NumpyOps

        if self.options.precision != "fp32":
            raise BackendError("onnxruntime runs policy programs in fp32 only", reason="bad_precision")
        paths = self.model.export_program("onnx")
        self._graph_paths = paths
        self._sessions = {name: _OrtGraph(self._open(path), self._errors) for name, path in paths.items()}
        self._path = next(iter(paths.values())).parent
        return self._sessions, NumpyOps()

    def graph_signatures(self):
        if self._runner is not None or getattr(self, "_sessions", None):
            return {name: s.signature() for name, s in self._sessions.items()}
        return {"model": _ort_signature(self._session)}

    def _open(self, path):
        import onnxruntime as ort

        extra = self.options.extra
        level_name = str(extra.get("graph_optimization", "all")).lower()
        if level_name not in GRAPH_OPTIMIZATION_LEVELS:
            raise BackendError(
                f"graph_optimization must be one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}, got {level_name!r}",
                reason="bad_option",
            )
        if self.options.threads < 0:
            raise BackendError(f"threads must be >= 0, got {self.options.threads}", reason="bad_option")
        providers = self._providers(ort.get_available_providers())
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION_LEVELS[level_name])
        session_options.intra_op_num_threads = int(self.options.threads)
        mode = str(extra.get("execution_mode", "sequential")).lower()
        if mode == "parallel":
            session_options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
            session_options.inter_op_num_threads = int(extra.get("inter_op_threads", 0))
        elif mode != "sequential":
            raise BackendError(f"execution_mode must be sequential or parallel, got {mode!r}", reason="bad_option")
        spinning = spinning_mode(extra)
        if spinning == "off":
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        elif spinning == "during_run":
            session_options.add_session_config_entry("session.force_spinning_stop", "1")
        if extra.get("optimized_model_path"):
            session_options.optimized_model_filepath = str(extra["optimized_model_path"])
        try:
            session = ort.InferenceSession(str(path), sess_options=session_options, providers=providers)
        except ort_errors() as exc:
            if not self.model.has_torch_network:  # the user's own file: no other backend fixes that
                raise ModelFileError(f"ONNX model {path} is corrupt or invalid: {exc}", reason="bad_model_file") from exc
            raise BackendError(f"onnxruntime could not load {path}: {exc}", reason="load_failed") from exc
        active = session.get_providers()
        if providers[0] not in active:
            raise BackendError(
                f"onnxruntime: requested provider {providers[0]} is not active (session runs {active}); "
                "ONNX Runtime fell back silently",
                reason="provider_inactive",
            )
        self._ort = ort
        self._active = active
        self._level = level_name
        self._errors = ort_errors()
        return session

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = as_model_inputs(self.name, self.spec, inputs)
        try:
            (actions,) = self._session.run(self._output_names, feed)
        except self._errors as exc:
            raise BackendError(f"onnxruntime inference failed: {exc}", reason="infer_failed") from exc
        return {self._output: np.asarray(actions, dtype=np.float32)}

    def _device_info(self) -> DeviceInfo:
        threads = int(self.options.threads) or (os.cpu_count() or 1)
        provider = self._active[0]
        on_cpu = provider == "CPUExecutionProvider"
        return DeviceInfo(
            backend=self.name,
            device="cpu" if on_cpu else provider.replace("ExecutionProvider", "").lower(),
            kind="cpu" if on_cpu else "gpu",
            # P is the CPU threads on the CPU provider; for a GPU provider ORT does not say (0: unknown).
            parallel_units=threads if on_cpu else 0,
            precision=self.options.precision,
            runtime_version=f"onnxruntime {self._ort.__version__}",
            detail={
                "providers": list(self._active),
                "graph_optimization": self._level,
                "allow_spinning": spinning_mode(self.options.extra),
                "cpu": cpu_model_name(),
                "model_file": str(self._path),
            },
        )

    def _close(self) -> None:
        self._session = None
        self._sessions = {}


SPINNING_MODES = {True: "on", False: "off", "on": "on", "off": "off", "during_run": "during_run"}


def spinning_mode(extra) -> str:
    """``extra["allow_spinning"]`` as "on" | "off" | "during_run" (a bad value is a bad_option error)."""
    value = extra.get("allow_spinning", "during_run")
    try:
        return SPINNING_MODES[value]
    except (KeyError, TypeError):
        raise BackendError(f"allow_spinning must be true, false or 'during_run', got {value!r}",
                           reason="bad_option") from None


def _ort_signature(session):
    from vla_accel.backends.program import GraphSignature, TensorInfo, dtype_name

    def info(arg):
        shape = tuple(d if isinstance(d, int) else None for d in arg.shape) if arg.shape is not None else None
        return TensorInfo(dtype_name(arg.type), shape)

    return GraphSignature({a.name: info(a) for a in session.get_inputs()},
                          {a.name: info(a) for a in session.get_outputs()})


class _OrtGraph:
    """One graph of a program in its own ONNX Runtime session; outputs read by name."""

    def __init__(self, session, errors):
        self.session = session
        self.errors = errors
        self.outputs = [o.name for o in session.get_outputs()]

    def run(self, feeds):
        try:
            values = self.session.run(self.outputs, dict(feeds))
        except self.errors as exc:
            raise BackendError(f"onnxruntime inference failed: {exc}", reason="infer_failed") from exc
        return dict(zip(self.outputs, values))

    def signature(self):
        return _ort_signature(self.session)
