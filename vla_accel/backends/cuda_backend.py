"""``cuda``: the reference network in PyTorch on an NVIDIA GPU (desktop, server or Jetson).

What makes it fast at batch 1, where a robot lives:
* precision fp32 / fp16 / bf16: weights are cast once at load; images, mask and state are cast on
  the GPU inside the captured region; token ids stay int32;
* CUDA graphs: after a few eager warm-up passes, one forward pass per batch size is captured on
  static device buffers and replayed, so a frame costs one graph launch instead of ~15 kernel
  launches per transformer block from Python (``extra["cuda_graphs"]``, default on);
* ``extra["compile"]``: torch.compile (Inductor) fuses the elementwise work around the GEMMs
  (LayerNorm with the residual add, bias, activations) into generated kernels. Modes without their own
  CUDA graphs ("default", "max-autotune-no-cudagraphs") run inside this backend's graphs, so a frame
  is still one graph launch, now of fewer kernels; "reduce-overhead" / "max-autotune" use
  torch.compile's own graphs instead. The first call compiles (tens of seconds; Inductor caches
  the result on disk); docs/gpu.md reports what each measured;
* pinned host staging buffers and asynchronous H2D / D2H copies on a dedicated copy stream, all
  sized once for ``options.max_batch``; compute runs on its own stream, ordered by events;
* the reference network in its GPU layout (fused attention, tokens padded to a tensor-core multiple,
  patch embedding as a GEMM; ``extra["gpu_layout"]``, default on), or any policy program saved as
  ``.pt2`` (a spec with ``format: pt2``; ``extra["program"] = "pt2"`` runs the reference network's
  own torch.export program, ``"aoti"`` its AOTInductor package), with the CUDA graph over the whole
  program;
* ``infer_frames``: uint8 camera frames copied as they come and resized / normalised on the device
  (backends/cuda_images.py), inside the same CUDA graph;
* graphs that coexist with other CUDA-graph users in the process (torch.compile's graph trees,
  other backends): the backend's own memory pool, and the cuBLAS workspace re-allocated inside that
  pool at capture, so that another user clearing cuBLAS workspaces cannot free memory a graph uses.

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

from vla_accel.backends.base import Availability, Backend, BackendOptions, DeviceInfo, gather_inputs
from vla_accel.core.optional import module_available
from vla_accel.errors import BackendError, BackendUnavailableError, InputError

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


# torch.compile modes: those with their own CUDA graphs, and those that run inside this backend's.
_COMPILE_OWN_GRAPHS = ("reduce-overhead", "max-autotune")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", *_COMPILE_OWN_GRAPHS)
# upload buffer of a flow program's per-step time features (when the spec declares time_features)
_TIME_FEATURES = "<time features per step>"
_MAX_FRAME_SHAPES = 8  # distinct (camera, frame size) upload buffers kept
_THREADED_STAGING_BYTES = 1 << 20  # blocks at least this large are staged by several threads
_STAGING_THREADS = 4
_UPLOAD_BLOCK_BYTES = 8 << 20  # staged and sent in row blocks of about this size


def _clear_blas_workspaces(torch) -> None:
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()


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

    def __init__(self, model, options: BackendOptions | None = None):
        super().__init__(model, options)
        mode = self.options.extra.get("compile") or None
        if mode is not None and mode not in COMPILE_MODES:
            raise BackendError(f"cuda: extra compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}",
                               reason="bad_option")

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
            if not self.model.has_torch_network or self.program in ("pt2", "aoti"):
                self.forward = self._load_pt2_program()
            else:
                self.module = self.model.torch_module(self.device, self.dtype)
                if self.gpu_layout:
                    self.module.use_gpu_layout()
                self.forward = self._compiled(self.module)
            self.copy_stream = torch.cuda.Stream(self.device)
            self.compute_stream = torch.cuda.Stream(self.device)
            self._allocate_staging()

    def _load_pt2_program(self):
        """A ``.pt2`` policy program: the spec's own (format pt2), or the reference network's export
        (``program`` "pt2": the torch.export program; "aoti": its AOTInductor package for CUDA)."""
        from vla_accel.errors import ModelFileError
        from vla_accel.models.export_pt2 import load_program

        if not self.model.has_torch_network and self.spec.format != "pt2":
            raise BackendError(
                f"cuda runs the reference network or a policy program saved as .pt2 (vla-accel export "
                f"--format pt2); '{self.model.name}' is a {self.spec.format} file: use a backend that runs it "
                "(onnxruntime, tensorrt, ...)",
                reason="unsupported_model",
            )
        if self.compile_mode:
            raise BackendError("cuda: extra compile applies to the torch module, not to a .pt2 program",
                               reason="bad_option")
        try:
            if self.model.has_torch_network:
                path = self.model.export("pt2", precision=self.options.precision, progress=False,
                                         aoti_device="cuda" if self.program == "aoti" else "")
            else:
                path = self.model.model_file
            runner = load_program(path, str(self.device), single_threaded=self.use_graphs,
                                  check=_flag(self.options.extra.get("check_program", True)))
        except ModelFileError as exc:
            raise BackendError(f"cuda: {exc}", reason=getattr(exc, "reason", "bad_model_file")) from exc
        self.program_file = str(path)
        return runner

    def _load_program(self):
        """Policy programs (flow matching, ...): the reference program's torch modules on the GPU for
        the ProgramRunner; with graphs on, ``run_program`` captures a whole flow-matching chunk (prefix
        + every step) into one CUDA graph instead."""
        from vla_accel.backends.program_torch import torch_program

        torch = self._setup_device()
        self.host_inputs, self.device_inputs = {}, {}
        with torch.cuda.device(self.device):
            sessions, ops = torch_program(self.model, self.device, self.dtype)
            if self.gpu_layout:
                from vla_accel.models.policy_network import use_gpu_layout

                use_gpu_layout({name: session.module for name, session in sessions.items()})
            for session in sessions.values():
                session.module = self._compiled(session.module)
            self._sessions = sessions
            self.copy_stream = torch.cuda.Stream(self.device)
            self.compute_stream = torch.cuda.Stream(self.device)
            self._allocate_output_staging()
        return sessions, ops

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
        extra = self.options.extra
        self.compile_mode = extra.get("compile") or None
        # torch.compile's own CUDA graphs replace this backend's; its other modes run inside them.
        self.use_graphs = _flag(extra.get("cuda_graphs", True)) and self.compile_mode not in _COMPILE_OWN_GRAPHS
        self.gpu_layout = _flag(extra.get("gpu_layout", True))
        self.program = str(extra.get("program", "module") or "module").lower()
        if self.program not in ("module", "pt2", "aoti"):
            raise BackendError(f"cuda: extra program must be 'module', 'pt2' or 'aoti', got {self.program!r}",
                               reason="bad_option")
        self._lock = threading.Lock()
        self._pool = None  # this backend's CUDA-graph memory pool, made at the first capture
        self._graphs: dict[Any, tuple[Any, Any]] = {}  # batch / frames / program key -> (CUDAGraph, static output)
        self._eager_passes: dict[Any, int] = {}
        self._frames: dict[tuple[str, int, int], tuple[Any, Any, Any]] = {}  # (input, H, W) -> pinned, view, device
        self._stagers = None  # threads that stage large batches into pinned memory
        self._preparers: dict[str, Any] = {}
        self._sessions = None  # policy programs: graph name -> session (backends/program_torch.py)
        self._program_buffers: dict[str, tuple[Any, Any, Any]] = {}  # name -> pinned, view, device
        self.module = None
        self.program_file = ""
        self.last_device_ms = float("nan")
        return torch

    def _compiled(self, module):
        """``module`` through torch.compile when ``extra["compile"]`` asks for it (static shapes: one
        compiled program per batch size, like the graphs), else ``module`` itself."""
        if not self.compile_mode:
            return module
        return self._torch.compile(module, mode=self.compile_mode, dynamic=False, fullgraph=True)

    def _allocate_staging(self) -> None:
        """Pinned host buffers and device buffers for every input and the output, at max_batch."""
        from vla_accel.core.spec import input_signature

        torch, spec, b = self._torch, self.spec, self.max_batch
        self.host_inputs = {}
        self.device_inputs = {}
        for name, (shape, np_dtype) in input_signature(spec).items():
            dtype = torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype
            self.host_inputs[name] = torch.empty((b, *shape), dtype=dtype, pin_memory=True)
            self.device_inputs[name] = torch.zeros((b, *shape), dtype=dtype, device=self.device)
        # A valid token mask in the static buffers, so eager warm-up before the first frame is well defined.
        mask = getattr(spec.instruction, "mask_input", None)
        if mask in self.device_inputs:
            self.device_inputs[mask].fill_(1)
        self.host_input_views = {name: t.numpy() for name, t in self.host_inputs.items()}
        self._allocate_output_staging()

    def _allocate_output_staging(self) -> None:
        torch, spec = self._torch, self.spec
        out_shape = (self.max_batch, spec.action.steps, spec.action.dims)
        self.host_output = torch.empty(out_shape, dtype=torch.float32, pin_memory=True)
        self.host_output_view = self.host_output.numpy()
        self.h2d_done = torch.cuda.Event()
        # Timed events around the enqueued program: the device time of the last call.
        self.compute_start = torch.cuda.Event(enable_timing=True)
        self.compute_done = torch.cuda.Event(enable_timing=True)
        self.d2h_done = torch.cuda.Event()

    # --- run ------------------------------------------------------------------------------------
    def _run_model(self, batch: int):
        """The forward pass on the first ``batch`` rows of the static device inputs (fp32 output)."""
        args = [self.device_inputs[name][:batch] for name in self.spec.input_names]
        return self.forward(*args)

    def _capture(self, enqueue):
        """Capture ``enqueue()`` into a CUDA graph in this backend's own memory pool.

        cuBLAS keeps one workspace per (handle, stream) and a captured GEMM bakes its address in.
        Other CUDA-graph users in the process (torch.compile's graph trees) clear those workspaces,
        which frees the memory to whoever allocates next. So the workspaces are cleared before the
        capture (cuBLAS then allocates a fresh one inside this graph's pool, where nobody else
        allocates) and again after it (eager work never shares a workspace with the graph)."""
        torch = self._torch
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        _clear_blas_workspaces(torch)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=self.compute_stream):
            static_output = enqueue()
        _clear_blas_workspaces(torch)
        return graph, static_output

    def _compute(self, key, enqueue):
        """Enqueue the work named ``key`` on the compute stream (eager warm-up passes, then its
        captured graph); returns the device output tensor."""
        if not self.use_graphs:
            return enqueue()
        entry = self._graphs.get(key)
        if entry is None:
            passes = self._eager_passes.get(key, 0)
            if passes < _EAGER_WARMUP_PASSES:
                self._eager_passes[key] = passes + 1
                return enqueue()
            self.compute_stream.synchronize()
            entry = self._graphs[key] = self._capture(enqueue)
            log.debug("cuda: captured a CUDA graph for %s", key)
        graph, static_output = entry
        graph.replay()
        return static_output

    def _stage(self, pinned: np.ndarray, array: np.ndarray) -> None:
        """Copy ``array`` into the pinned buffer; large batches in row slices on a few threads
        (numpy releases the GIL while copying), since one core copies only a few GB/s."""
        if array.nbytes < _THREADED_STAGING_BYTES or len(array) < 2:
            np.copyto(pinned, array)
            return
        if self._stagers is None:
            from concurrent.futures import ThreadPoolExecutor

            self._stagers = ThreadPoolExecutor(_STAGING_THREADS, thread_name_prefix="cuda-staging")
        bounds = np.linspace(0, len(array), min(_STAGING_THREADS, len(array)) + 1).astype(int)
        jobs = [self._stagers.submit(np.copyto, pinned[a:b], array[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        for job in jobs:
            job.result()

    def _run(self, batch: int, key, enqueue, uploads) -> np.ndarray:
        """Uploads on the copy stream ((pinned view, array, pinned tensor, device tensor): each array is
        staged, then its copy is enqueued, so that staging the next overlaps the transfer), the program
        on the compute stream, the actions back; returns a copy of the first ``batch`` output rows."""
        torch = self._torch
        try:
            with torch.cuda.stream(self.copy_stream):
                for view, array, host, device in uploads:
                    # Row blocks: the transfer of one block overlaps the staging of the next.
                    rows = max(1, _UPLOAD_BLOCK_BYTES // max(1, array[:1].nbytes))
                    for start in range(0, len(array), rows):
                        stop = min(len(array), start + rows)
                        self._stage(view[start:stop], array[start:stop])
                        device[start:stop].copy_(host[start:stop], non_blocking=True)
                self.h2d_done.record(self.copy_stream)
            self.compute_stream.wait_event(self.h2d_done)
            with torch.cuda.stream(self.compute_stream):
                self.compute_start.record(self.compute_stream)
                output = self._compute(key, enqueue)
                self.compute_done.record(self.compute_stream)
            self.copy_stream.wait_event(self.compute_done)
            with torch.cuda.stream(self.copy_stream):
                self.host_output[:batch].copy_(output, non_blocking=True)
                self.d2h_done.record(self.copy_stream)
            self.d2h_done.synchronize()
            self.last_device_ms = self.compute_start.elapsed_time(self.compute_done)
        except torch.cuda.OutOfMemoryError as exc:
            raise BackendError(f"cuda: out of GPU memory at batch {batch}: {exc}", reason="out_of_memory") from exc
        except RuntimeError as exc:  # CUDA launch / illegal address errors surface as RuntimeError
            raise BackendError(f"cuda: inference failed on {self.device}: {exc}", reason="device_error") from exc
        # The pinned buffer is reused by the next call: hand the caller its own copy.
        return self.host_output_view[:batch].copy()

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        batch, arrays = gather_inputs(self.spec, inputs, self.max_batch, self.name)
        with self._lock, torch.inference_mode(), torch.cuda.device(self.device):
            uploads = [(self.host_input_views[name][:batch], array, self.host_inputs[name][:batch],
                        self.device_inputs[name][:batch]) for name, array in arrays.items()]
            result = self._run(batch, batch, lambda: self._run_model(batch), uploads)
        return {self.spec.action.output: result}

    # --- policy programs ---------------------------------------------------------------------------
    def run_program(self, inputs: Mapping[str, np.ndarray], noise: np.ndarray) -> "np.ndarray | None":
        """A flow-matching chunk as one CUDA graph: the prefix graph, then every Euler step, on static
        device buffers (the loop arithmetic is the ProgramRunner's: core.program flow_times /
        euler_step). Other kinds, and graphs off, go through the ProgramRunner (eager on the GPU)."""
        program = self.spec.program
        if not self.use_graphs or self._sessions is None or program.kind != "flow_matching":
            return None
        torch = self._torch
        batch = int(noise.shape[0])
        if batch > self.max_batch:
            raise InputError(f"cuda: batch {batch} is larger than max_batch {self.max_batch}",
                             reason="batch_too_large")
        arrays = {**{k: np.ascontiguousarray(v) for k, v in inputs.items() if k != program.noise},
                  program.noise: np.ascontiguousarray(noise, dtype=np.float32)}
        if program.step_time_features is not None:
            # every step's time features (core.program.time_features), uploaded with the inputs: (B, steps, dim)
            from vla_accel.core.program import flow_times

            grid = flow_times(program.flow, program.steps)[:-1] * program.flow.time_scale
            per_step = np.stack([program.time_feed(t, batch) for t in grid], axis=1)
            arrays[_TIME_FEATURES] = np.ascontiguousarray(per_step)
        with self._lock, torch.inference_mode(), torch.cuda.device(self.device):
            uploads = []
            for name, array in arrays.items():
                pinned, view, device = self._program_buffer(name, array)
                uploads.append((view[:batch], array, pinned[:batch], device[:batch]))
            feeds = {name: self._program_buffers[name][2][:batch] for name in arrays}
            return self._run(batch, ("program", batch), lambda: self._flow_chunk(feeds, batch), uploads)

    def _program_buffer(self, name: str, array: np.ndarray):
        entry = self._program_buffers.get(name)
        shape = (self.max_batch, *array.shape[1:])
        if entry is None or tuple(entry[0].shape) != shape or entry[1].dtype != array.dtype:
            torch = self._torch
            dtype = torch.from_numpy(array[:0]).dtype
            pinned = torch.empty(shape, dtype=dtype, pin_memory=True)
            entry = (pinned, pinned.numpy(), torch.zeros(shape, dtype=dtype, device=self.device))
            self._program_buffers[name] = entry
            self._graphs = {k: v for k, v in self._graphs.items() if not (isinstance(k, tuple) and k[0] == "program")}
        return entry

    def _flow_chunk(self, feeds: Mapping[str, Any], batch: int):
        from vla_accel.core.program import euler_step, flow_times

        torch = self._torch
        program, flow = self.spec.program, self.spec.program.flow
        env: dict[str, Any] = dict(feeds)
        if program.prefix is not None:
            env.update(self._sessions[program.prefix.name].run({n: env[n] for n in program.prefix.inputs}))
        grid = flow_times(flow, program.steps)
        step = program.step
        x = env[program.noise]
        for i in range(program.steps):
            env[program.sample] = x
            if flow.time_features is not None:  # a device copy of the uploaded step's features
                env[program.time] = feeds[_TIME_FEATURES][:, i].contiguous()
            else:
                env[program.time] = torch.full((batch,), grid[i] * flow.time_scale,
                                               dtype=getattr(torch, flow.time_dtype), device=self.device)
            if program.step_index:
                env[program.step_index] = torch.full((batch,), i, dtype=torch.int64, device=self.device)
            v = self._sessions[step.name].run({n: env[n] for n in step.inputs})[program.prediction]
            x = euler_step(x, v, grid[i], grid[i + 1])
        return x

    # --- uint8 frames ------------------------------------------------------------------------------
    def infer_frames(self, frames: Mapping[str, Any], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Like ``infer``, but each camera input is given as its uint8 rgb frames (B, H, W, 3) of any
        size (or a list of HxWx3 frames of one size): copied as they are and resized /
        normalised on the device exactly as core.preprocess does on the CPU. ``inputs`` holds the
        other tensors (tokens, mask, state). A graph is captured per batch size and frame sizes."""
        if not self.loaded:
            raise BackendError("backend 'cuda' used before load()", reason="not_loaded")
        torch = self._torch
        batch, frame_arrays, arrays = self._gather_frames(frames, inputs)
        with self._lock, torch.inference_mode(), torch.cuda.device(self.device):
            uploads = []
            sources = []
            for cam in self.spec.cameras:
                array = frame_arrays[cam.input]
                pinned, view, device = self._frame_buffers(cam.input, array.shape[1], array.shape[2])
                uploads.append((view[:batch], array, pinned[:batch], device[:batch]))
                sources.append((cam, device[:batch]))
            for name, array in arrays.items():
                uploads.append((self.host_input_views[name][:batch], array, self.host_inputs[name][:batch],
                                self.device_inputs[name][:batch]))

            def enqueue():
                for cam, source in sources:
                    self._preparer(cam)(source, self.device_inputs[cam.input][:batch])
                return self._run_model(batch)

            key = ("frames", batch, tuple(tuple(src.shape[1:3]) for _, src in sources))
            self._calls += 1
            result = self._run(batch, key, enqueue, uploads)
        return {self.spec.action.output: result}

    def _preparer(self, cam):
        if cam.input not in self._preparers:
            from vla_accel.backends.cuda_images import DeviceImagePreparer

            self._preparers[cam.input] = DeviceImagePreparer(cam, self.device)
        return self._preparers[cam.input]

    def _frame_buffers(self, name: str, height: int, width: int):
        key = (name, int(height), int(width))
        if key not in self._frames:
            torch = self._torch
            if len(self._frames) >= _MAX_FRAME_SHAPES:
                raise InputError(f"cuda: more than {_MAX_FRAME_SHAPES} distinct camera frame sizes; resize frames "
                                 "to a few fixed sizes", reason="bad_input_shape")
            shape = (self.max_batch, int(height), int(width), 3)
            pinned = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            self._frames[key] = (pinned, pinned.numpy(), torch.empty(shape, dtype=torch.uint8, device=self.device))
        return self._frames[key]

    def _gather_frames(self, frames: Mapping[str, Any], inputs: Mapping[str, np.ndarray]):
        from vla_accel.core.spec import input_signature

        cams = {cam.input for cam in self.spec.cameras}
        missing = sorted(cams - set(frames))
        if missing:
            raise InputError(f"cuda: missing camera frames {missing}", reason="missing_input")
        frame_arrays = {}
        batch = None
        for name in sorted(cams):
            value = frames[name]
            array = np.stack(value) if isinstance(value, (list, tuple)) else np.asarray(value)
            if array.dtype != np.uint8 or array.ndim != 4 or array.shape[3] != 3 or min(array.shape[1:3]) < 1:
                raise InputError(f"cuda: frames for '{name}' must be uint8 (B, H, W, 3) rgb, got {array.dtype} "
                                 f"{array.shape}", reason="bad_input_shape")
            frame_arrays[name] = array
            batch = array.shape[0] if batch is None else batch
            if array.shape[0] != batch:
                raise InputError(f"cuda: frames for '{name}' have batch {array.shape[0]}, others {batch}",
                                 reason="bad_input_shape")
        signature = {k: v for k, v in input_signature(self.spec).items() if k not in cams}
        arrays = {}
        for name, (shape, dtype) in signature.items():
            if name not in inputs:
                raise InputError(f"cuda: missing input tensor '{name}'", reason="missing_input")
            array = np.asarray(inputs[name])
            if array.shape != (batch, *shape):
                raise InputError(f"cuda: input '{name}' has shape {array.shape}, expected {(batch, *shape)}",
                                 reason="bad_input_shape")
            arrays[name] = np.ascontiguousarray(array, dtype=dtype)
        if not batch:
            raise InputError("cuda: empty batch", reason="bad_input_shape")
        if batch > self.max_batch:
            raise InputError(f"cuda: batch {batch} is larger than max_batch {self.max_batch}",
                             reason="batch_too_large")
        return batch, frame_arrays, arrays

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
                "graphs_captured": sorted(k for k in self._graphs if isinstance(k, int)),
                "frame_graphs_captured": sorted(k[1] for k in self._graphs if not isinstance(k, int)),
                "gpu_layout": bool(self.module is not None and self.module.gpu_layout),
                "program": self.program_file or ("torch module" if self.compile_mode is None
                                                 else f"torch.compile {self.compile_mode}"),
                "last_device_ms": self.last_device_ms,
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
        self._frames.clear()
        self._program_buffers.clear()
        self._sessions = None
        self._pool = None
        if self._stagers is not None:
            self._stagers.shutdown(wait=True)
            self._stagers = None
        torch.cuda.empty_cache()
