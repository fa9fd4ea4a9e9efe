"""``openvino``: the model's OpenVINO IR on an OpenVINO device (CPU here; Intel GPU / NPU elsewhere).

Precision: ``fp32`` passes INFERENCE_PRECISION_HINT=f32 (parity with torch); ``bf16`` / ``fp16``
ask for those; ``default`` leaves OpenVINO's own choice, which is bf16 on CPUs with AVX512-BF16 or
AMX (error vs fp32 around 1e-2), so benchmarks can report it separately. The precision actually
used is read back from the compiled model and reported in DeviceInfo.

Options:
  device    "CPU" (default), "GPU", "NPU", "AUTO", ...: checked against core.available_devices,
            a device that is not there fails with what to install
  threads   INFERENCE_NUM_THREADS (0 = OpenVINO's default)
  extra     performance_hint: "LATENCY" (default) | "THROUGHPUT"
            static_batch: int, reshape the model to this fixed batch (smaller graphs compile
              tighter; inputs of another batch size are then rejected)
            config: dict of further OpenVINO properties passed to compile_model
A user model with spec format "openvino" is run from its .xml, one with format "onnx" is converted.
"""
from __future__ import annotations

import os
import threading
from typing import Mapping

import numpy as np

from vla_accel.backends.base import Availability, Backend, DeviceInfo, as_model_inputs, module_available
from vla_accel.backends.torch_backend import cpu_model_name
from vla_accel.errors import BackendError, BackendUnavailableError, InputError, ModelFileError

OPENVINO_HINT = "Install OpenVINO: pip install openvino."
DEVICE_HINTS = {
    "GPU": "The OpenVINO GPU plugin needs an Intel GPU and its compute runtime (intel-opencl-icd / Level Zero).",
    "NPU": "The OpenVINO NPU plugin needs an Intel NPU (Core Ultra) and the intel-driver-compiler-npu / "
           "intel-level-zero-npu driver packages.",
}
PRECISION_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}


class OpenVINOBackend(Backend):
    name = "openvino"
    kind = "cpu"
    precisions = ("fp32", "fp16", "bf16", "default")
    description = "OpenVINO runtime (CPU here; Intel GPU / NPU where present)"
    program_kinds = ("single_pass", "flow_matching", "diffusion", "autoregressive")

    @classmethod
    def probe(cls) -> Availability:
        if not module_available("openvino"):
            return Availability(False, ("openvino",), OPENVINO_HINT)
        return Availability(True, detail="openvino importable")

    def _load(self) -> None:
        path = self.model.export("openvino", precision="fp32")
        compiled = self._compile(path)
        names = {n for port in compiled.outputs for n in port.get_names()}
        self._output = self.spec.action.output
        # Outputs are read by name: a model whose outputs are listed in another order still gives the
        # actions (the load-time check fails when the name is absent).
        self._output_port = compiled.output(self._output) if self._output in names else None
        self._request = compiled.create_infer_request()
        self._compiled = compiled
        self._path = path

    def _load_program(self):
        from vla_accel.backends.program import NumpyOps

        paths = self.model.export_program("openvino", precision="fp32")
        self._graph_paths = paths
        self._graphs = {}
        for name, path in paths.items():
            compiled = self._compile(path)
            self._graphs[name] = _OvGraph(compiled)
            self._compiled = compiled
        self._path = next(iter(paths.values())).parent
        self._static_batch = 0
        return self._graphs, NumpyOps()

    def graph_signatures(self):
        if getattr(self, "_graphs", None):
            return {g.name: self._graphs[g.name].signature(set(g.inputs) | set(g.outputs))
                    for g in self.spec.program.graphs}
        return {"model": _ov_signature(self._compiled, set(self.spec.input_names) | set(self.spec.output_names))}

    def _compile(self, path):
        import openvino as ov

        core = ov.Core()
        device = (self.options.device or "CPU").upper()
        available = list(core.available_devices)
        base_device = device.split(".")[0]
        if base_device not in ("AUTO", "MULTI", "HETERO") and device not in available and base_device not in available:
            raise BackendUnavailableError(
                self.name,
                [f"OpenVINO device {device}"],
                f"Devices present: {', '.join(available) or 'none'}. "
                + DEVICE_HINTS.get(base_device, "Check the device name against `core.available_devices`."),
            )
        if self.options.threads < 0:
            raise BackendError(f"threads must be >= 0, got {self.options.threads}", reason="bad_option")
        extra = self.options.extra
        try:
            model = core.read_model(str(path))
        except RuntimeError as exc:
            raise ModelFileError(f"OpenVINO cannot read {path}: {exc}", reason="bad_model_file") from exc
        static_batch = int(extra.get("static_batch", 0) or 0)
        if static_batch:
            model.reshape({inp.get_any_name(): [static_batch, *list(inp.get_partial_shape())[1:]] for inp in model.inputs})
        config: dict[str, object] = {"PERFORMANCE_HINT": str(extra.get("performance_hint", "LATENCY")).upper()}
        if self.options.precision in PRECISION_HINTS:
            config["INFERENCE_PRECISION_HINT"] = PRECISION_HINTS[self.options.precision]
        if self.options.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.options.threads)
        config.update(dict(extra.get("config") or {}))
        try:
            compiled = core.compile_model(model, device, config)
        except RuntimeError as exc:
            raise BackendError(f"OpenVINO could not compile {path} for {device}: {exc}", reason="load_failed") from exc
        self._ov = ov
        self._compiled = compiled
        self._lock = threading.Lock()  # an InferRequest is not re-entrant
        self._device = device
        self._static_batch = static_batch
        self._inference_precision = self._read_property("INFERENCE_PRECISION_HINT", self.options.precision)
        threads = self._read_property("INFERENCE_NUM_THREADS", "0")
        self._threads = int(threads) if str(threads).isdigit() and int(threads) > 0 else 0
        if not self._threads:
            self._threads = os.cpu_count() or 1
        return compiled

    def _read_property(self, key: str, default: str) -> str:
        try:
            value = self._compiled.get_property(key)
        except RuntimeError:  # not every device plugin exposes every property
            return default
        # Element types (the precision hint) print as "<Type: 'bfloat16'>"; their short name is "bf16".
        return value.get_type_name() if hasattr(value, "get_type_name") else str(value)

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = as_model_inputs(self.name, self.spec, inputs)
        if self._static_batch:
            batch = next(iter(feed.values())).shape[0]
            if batch != self._static_batch:
                raise InputError(
                    f"backend 'openvino' was compiled for a static batch of {self._static_batch}, got {batch}",
                    reason="bad_batch",
                )
        with self._lock:
            try:
                self._request.infer(feed)
            except RuntimeError as exc:
                raise BackendError(f"OpenVINO inference failed: {exc}", reason="infer_failed") from exc
            # The output tensor's memory is reused by the next inference: copy it out.
            actions = np.array(self._request.get_tensor(self._output_port).data, dtype=np.float32, copy=True)
        return {self._output: actions}

    def _device_info(self) -> DeviceInfo:
        precision = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}.get(self._inference_precision.lower(),
                                                                        self._inference_precision)
        kind = "npu" if self._device.startswith("NPU") else "gpu" if self._device.startswith("GPU") else "cpu"
        detail = {"requested_precision": self.options.precision, "model_file": str(self._path)}
        if kind == "cpu":
            detail["cpu"] = cpu_model_name()
        return DeviceInfo(
            backend=self.name,
            device=self._device,
            kind=kind,
            parallel_units=self._threads,
            precision=precision,
            runtime_version=f"openvino {self._ov.get_version()}",
            detail=detail,
        )

    def _close(self) -> None:
        self._request = None
        self._compiled = None
        self._graphs = {}


def _ov_signature(compiled, preferred: set):
    """Inputs / outputs by name; a port carrying several names (OpenVINO keeps the exporter's internal
    ones too) is listed once, under the name the spec uses when it has it."""
    from vla_accel.backends.program import GraphSignature, TensorInfo, dtype_name

    def info(port):
        shape = port.get_partial_shape()
        dims = None
        if shape.rank.is_static:
            dims = tuple(d.get_length() if d.is_static else None for d in shape)
        return TensorInfo(dtype_name(port.get_element_type().get_type_name()), dims)

    def named(ports):
        out = {}
        for port in ports:
            names = sorted(port.get_names())
            chosen = next((n for n in names if n in preferred), port.get_any_name())
            out[chosen] = info(port)
        return out

    return GraphSignature(named(compiled.inputs), named(compiled.outputs))


class _OvGraph:
    """One graph of a program: its own compiled model and infer request; outputs read by name, copied
    (the request reuses their memory)."""

    def __init__(self, compiled):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.ports = {name: port for port in compiled.outputs for name in port.get_names()}

    def run(self, feeds):
        try:
            self.request.infer(dict(feeds))
        except RuntimeError as exc:
            raise BackendError(f"OpenVINO inference failed: {exc}", reason="infer_failed") from exc
        return {name: np.array(self.request.get_tensor(port).data, copy=True) for name, port in self.ports.items()}

    def signature(self, preferred: set):
        return _ov_signature(self.compiled, preferred)
