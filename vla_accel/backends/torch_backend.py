"""``torch``: the reference network in PyTorch eager mode, fp32, on the CPU.

This is THE baseline: every speedup in the package is T_torch_cpu / T_backend at the same batch.
Options: ``threads`` -> torch.set_num_threads (process-wide in torch; 0 keeps torch's default,
one thread per core); ``device`` must be "" or "cpu" (GPUs are the ``cuda`` backend).

Also holds cpu_model_name, shared by the CPU backends; it needs no heavy runtime.
"""
from __future__ import annotations

import os
import platform
import threading
from functools import lru_cache
from typing import Mapping

import numpy as np

from vla_accel.backends.base import Availability, Backend, DeviceInfo, as_model_inputs, module_available
from vla_accel.errors import BackendError

TORCH_HINT = (
    "Install the CPU build of PyTorch: pip install torch==2.13.0 --index-url "
    "https://download.pytorch.org/whl/cpu (plain `pip install torch` pulls several GB of CUDA packages)."
)


@lru_cache(maxsize=1)
def cpu_model_name() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall through to the portable (less precise) answer
    return platform.processor() or platform.machine() or "unknown CPU"


class TorchBackend(Backend):
    name = "torch"
    kind = "cpu"
    precisions = ("fp32",)
    description = "PyTorch eager, fp32, CPU: the baseline for every speedup"
    program_kinds = ("single_pass", "flow_matching", "diffusion", "autoregressive")

    @classmethod
    def probe(cls) -> Availability:
        if not module_available("torch"):
            return Availability(False, ("torch",), TORCH_HINT)
        return Availability(True, detail="PyTorch importable")

    def _load(self) -> None:
        import torch

        device = (self.options.device or "cpu").lower()
        if device != "cpu":
            raise BackendError(
                f"backend 'torch' runs on the CPU only (device '{self.options.device}' requested); use "
                "backend 'cuda' for NVIDIA GPUs",
                reason="bad_device",
            )
        if self.options.threads < 0:
            raise BackendError(f"threads must be >= 0, got {self.options.threads}", reason="bad_option")
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        self._torch = torch
        self._module = self.model.torch_module("cpu")
        self._threads = torch.get_num_threads()
        self._input_names = self.spec.input_names
        self._output = self.spec.action.output
        self._lock = threading.Lock()  # one forward at a time: intra-op threads already use the cores

    def _load_program(self):
        import torch

        from vla_accel.backends.program_torch import torch_program

        if (self.options.device or "cpu").lower() != "cpu":
            raise BackendError("backend 'torch' runs on the CPU only; use backend 'cuda' for NVIDIA GPUs",
                               reason="bad_device")
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        self._torch = torch
        self._threads = torch.get_num_threads()
        return torch_program(self.model, "cpu")

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = as_model_inputs(self.name, self.spec, inputs)
        torch = self._torch
        tensors = [torch.from_numpy(arrays[name]) for name in self._input_names]
        with self._lock, torch.inference_mode():
            actions = self._module(*tensors)
        return {self._output: actions.numpy()}

    def _device_info(self) -> DeviceInfo:
        return DeviceInfo(
            backend=self.name,
            device="cpu",
            kind="cpu",
            parallel_units=self._threads,
            precision="fp32",
            runtime_version=f"torch {self._torch.__version__}",
            detail={"cpu": cpu_model_name(), "logical_cpus": os.cpu_count() or 0, "mode": "eager"},
        )

    def _close(self) -> None:
        self._module = None
