"""``opencl``: the reference VLA network on any OpenCL device, with this package's own kernels.

For FPGA boards (Intel FPGA .aocx, Xilinx .xclbin), Arm Mali GPUs and any other OpenCL 1.2 device.
The kernels live in ``opencl_kernels/reference_vla.cl`` (documented there); this module is the host
side: it reads the architecture from the spec and the weights from the safetensors file with
``safetensors.numpy`` (no torch at run time), uploads the weights once, allocates every activation
buffer once for ``options.max_batch``, and replays a launch plan (kernel objects whose arguments are
set once per batch size) for each frame.

Options:
  device   "" = first GPU, else first accelerator (FPGA), else first CPU device; "P:D" = platform P,
           device D (indices as listed by ``list_devices()``); anything else = the first device
           whose name contains that text (case-insensitive).
  extra    program_binary: path to a precompiled program (.aocx, .xclbin, or any binary the
           platform accepts) built offline from reference_vla.cl; tile: GEMM tile edge (default 16,
           8 where the device's work-group limit is below 256; must match an offline build).
  precision: fp32 only (parity with torch within 1e-3 on PoCL).

Compiled programs are cached on disk under ``<cache_dir>/opencl/`` keyed by a hash of the source,
build options, device name, driver version and platform version, so a restart skips the compiler
(seconds on PoCL, minutes on some embedded drivers).
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vla_accel.core.fileio import atomic_write_bytes
from vla_accel.backends.base import Availability, Backend, DeviceInfo, gather_inputs
from vla_accel.core.optional import module_available
from vla_accel.errors import BackendError, BackendUnavailableError, InputError, ModelFileError

log = logging.getLogger(__name__)

KERNEL_SOURCE = Path(__file__).with_name("opencl_kernels") / "reference_vla.cl"
ICD_VENDOR_DIRS = ("/etc/OpenCL/vendors",)
INSTALL_HINT = (
    "Install the pyopencl package (pip install pyopencl) and an OpenCL driver (ICD): on a PC "
    "'apt-get install -y pocl-opencl-icd ocl-icd-libopencl1' gives a CPU device; on NVIDIA the driver's "
    "libnvidia-opencl.so.1 plus /etc/OpenCL/vendors/nvidia.icd; on Mali the vendor libmali/libOpenCL "
    "with its .icd file; on FPGA boards the Intel FPGA runtime (aocl) or Xilinx XRT."
)

# Epilogue selectors of the `linear` kernel (ACT_* in reference_vla.cl).
ACT_NONE = 0
ACT_GELU_TANH = 1
ACT_TANH = 2

# attention_blocked geometry (QB and ATT_WG in reference_vla.cl): queries per work-group, work-items.
ATTENTION_QUERIES = 16
ATTENTION_WG = 64

_BINARY_SUFFIXES = {".aocx": "Intel FPGA", ".xclbin": "Xilinx (XRT)"}


def _icd_present() -> bool:
    if os.environ.get("OCL_ICD_VENDORS") or os.environ.get("OPENCL_VENDOR_PATH"):
        return True
    if module_available("pocl_binary_distribution"):  # pip install 'pyopencl[pocl]'
        return True
    for folder in ICD_VENDOR_DIRS:
        try:
            if any(name.endswith(".icd") for name in os.listdir(folder)):
                return True
        except OSError:
            continue
    return False


def list_devices() -> list[dict[str, Any]]:
    """Every OpenCL device visible here: index "P:D", platform, name, type, compute units."""
    import pyopencl as cl

    out = []
    for p_index, platform in enumerate(_platforms(cl)):
        for d_index, device in enumerate(platform.get_devices()):
            out.append(
                {
                    "index": f"{p_index}:{d_index}",
                    "platform": platform.name,
                    "name": device.name.strip(),
                    "type": cl.device_type.to_string(device.type),
                    "compute_units": device.max_compute_units,
                }
            )
    return out


def _platforms(cl) -> list:
    try:
        platforms = cl.get_platforms()
    except cl.LogicError as exc:  # clGetPlatformIDs -> PLATFORM_NOT_FOUND_KHR when no ICD is installed
        raise BackendUnavailableError("opencl", ["an OpenCL platform (ICD driver)"], INSTALL_HINT) from exc
    if not platforms:
        raise BackendUnavailableError("opencl", ["an OpenCL platform (ICD driver)"], INSTALL_HINT)
    return platforms


def select_device(cl, selector: str):
    """Resolve ``options.device`` to (platform, device); see the module docstring for the forms."""
    platforms = _platforms(cl)
    selector = (selector or "").strip()
    everything = [(p, d) for p in platforms for d in p.get_devices()]
    if not everything:
        raise BackendUnavailableError("opencl", ["an OpenCL device"], INSTALL_HINT)
    if not selector:
        for wanted in (cl.device_type.GPU, cl.device_type.ACCELERATOR, cl.device_type.CPU):
            for platform, device in everything:
                if device.type & wanted:
                    return platform, device
        return everything[0]
    listing = "; ".join(f"{d['index']} {d['name']} ({d['platform']})" for d in list_devices())
    if ":" in selector and all(part.strip().isdigit() for part in selector.split(":", 1)):
        p_index, d_index = (int(part) for part in selector.split(":", 1))
        if p_index >= len(platforms) or d_index >= len(platforms[p_index].get_devices()):
            raise BackendError(
                f"opencl: no device '{selector}'; devices here: {listing}", reason="unknown_device"
            )
        platform = platforms[p_index]
        return platform, platform.get_devices()[d_index]
    for platform, device in everything:
        if selector.lower() in device.name.lower():
            return platform, device
    raise BackendError(
        f"opencl: no device whose name contains '{selector}'; devices here: {listing}",
        reason="unknown_device",
    )


def _device_kind(cl, device) -> str:
    if device.type & cl.device_type.GPU:
        return "gpu"
    if device.type & cl.device_type.ACCELERATOR:
        return "fpga"
    return "cpu"


@dataclass
class _Launch:
    kernel: Any
    global_size: tuple[int, ...]
    local_size: tuple[int, ...] | None
    what: str


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def _pow2_at_most(value: int) -> int:
    p = 1
    while p * 2 <= value:
        p *= 2
    return p


class OpenCLBackend(Backend):
    name = "opencl"
    kind = "fpga"
    precisions = ("fp32",)
    description = "the reference network in this package's OpenCL kernels (FPGA, Mali, any OpenCL 1.2 device)"

    @classmethod
    def probe(cls) -> Availability:
        missing = []
        if not module_available("pyopencl"):
            missing.append("python package pyopencl")
        if not _icd_present():
            missing.append("an OpenCL ICD driver (no .icd file in /etc/OpenCL/vendors)")
        if missing:
            return Availability(False, tuple(missing), INSTALL_HINT)
        return Availability(True, detail="pyopencl and an OpenCL ICD are present")

    # --- load -------------------------------------------------------------------------------------
    def _load(self) -> None:
        import pyopencl as cl

        from vla_accel.models.architecture import MASK_BIAS, NetworkConfig

        self._cl = cl
        self._lock = threading.Lock()
        self.config = NetworkConfig.from_spec(self.spec)
        self._mask_bias = MASK_BIAS
        self.platform, self.device = select_device(cl, self.options.device)
        self.context = cl.Context([self.device])
        self.queue = cl.CommandQueue(self.context, self.device)
        self.max_batch = max(1, int(self.options.max_batch))
        max_wg = int(self.device.max_work_group_size)
        default_tile = 16 if max_wg >= 256 else 8
        self.tile = int(self.options.extra.get("tile", default_tile))
        if self.tile * self.tile > max_wg:
            raise BackendError(
                f"opencl: tile {self.tile} needs {self.tile ** 2} work-items per group; device "
                f"'{self.device.name}' allows {max_wg}",
                reason="bad_option",
            )
        self.wpt = int(self.options.extra.get("wpt", 4))
        blocked_local_bytes = 4 * (self.tile * self.wpt * self.tile + self.tile * (self.tile * self.wpt + 1))
        if self.wpt < 1 or blocked_local_bytes > int(self.device.local_mem_size):
            raise BackendError(
                f"opencl: wpt {self.wpt} with tile {self.tile} needs {blocked_local_bytes} bytes of local memory; "
                f"device '{self.device.name}' has {self.device.local_mem_size} (wpt must be >= 1)",
                reason="bad_option",
            )
        self.reduce_wg = _pow2_at_most(min(256, max_wg, max(1, self.config.hidden_dim)))
        self.attention_wg = _pow2_at_most(min(64, max_wg))
        self.program, self.program_origin = self._build_program()
        self._upload_weights()
        self._allocate_activations()
        self._plans: dict[int, list[_Launch]] = {}

    def _build_program(self):
        cl = self._cl
        source = KERNEL_SOURCE.read_text(encoding="utf-8")
        build_options = [f"-DTILE={self.tile}", f"-DWPT={self.wpt}", f"-DQB={ATTENTION_QUERIES}",
                         f"-DATT_WG={ATTENTION_WG}", "-cl-std=CL1.2"]
        binary_path = self.options.extra.get("program_binary")
        if binary_path:
            return self._load_program_binary(Path(binary_path), build_options), f"binary:{binary_path}"
        key_text = "\n".join(
            [
                source,
                " ".join(build_options),
                self.device.name,
                self.device.driver_version,
                self.platform.name,
                self.platform.version,
                cl.VERSION_TEXT,
            ]
        )
        key = hashlib.sha256(key_text.encode()).hexdigest()[:24]
        cache_file = self._cache_root() / "opencl" / f"reference_vla-{key}.bin"
        if cache_file.is_file():
            try:
                program = cl.Program(self.context, [self.device], [cache_file.read_bytes()])
                program.build(options=build_options)
                return program, "cache"
            except (cl.Error, RuntimeError) as exc:  # stale or foreign binary: rebuild from source
                log.warning("opencl: cached program %s unusable (%s); rebuilding", cache_file, exc)
        try:
            program = cl.Program(self.context, source).build(options=build_options)
        except cl.Error as exc:
            raise BackendError(
                f"opencl: building {KERNEL_SOURCE.name} for '{self.device.name}' failed: {exc}",
                reason="kernel_build_failed",
            ) from exc
        binaries = program.get_info(cl.program_info.BINARIES)
        if binaries and binaries[0]:
            try:
                atomic_write_bytes(cache_file, bytes(binaries[0]))  # a killed process never leaves half a binary
            except OSError as exc:  # the cache only saves compile time: run on without it
                log.warning("opencl: cannot cache the compiled program in %s (%s)", cache_file.parent, exc)
        return program, "source"

    def _load_program_binary(self, path: Path, build_options: list[str]):
        cl = self._cl
        if not path.is_file():
            raise ModelFileError(
                f"opencl: program binary {path} not found (options.extra['program_binary'])",
                reason="missing_program_binary",
            )
        vendor = _BINARY_SUFFIXES.get(path.suffix.lower(), "this platform")
        try:
            program = cl.Program(self.context, [self.device], [path.read_bytes()])
            program.build(options=build_options)
        except (cl.Error, RuntimeError) as exc:
            raise BackendError(
                f"opencl: platform '{self.platform.name}' device '{self.device.name}' rejected program binary "
                f"{path} ({exc}). A {vendor} binary must be compiled offline for this exact board from "
                f"{KERNEL_SOURCE} with -DTILE={self.tile} -DWPT={self.wpt} (Intel FPGA: aoc -board=<board> "
                f"-DTILE={self.tile} -DWPT={self.wpt} "
                f"reference_vla.cl; Xilinx: v++ -c/-l --platform <xpfm>), and loaded on that vendor's platform.",
                reason="bad_program_binary",
            ) from exc
        return program

    def _cache_root(self) -> Path:
        if self.options.cache_dir is not None:
            return Path(self.options.cache_dir)
        cache_dir = getattr(self.model, "cache_dir", None)
        if cache_dir is not None:
            return Path(cache_dir)
        return Path(os.environ.get("VLA_ACCEL_CACHE", Path.home() / ".cache" / "vla_accel"))

    def _upload_weights(self) -> None:
        cl = self._cl
        tensors = _numpy_weights(self.model, self.config)
        flags = cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR
        self.weights: dict[str, Any] = {}
        total = 0
        for name, array in tensors.items():
            array = np.ascontiguousarray(array, dtype=np.float32)
            if name.endswith("patch.weight"):
                array = array.reshape(array.shape[0], -1)  # conv [D, C, S, S] -> GEMM [D, C*S*S]
            self.weights[name] = cl.Buffer(self.context, flags, hostbuf=array)
            total += array.nbytes
        self.weight_bytes = total

    def _allocate_activations(self) -> None:
        cl = self._cl
        cfg, spec, b = self.config, self.spec, self.max_batch
        d, t = cfg.hidden_dim, cfg.num_tokens
        rw = cl.mem_flags.READ_WRITE

        def buffer(count: int, itemsize: int = 4):
            return cl.Buffer(self.context, rw, size=max(1, count) * itemsize)

        self.inputs = {cam.input: buffer(b * 3 * cam.height * cam.width) for cam in spec.cameras}
        self.inputs[spec.instruction.input] = buffer(b * cfg.max_tokens)
        self.inputs[spec.instruction.mask_input] = buffer(b * cfg.max_tokens)
        if spec.state is not None:
            self.inputs[spec.state.input] = buffer(b * cfg.state_dims)
        patch_floats = max(c.num_patches * c.channels * c.patch_size**2 for c in cfg.cameras)
        self.patches = buffer(b * patch_floats)
        self.x = buffer(b * t * d)  # the residual stream
        self.normed = buffer(b * t * d)
        self.qkv = buffer(b * t * 3 * d)
        self.attended = buffer(b * t * d)
        self.hidden = buffer(b * t * cfg.mlp_dim)
        self.key_bias_buf = buffer(b * t)
        self.final_normed = buffer(b * cfg.action_steps * d)
        self.actions = buffer(b * cfg.action_steps * cfg.action_dims)
        self.activation_bytes = 4 * (
            sum(b * 3 * c.height * c.width for c in cfg.cameras)
            + b * (2 * cfg.max_tokens + cfg.state_dims)
            + b * patch_floats
            + b * t * d * 6
            + b * t * cfg.mlp_dim
            + b * t
            + b * cfg.action_steps * (d + cfg.action_dims)
        )

    # --- launch plan ----------------------------------------------------------------------------
    def _kernel(self, name: str, *args):
        kernel = self._cl.Kernel(self.program, name)
        kernel.set_args(*args)
        return kernel

    def _linear_kernel_name(self, m: int, n: int) -> str:
        """`linear_blocked` when its BLOCK x BLOCK work-groups still give every compute unit at least
        two groups (register blocking then wins); `linear` for small GEMMs (batch 1 on a GPU), where
        more, smaller work-groups keep the device busy."""
        block = self.tile * self.wpt
        groups = -(-m // block) * -(-n // block)
        return "linear_blocked" if groups >= 2 * int(self.device.max_compute_units) else "linear"

    def _linear_geometry(self, m: int, n: int) -> tuple[tuple[int, int], tuple[int, int]]:
        if self._linear_kernel_name(m, n) == "linear_blocked":
            block = self.tile * self.wpt
            return (-(-n // block) * self.tile, -(-m // block) * self.tile), (self.tile, self.tile)
        return (_round_up(n, self.tile), _round_up(m, self.tile)), (self.tile, self.tile)

    def _linear(self, plan, what, a, a_map, w, bias, c, c_map, m, n, k, activation=ACT_NONE, accumulate=False):
        """One GEMM launch: a_map / c_map are (rows_per_group, group_stride, row_offset, leading_dim)."""
        i32 = np.int32
        kernel = self._kernel(
            self._linear_kernel_name(m, n),
            a, *(i32(v) for v in a_map),
            w, bias,
            c, *(i32(v) for v in c_map),
            i32(m), i32(n), i32(k), i32(activation), i32(1 if accumulate else 0),
        )
        plan.append(_Launch(kernel, *self._linear_geometry(m, n), what))

    def _layer_norm(self, plan, what, x, x_map, out, gamma, beta, rows):
        """Layer norm of ``rows`` rows of width D; x_map as in _linear (its leading dim must be D)."""
        cl, i32, wg = self._cl, np.int32, self.reduce_wg
        rows_per_group, group_stride, row_offset, leading_dim = x_map
        if leading_dim != self.config.hidden_dim:
            raise BackendError("layer_norm rows are contiguous rows of width hidden_dim", reason="bad_kernel_plan")
        kernel = self._kernel(
            "layer_norm",
            x, i32(rows_per_group), i32(group_stride), i32(row_offset),
            out, gamma, beta,
            i32(self.config.hidden_dim), np.float32(self.config.layer_norm_eps), cl.LocalMemory(4 * wg),
        )
        plan.append(_Launch(kernel, (wg, rows), (wg, 1), what))

    def _attention_local_floats(self) -> int:
        cfg = self.config
        lanes = ATTENTION_WG // ATTENTION_QUERIES
        return (ATTENTION_QUERIES * (cfg.head_dim + 1) + ATTENTION_QUERIES * cfg.num_tokens
                + 2 * ATTENTION_QUERIES * lanes + 2 * ATTENTION_QUERIES)

    def _attention_kernel_name(self) -> str:
        """`attention_blocked` (QB queries per work-group: each key/value row read once per QB
        queries) when its scores fit in local memory; `attention` (one query per group) otherwise."""
        fits = 4 * self._attention_local_floats() <= int(self.device.local_mem_size) - 1024
        wide_enough = int(self.device.max_work_group_size) >= ATTENTION_WG
        return "attention_blocked" if fits and wide_enough else "attention"

    def _attention(self, batch: int, what: str) -> _Launch:
        cl, cfg = self._cl, self.config
        i32, f32, lm = np.int32, np.float32, cl.LocalMemory
        t, d, dh = cfg.num_tokens, cfg.hidden_dim, cfg.head_dim
        common = (self.qkv, self.key_bias_buf, self.attended, i32(t), i32(d), i32(dh), f32(1.0 / np.sqrt(dh)))
        if self._attention_kernel_name() == "attention_blocked":
            qb, lanes = ATTENTION_QUERIES, ATTENTION_WG // ATTENTION_QUERIES
            kernel = self._kernel("attention_blocked", *common, lm(4 * qb * (dh + 1)), lm(4 * qb * t),
                                  lm(4 * 2 * qb * lanes), lm(4 * 2 * qb))
            blocks = -(-t // qb)
            return _Launch(kernel, (ATTENTION_WG * blocks, cfg.heads, batch), (ATTENTION_WG, 1, 1), what)
        wg = self.attention_wg
        kernel = self._kernel("attention", *common, lm(4 * t), lm(4 * wg), lm(4 * dh))
        return _Launch(kernel, (wg * t, cfg.heads, batch), (wg, 1, 1), what)

    def _build_plan(self, batch: int) -> list[_Launch]:
        """Every kernel launch of one forward pass at ``batch``, arguments bound once."""
        cfg, spec, w = self.config, self.spec, self.weights
        i32, f32 = np.int32, np.float32
        d, t = cfg.hidden_dim, cfg.num_tokens
        plan: list[_Launch] = []
        identity = lambda rows, width: (rows, 0, 0, width)  # noqa: E731 (a row map: no remapping)

        offset = 0
        for index, (cam, cam_spec) in enumerate(zip(cfg.cameras, spec.cameras)):
            patch_len = cam.channels * cam.patch_size**2
            rows = batch * cam.num_patches
            grid_w = cam.grid[1]
            im2col = self._kernel(
                "im2col_patches",
                self.inputs[cam_spec.input], self.patches,
                i32(cam.channels), i32(cam.height), i32(cam.width), i32(cam.patch_size), i32(grid_w),
                i32(cam.num_patches),
            )
            plan.append(_Launch(im2col, (patch_len, rows), None, f"camera {cam.name}: im2col"))
            prefix = f"cameras.{index}."
            self._linear(
                plan, f"camera {cam.name}: patch embedding",
                self.patches, identity(rows, patch_len), w[prefix + "patch.weight"], w[prefix + "patch.bias"],
                self.x, (cam.num_patches, t, offset, d), rows, d, patch_len,
            )
            positions = self._kernel(
                "add_positions", self.x, w[prefix + "position"], i32(t), i32(offset), i32(cam.num_patches), i32(d)
            )
            plan.append(_Launch(positions, (d, cam.num_patches, batch), None, f"camera {cam.name}: positions"))
            offset += cam.num_patches

        text_offset = offset
        embed = self._kernel(
            "embed_tokens",
            self.inputs[spec.instruction.input], self.inputs[spec.instruction.mask_input],
            w["text.embedding.weight"], w["text.position"], i32(cfg.vocab_size),
            self.x, i32(t), i32(text_offset), i32(cfg.max_tokens), i32(d),
        )
        plan.append(_Launch(embed, (d, cfg.max_tokens, batch), None, "instruction embedding"))
        offset += cfg.max_tokens

        if cfg.state_dims:
            self._linear(
                plan, "state projection",
                self.inputs[spec.state.input], identity(batch, cfg.state_dims),
                w["state_proj.weight"], w["state_proj.bias"],
                self.x, (1, t, offset, d), batch, d, cfg.state_dims,
            )
            offset += 1

        queries = self._kernel(
            "broadcast_rows", self.x, w["action_queries"], i32(t), i32(offset), i32(cfg.action_steps), i32(d)
        )
        plan.append(_Launch(queries, (d, cfg.action_steps, batch), None, "action queries"))
        query_offset = offset

        bias = self._kernel(
            "key_bias", self.inputs[spec.instruction.mask_input], self.key_bias_buf,
            i32(t), i32(text_offset), i32(cfg.max_tokens), f32(self._mask_bias),
        )
        plan.append(_Launch(bias, (t, batch), None, "key padding bias"))

        rows = batch * t
        seq = identity(rows, d)
        for layer in range(cfg.depth):
            p = f"blocks.{layer}."
            self._layer_norm(plan, f"block {layer}: norm1", self.x, seq, self.normed,
                             w[p + "norm1.weight"], w[p + "norm1.bias"], rows)
            self._linear(plan, f"block {layer}: qkv", self.normed, seq, w[p + "attn.qkv.weight"],
                         w[p + "attn.qkv.bias"], self.qkv, identity(rows, 3 * d), rows, 3 * d, d)
            plan.append(self._attention(batch, f"block {layer}: attention"))
            self._linear(plan, f"block {layer}: proj + residual", self.attended, seq, w[p + "attn.proj.weight"],
                         w[p + "attn.proj.bias"], self.x, seq, rows, d, d, accumulate=True)
            self._layer_norm(plan, f"block {layer}: norm2", self.x, seq, self.normed,
                             w[p + "norm2.weight"], w[p + "norm2.bias"], rows)
            self._linear(plan, f"block {layer}: fc1 + gelu", self.normed, seq, w[p + "mlp.fc1.weight"],
                         w[p + "mlp.fc1.bias"], self.hidden, identity(rows, cfg.mlp_dim), rows, cfg.mlp_dim, d,
                         activation=ACT_GELU_TANH)
            self._linear(plan, f"block {layer}: fc2 + residual", self.hidden, identity(rows, cfg.mlp_dim),
                         w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"], self.x, seq, rows, d, cfg.mlp_dim,
                         accumulate=True)

        steps = cfg.action_steps
        self._layer_norm(plan, "final norm (action queries)", self.x, (steps, t, query_offset, d),
                         self.final_normed, w["norm.weight"], w["norm.bias"], batch * steps)
        self._linear(plan, "head + tanh", self.final_normed, identity(batch * steps, d), w["head.weight"],
                     w["head.bias"], self.actions, identity(batch * steps, cfg.action_dims),
                     batch * steps, cfg.action_dims, d, activation=ACT_TANH)
        return plan

    # --- run ------------------------------------------------------------------------------------
    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cl = self._cl
        batch, arrays = gather_inputs(self.spec, inputs, self.max_batch, self.name)
        tokens = arrays[self.spec.instruction.input]
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise InputError(
                f"opencl: token ids must be in [0, {self.config.vocab_size}), got "
                f"[{tokens.min()}, {tokens.max()}]",
                reason="bad_tokens",
            )
        cfg = self.config
        out = np.empty((batch, cfg.action_steps, cfg.action_dims), dtype=np.float32)
        with self._lock:
            plan = self._plans.get(batch)
            if plan is None:
                plan = self._plans[batch] = self._build_plan(batch)
            try:
                for name, array in arrays.items():
                    cl.enqueue_copy(self.queue, self.inputs[name], array, is_blocking=False)
                for launch in plan:
                    cl.enqueue_nd_range_kernel(self.queue, launch.kernel, launch.global_size, launch.local_size)
                cl.enqueue_copy(self.queue, out, self.actions, is_blocking=True)
            except cl.Error as exc:
                raise BackendError(f"opencl: running on '{self.device.name}' failed: {exc}", reason="device_error") from exc
        return {self.spec.action.output: out}

    def profile(self, inputs: Mapping[str, np.ndarray], repeats: int = 3) -> dict[str, float]:
        """Device time per stage of one forward pass (ms, the median over ``repeats``), from OpenCL
        event profiling on a second queue: where the time goes on a given board. Stages are the
        launch descriptions without the block number ("qkv", "attention", ...)."""
        cl = self._cl
        batch, arrays = gather_inputs(self.spec, inputs, self.max_batch, self.name)
        queue = cl.CommandQueue(self.context, self.device,
                                properties=cl.command_queue_properties.PROFILING_ENABLE)
        samples: dict[str, list[float]] = {}
        with self._lock:
            if batch not in self._plans:
                self._plans[batch] = self._build_plan(batch)
            plan = self._plans[batch]
            for name, array in arrays.items():
                cl.enqueue_copy(queue, self.inputs[name], array, is_blocking=True)
            for _ in range(repeats):
                events = [(launch.what.split(": ")[-1],
                           cl.enqueue_nd_range_kernel(queue, launch.kernel, launch.global_size, launch.local_size))
                          for launch in plan]
                queue.finish()
                totals: dict[str, float] = {}
                for stage, event in events:
                    totals[stage] = totals.get(stage, 0.0) + (event.profile.end - event.profile.start) * 1e-6
                for stage, ms in totals.items():
                    samples.setdefault(stage, []).append(ms)
        return {stage: float(np.median(values)) for stage, values in samples.items()}

    def kernel_launches(self, batch: int = 1) -> list[str]:
        """What one forward pass launches, in order (for docs and debugging)."""
        with self._lock:
            if batch not in self._plans:
                self._plans[batch] = self._build_plan(batch)
            plan = self._plans[batch]
        return [launch.what for launch in plan]

    def _device_info(self) -> DeviceInfo:
        cl, dev = self._cl, self.device
        return DeviceInfo(
            backend=self.name,
            device=dev.name.strip(),
            kind=_device_kind(cl, dev),
            parallel_units=int(dev.max_compute_units),
            precision="fp32",
            runtime_version=f"{self.platform.version.strip()}; driver {dev.driver_version}; pyopencl {cl.VERSION_TEXT}",
            memory_bytes=int(dev.global_mem_size),
            detail={
                "platform": self.platform.name.strip(),
                "device_type": cl.device_type.to_string(dev.type),
                "compute_units": int(dev.max_compute_units),
                "global_memory_bytes": int(dev.global_mem_size),
                "local_memory_bytes": int(dev.local_mem_size),
                "max_work_group_size": int(dev.max_work_group_size),
                "program": self.program_origin,
                "tile": self.tile,
                "max_batch": self.max_batch,
                "weight_bytes": self.weight_bytes,
                "activation_bytes": self.activation_bytes,
            },
        )

    def _close(self) -> None:
        for buffer in [*self.weights.values(), *self.inputs.values()]:
            buffer.release()
        for buffer in (self.patches, self.x, self.normed, self.qkv, self.attended, self.hidden,
                       self.key_bias_buf, self.final_normed, self.actions):
            buffer.release()
        self._plans.clear()
        self.weights.clear()
        self.inputs.clear()


def _numpy_weights(bundle, config) -> dict[str, np.ndarray]:
    """The reference network's verified float32 weights (read with safetensors.numpy; no torch)."""
    from vla_accel.models.architecture import parameter_shapes

    if not getattr(bundle, "has_torch_network", True):
        raise ModelFileError(
            f"opencl: model '{bundle.name}' is a ready {bundle.spec.format} file; the opencl backend runs the "
            "reference network from safetensors weights only (format: safetensors)",
            reason="no_weights",
        )
    tensors = bundle.load_weights()
    expected = set(parameter_shapes(config))
    if set(tensors) != expected:
        raise ModelFileError(
            f"opencl: weights of '{bundle.name}' do not match the reference architecture "
            f"(missing {sorted(expected - set(tensors))[:5]})",
            reason="weights_mismatch",
        )
    return tensors
