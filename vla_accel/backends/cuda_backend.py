"""``cuda``: the reference network in PyTorch on an NVIDIA GPU (desktop, server or Jetson).

What makes it fast at batch 1, where a robot lives:
* precision fp32 / fp16 / bf16: weights are cast once at load; images, mask and state are cast on
  the GPU inside the captured region; token ids stay int32;
* CUDA graphs: after a few eager warm-up passes, one forward pass per batch size is captured on
  static device buffers and replayed, so a frame costs one graph launch instead of ~15 kernel
  launches per transformer block from Python (``extra["cuda_graphs"]``, default on). Alternatively
  ``extra["compile"] = "reduce-overhead"`` uses torch.compile's own CUDA graphs (slow first call);
  docs/gpu.md reports which measured better;
* pinned host staging buffers and asynchronous H2D / D2H copies on a dedicated copy stream, all
  sized once for ``options.max_batch``; compute runs on its own stream, ordered by events.

Policy programs (flow matching, diffusion, autoregressive) run through the shared ProgramRunner on
the reference program's torch modules on the GPU: tensors passed between graphs (prefix key/value
cache, the sample) stay on the device, only the final chunk is copied back. The hook for running
the whole loop as one CUDA graph is ``Backend.run_program(inputs, noise)``: return the actions for the
given start noise (the runner's own per-call noise, so results stay comparable with every backend)
and the runner is bypassed; see docs/policies.md "GPU: one CUDA graph per chunk".

Absent CUDA (no NVIDIA driver, or a CPU-only torch build) ``load()`` raises BackendUnavailableError
naming what is missing and how to install it.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Mapping

import numpy as np

from vla_accel.backends.base import Availability, Backend, DeviceInfo, gather_inputs, module_available
from vla_accel.errors import BackendError, BackendUnavailableError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "Install the NVIDIA driver and a CUDA build of PyTorch (pip install torch --index-url "
    "https://download.pytorch.org/whl/cu128, or the build matching your driver); on Jetson install the "
    "JetPack PyTorch wheel from NVIDIA (developer.download.nvidia.com/compute/redist/jp/...)."
)
# Device nodes / files that show an NVIDIA driver without importing torch (desktop and Jetson).
_DRIVER_MARKERS = ("/proc/driver/nvidia/version", "/dev/nvidia0", "/dev/nvidiactl", "/dev/nvhost-ctrl-gpu",
                   "/dev/nvgpu/igpu0/ctrl")
_EAGER_WARMUP_PASSES = 3  # eager passes before capture: cuBLAS handles, workspaces, lazy modules


def _flag(value: Any) -> bool:
    """A boolean option that may arrive as text from a ROS parameter file or the command line."""
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)


def _driver_present() -> bool:
    return any(os.path.exists(path) for path in _DRIVER_MARKERS)


class CudaBackend(Backend):
    name = "cuda"
    kind = "gpu"
    precisions = ("fp32", "fp16", "bf16")
    description = "PyTorch on an NVIDIA GPU: fp16/bf16, CUDA graphs, pinned async copies"
    program_kinds = ("single_pass", "flow_matching", "diffusion", "autoregressive")

    @classmethod
    def probe(cls) -> Availability:
        missing = []
        if not module_available("torch"):
            missing.append("python package torch (a CUDA build)")
        if not _driver_present():
            missing.append("a CUDA device (no NVIDIA GPU driver found: no /dev/nvidia0, /proc/driver/nvidia or "
                           "Jetson /dev/nvhost-ctrl-gpu)")
        if missing:
            return Availability(False, tuple(missing), INSTALL_HINT)
        return Availability(True, detail="torch and an NVIDIA driver are present")

    # --- load -------------------------------------------------------------------------------------
    def _load(self) -> None:
        torch = self._setup_device()
        with torch.cuda.device(self.device):
            self.module = self.model.torch_module(self.device, self.dtype)
            if self.compile_mode:
                self.forward = torch.compile(self.module, mode=self.compile_mode, dynamic=False, fullgraph=True)
            else:
                self.forward = self.module
            self.copy_stream = torch.cuda.Stream(self.device)
            self.compute_stream = torch.cuda.Stream(self.device)
            self._allocate_staging()

    def _load_program(self):
        from vla_accel.backends.program_torch import torch_program

        torch = self._setup_device()
        self.module = self.forward = None
        self.host_inputs, self.device_inputs = {}, {}
        with torch.cuda.device(self.device):
            return torch_program(self.model, self.device, self.dtype)

    def _setup_device(self):
        import torch

        self._torch = torch
        if torch.version.cuda is None or not torch.cuda.is_available():
            what = (
                f"a CUDA build of torch (torch {torch.__version__} is CPU-only)"
                if torch.version.cuda is None
                else f"a usable CUDA device (torch {torch.__version__} built for CUDA {torch.version.cuda} found none: "
                "check the driver with nvidia-smi)"
            )
            raise BackendUnavailableError(self.name, [what], INSTALL_HINT)
        self.device = torch.device(self.options.device or "cuda:0")
        if self.device.type != "cuda":
            raise BackendError(f"cuda: device must be 'cuda[:N]', got '{self.options.device}'", reason="bad_option")
        index = self.device.index or 0
        if index >= torch.cuda.device_count():
            raise BackendError(
                f"cuda: no device {self.device}; this machine has {torch.cuda.device_count()} CUDA device(s)",
                reason="unknown_device",
            )
        self.device = torch.device("cuda", index)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.options.precision]
        if self.dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise BackendError(
                f"cuda: {torch.cuda.get_device_name(index)} does not support bf16; use fp16", reason="bad_precision"
            )
        self.max_batch = max(1, int(self.options.max_batch))
        self.compile_mode = self.options.extra.get("compile") or None
        self.use_graphs = _flag(self.options.extra.get("cuda_graphs", True)) and self.compile_mode is None
        self._lock = threading.Lock()
        self._graphs: dict[int, tuple[Any, Any]] = {}  # batch -> (CUDAGraph, static output)
        self._eager_passes: dict[int, int] = {}
        return torch

    def _allocate_staging(self) -> None:
        """Pinned host buffers and device buffers for every input and the output, at max_batch."""
        torch, spec, b = self._torch, self.spec, self.max_batch
        shapes: dict[str, tuple[tuple[int, ...], Any]] = {}
        for cam in spec.cameras:
            shapes[cam.input] = (cam.shape, getattr(torch, cam.dtype))
        shapes[spec.instruction.input] = ((spec.instruction.max_tokens,), torch.int32)
        shapes[spec.instruction.mask_input] = ((spec.instruction.max_tokens,), torch.float32)
        if spec.state is not None:
            shapes[spec.state.input] = ((spec.state.dims,), torch.float32)
        self.host_inputs = {}
        self.device_inputs = {}
        for name, (shape, dtype) in shapes.items():
            self.host_inputs[name] = torch.empty((b, *shape), dtype=dtype, pin_memory=True)
            self.device_inputs[name] = torch.zeros((b, *shape), dtype=dtype, device=self.device)
        # Valid token ids in the static buffers, so eager warm-up before the first frame is well defined.
        self.device_inputs[spec.instruction.mask_input].fill_(1.0)
        out_shape = (b, spec.action.steps, spec.action.dims)
        self.host_output = torch.empty(out_shape, dtype=torch.float32, pin_memory=True)
        self.host_input_views = {name: t.numpy() for name, t in self.host_inputs.items()}
        self.host_output_view = self.host_output.numpy()
        self.h2d_done = torch.cuda.Event()
        self.compute_done = torch.cuda.Event()
        self.d2h_done = torch.cuda.Event()

    # --- run ------------------------------------------------------------------------------------
    def _run_model(self, batch: int):
        """The forward pass on the first ``batch`` rows of the static device inputs (fp32 output)."""
        args = [self.device_inputs[name][:batch] for name in self.spec.input_names]
        return self.forward(*args)

    def _capture(self, batch: int):
        torch = self._torch
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.compute_stream):
            static_output = self._run_model(batch)
        return graph, static_output

    def _compute(self, batch: int):
        """Enqueue the forward pass on the compute stream; returns the device output tensor."""
        if not self.use_graphs:
            return self._run_model(batch)
        entry = self._graphs.get(batch)
        if entry is None:
            passes = self._eager_passes.get(batch, 0)
            if passes < _EAGER_WARMUP_PASSES:
                self._eager_passes[batch] = passes + 1
                return self._run_model(batch)
            self.compute_stream.synchronize()
            entry = self._graphs[batch] = self._capture(batch)
            log.debug("cuda: captured a CUDA graph for batch %d", batch)
        graph, static_output = entry
        graph.replay()
        return static_output

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        batch, arrays = gather_inputs(self.spec, inputs, self.max_batch, self.name)
        with self._lock, torch.inference_mode(), torch.cuda.device(self.device):
            try:
                for name, array in arrays.items():
                    np.copyto(self.host_input_views[name][:batch], array)
                with torch.cuda.stream(self.copy_stream):
                    for name in arrays:
                        self.device_inputs[name][:batch].copy_(self.host_inputs[name][:batch], non_blocking=True)
                    self.h2d_done.record(self.copy_stream)
                self.compute_stream.wait_event(self.h2d_done)
                with torch.cuda.stream(self.compute_stream):
                    output = self._compute(batch)
                    self.compute_done.record(self.compute_stream)
                self.copy_stream.wait_event(self.compute_done)
                with torch.cuda.stream(self.copy_stream):
                    self.host_output[:batch].copy_(output, non_blocking=True)
                    self.d2h_done.record(self.copy_stream)
                self.d2h_done.synchronize()
            except torch.cuda.OutOfMemoryError as exc:
                raise BackendError(f"cuda: out of GPU memory at batch {batch}: {exc}", reason="out_of_memory") from exc
            except RuntimeError as exc:  # CUDA launch / illegal address errors surface as RuntimeError
                raise BackendError(f"cuda: inference failed on {self.device}: {exc}", reason="device_error") from exc
            # The pinned buffer is reused by the next call: hand the caller its own copy.
            result = self.host_output_view[:batch].copy()
        return {self.spec.action.output: result}

    def _device_info(self) -> DeviceInfo:
        torch = self._torch
        props = torch.cuda.get_device_properties(self.device)
        return DeviceInfo(
            backend=self.name,
            device=f"{self.device} {props.name}",
            kind="gpu",
            parallel_units=int(props.multi_processor_count),
            precision=self.options.precision,
            runtime_version=f"torch {torch.__version__}, CUDA {torch.version.cuda}",
            memory_bytes=int(props.total_memory),
            detail={
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "streaming_multiprocessors": int(props.multi_processor_count),
                "total_memory_bytes": int(props.total_memory),
                "cuda_graphs": self.use_graphs,
                "compile": self.compile_mode or "",
                "graphs_captured": sorted(self._graphs),
                "max_batch": self.max_batch,
                "cudnn": torch.backends.cudnn.version(),
            },
        )

    def _close(self) -> None:
        torch = self._torch
        self._graphs.clear()
        self.module = self.forward = None
        self.host_inputs.clear()
        self.device_inputs.clear()
        torch.cuda.empty_cache()
