"""Observations -> the named input tensors a backend takes (shared by every backend).

Per camera (ModelSpec ``cameras``): decode (a view for raw frames, see core.image), resize to the
camera's height x width, reorder colour (rgb/bgr), normalise, and write into the batch tensor in
its layout (NCHW or NHWC) and dtype (float32, float16, uint8). Then the instruction is validated
and tokenised (ids int32 (B, L), mask float32 (B, L)) and the robot state, if the spec has one,
is validated, normalised and copied (float32 (B, S)).

JPEG frames: with ``jpeg_reduced_decode`` (see JPEG_REDUCED_DECODE_DEFAULT) a JPEG is decoded in
the DCT domain at the largest power-of-two reduction whose size still covers the camera's input
size on both axes (core.image ``jpeg_reduction``; for every resize mode the resize then only
downsamples), else at full size. Reduced decoding is faster (640x480 -> 320x240 for a 128x128 input)
but moves pixel values slightly against full decode + resize, so it is a setting, and
``decode_paths`` counts the frames per decode path (``jpeg 640x480 -> 320x240 (DCT 1/2)``,
``jpeg 640x480 (full)``...) for reports and diagnostics.

Resizing is bilinear with half-pixel centres (the convention of OpenCV's INTER_LINEAR and torch's
``interpolate(mode="bilinear", align_corners=False)``), without antialiasing. For every
(source size, source strides) a *resize plan* is built once and cached: the byte offsets of the
four source pixels behind each output value and their weights. A frame is then resized by one
gather from the source buffer (``np.take`` with ``out=``) and a weighted sum into preallocated
scratch, so the cost depends on the output size only (a 1920x1080 frame costs the same as a
640x480 one) and no per-frame memory is allocated. Resize modes:

* ``stretch``: the whole frame is scaled to the output size (aspect ratio not kept);
* ``letterbox``: scaled to fit inside, aspect kept, centred; the border is 0 AFTER normalisation,
  i.e. the dataset mean colour for ``mean_std``, mid-grey for ``minus_one_one``, black for
  ``zero_one`` / ``none``;
* ``center_crop``: scaled to cover, aspect kept, the centre cut out.

Normalisation per tensor channel (``mean``/``std`` are listed in the tensor's channel order, i.e.
after the ``color`` reorder): ``mean_std`` (x/255 - mean)/std, ``minus_one_one`` x/127.5 - 1,
``zero_one`` x/255, ``none`` x (uint8 tensors require ``none``; values are rounded).

Bad observations never break a batch: each is dropped and reported in ``PreparedBatch.rejected``
with its InputError (ImageError missing_camera / ..., InstructionError ..., StateError
missing_state when the spec needs a state and none came, bad_state for the wrong size, a
non-numeric or a non-finite state). A missing state is rejected rather than zero-filled because a
policy fed a fake state would command the robot from a pose it is not in.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from vla_accel.core.buffers import BufferSet, make_strategy, MEMORY_STRATEGIES
from vla_accel.core.image import COMPRESSED_ENCODINGS, decode_image, decode_path, normalize_encoding
from vla_accel.core.tokenizer import load_tokenizer, validate_instruction
from vla_accel.core.types import Observation, RawImage
from vla_accel.errors import ConfigError, ImageError, InputError, StateError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.spec import CameraSpec, ModelSpec

_PLANS_PER_CAMERA = 8  # distinct (size, strides) source layouts remembered per camera
_TOKEN_CACHE_SIZE = 64  # distinct instructions remembered (robots repeat the same few)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_DECODE_PATHS = 16  # distinct decode paths counted (sizes rarely change; the rest go under "other")
# Decode JPEG frames at a reduced DCT scale covering the model input (see the module doc). Off by
# default: on the sample bag it moved the tiny model's actions by more than the fp32 parity
# tolerance (docs/bags.md, docs/measurements/cpu_replay_jpeg_threads1.json).
JPEG_REDUCED_DECODE_DEFAULT = False


@dataclass
class PreparedBatch:
    """The result of ``Preprocessor.prepare``.

    ``inputs``: input name -> array with ``size`` rows (views into reused buffers for the static
    and pool strategies: valid until the next prepare (static) or until ``release()`` (pool)).
    ``observations``: the accepted observations, row i of every input is observations[i].
    ``rejected``: (observation, InputError) for every dropped one, in arrival order.
    ``timings_ms``: ``preprocess`` (the whole call) and ``decode`` (image decoding part).
    ``started_ns``: time.monotonic_ns() when preparation began (for age_at_start).
    """

    inputs: dict[str, np.ndarray]
    observations: list[Observation]
    rejected: list[tuple[Observation, InputError]]
    timings_ms: dict[str, float] = field(default_factory=dict)
    started_ns: int = 0
    _release: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return len(self.observations)

    def release(self) -> None:
        """Give pooled buffers back (no-op for static/dynamic; safe to call twice)."""
        release, self._release = self._release, None
        if release is not None:
            release()


class _ResizePlan:
    """Gather offsets and bilinear weights for one (camera, source layout)."""

    __slots__ = ("offsets", "weights", "gathered", "weighted", "region", "pads", "scale", "bias")

    def __init__(self, cam: "CameraSpec", height: int, width: int, strides: tuple[int, int, int], base: int):
        out_h, out_w = cam.height, cam.width
        top = left = 0
        region_h, region_w = out_h, out_w
        src_y0, src_x0, extent_y, extent_x = 0.0, 0.0, float(height), float(width)
        if cam.resize == "letterbox":
            scale = min(out_h / height, out_w / width)
            region_h = max(1, min(out_h, int(round(height * scale))))
            region_w = max(1, min(out_w, int(round(width * scale))))
            if cam.pad == "top_left":  # padding above / left: the image sits at the bottom right
                top, left = out_h - region_h, out_w - region_w
            elif cam.pad != "bottom_right":  # resize_with_pad keeps the image at the top left
                top, left = (out_h - region_h) // 2, (out_w - region_w) // 2
        elif cam.resize == "center_crop":
            scale = max(out_h / height, out_w / width)
            extent_y, extent_x = out_h / scale, out_w / scale
            src_y0, src_x0 = (height - extent_y) / 2.0, (width - extent_x) / 2.0
        ys0, ys1, wy = _axis_taps(height, region_h, src_y0, extent_y)
        xs0, xs1, wx = _axis_taps(width, region_w, src_x0, extent_x)
        step_y, step_x, step_c = strides
        channels = np.array([2, 1, 0] if cam.color == "bgr" else [0, 1, 2], dtype=np.intp) * step_c
        rows = [ys0 * step_y, ys0 * step_y, ys1 * step_y, ys1 * step_y]
        cols = [xs0 * step_x, xs1 * step_x, xs0 * step_x, xs1 * step_x]
        row_w = [1 - wy, 1 - wy, wy, wy]
        col_w = [1 - wx, wx, 1 - wx, wx]
        nchw = cam.layout == "NCHW"
        if nchw:
            shape = (4, 3, region_h, region_w)
            offsets = np.empty(shape, dtype=np.intp)
            weights = np.empty((4, 1, region_h, region_w), dtype=np.float32)
            for k in range(4):
                offsets[k] = rows[k][None, :, None] + cols[k][None, None, :] + channels[:, None, None]
                weights[k, 0] = row_w[k][:, None] * col_w[k][None, :]
        else:
            shape = (4, region_h, region_w, 3)
            offsets = np.empty(shape, dtype=np.intp)
            # Weights repeated over the 3 channels: broadcasting along a length-3 innermost axis
            # makes numpy's inner loops very short (about 2x slower than this materialised copy).
            weights = np.empty(shape, dtype=np.float32)
            for k in range(4):
                offsets[k] = rows[k][:, None, None] + cols[k][None, :, None] + channels[None, None, :]
                weights[k] = (row_w[k][:, None] * col_w[k][None, :])[:, :, None]
        offsets -= base
        self.offsets = offsets
        self.weights = weights
        self.gathered = np.empty(shape, dtype=np.uint8)
        self.weighted = np.empty(shape, dtype=np.float32)
        # Where the resized image lands in the output slot, and the border bands to zero.
        if nchw:
            self.region = (slice(None), slice(top, top + region_h), slice(left, left + region_w))
            bands = [
                (slice(None), slice(0, top), slice(None)),
                (slice(None), slice(top + region_h, out_h), slice(None)),
                (slice(None), slice(top, top + region_h), slice(0, left)),
                (slice(None), slice(top, top + region_h), slice(left + region_w, out_w)),
            ]
        else:
            self.region = (slice(top, top + region_h), slice(left, left + region_w), slice(None))
            bands = [
                (slice(0, top), slice(None), slice(None)),
                (slice(top + region_h, out_h), slice(None), slice(None)),
                (slice(top, top + region_h), slice(0, left), slice(None)),
                (slice(top, top + region_h), slice(left + region_w, out_w), slice(None)),
            ]
        self.pads = [b for b, size in zip(bands, (top, out_h - top - region_h, left, out_w - left - region_w)) if size > 0]
        self.scale: np.ndarray | None = None  # normalisation, shaped to broadcast over the region
        self.bias: np.ndarray | None = None


def _axis_taps(src: int, dst: int, start: float, extent: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis: source index pairs (i0, i1) and the weight of i1, per output.

    Output pixel o samples the source at x = start + (o + 0.5) * extent / dst - 0.5 (half-pixel
    centres), clamped to [0, src - 1] like OpenCV's border replication.
    """
    pos = start + (np.arange(dst, dtype=np.float64) + 0.5) * (extent / dst) - 0.5
    pos = np.clip(pos, 0.0, src - 1)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, src - 1)
    w1 = (pos - i0).astype(np.float32)
    return i0, i1, w1


def _flat_source(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int], int]:
    """A 1-D uint8 view spanning every byte an HxWx3 (any strides) image touches.

    Returns (flat view, strides, base) where pixel (y, x, c) is flat[y*sy + x*sx + c*sc - base];
    negative strides (bgr views) and zero strides (mono broadcast) are handled, nothing is copied.
    """
    shape, strides = image.shape, image.strides
    base = sum((n - 1) * s for n, s in zip(shape, strides) if s < 0)
    top = sum((n - 1) * s for n, s in zip(shape, strides) if s > 0)
    corner = image[tuple(slice(n - 1, n) if s < 0 else slice(0, 1) for n, s in zip(shape, strides))]
    flat = np.lib.stride_tricks.as_strided(corner, shape=(top - base + 1,), strides=(1,), writeable=False)
    return flat, (strides[0], strides[1], strides[2]), base


class _CameraWriter:
    """Resizes + normalises one camera's frames into its slot of the batch tensor."""

    def __init__(self, cam: "CameraSpec"):
        self.cam = cam
        self._plans: dict[tuple, _ResizePlan] = {}
        self._nchw = cam.layout == "NCHW"
        if cam.normalize == "mean_std":
            std = np.asarray(cam.std, dtype=np.float64)
            scale = 1.0 / (255.0 * std)
            bias = -np.asarray(cam.mean, dtype=np.float64) / std
        elif cam.normalize == "minus_one_one":
            scale, bias = np.full(3, 1.0 / 127.5), np.full(3, -1.0)
        elif cam.normalize == "zero_one":
            scale, bias = np.full(3, 1.0 / 255.0), np.zeros(3)
        else:
            scale, bias = None, None
        # NCHW: (3, 1, 1) broadcasts along long rows. NHWC: a full (H, W, 3) copy, because
        # broadcasting a (3,) vector gives numpy length-3 inner loops (measured ~15x slower).
        self.scale = None if scale is None else self._channel_map(scale)
        self.bias = None if bias is None else self._channel_map(bias)
        # float16 / uint8 tensors are computed in float32 scratch, then cast into the slot.
        self.scratch = None if cam.dtype == "float32" else np.empty(cam.shape, dtype=np.float32)

    def _channel_map(self, values: np.ndarray) -> np.ndarray:
        values = values.astype(np.float32)
        if self._nchw:
            return values.reshape(3, 1, 1)
        return np.ascontiguousarray(np.broadcast_to(values, (self.cam.height, self.cam.width, 3)))

    def plan_for(self, image: np.ndarray) -> tuple[_ResizePlan, np.ndarray]:
        flat, strides, base = _flat_source(image)
        key = (image.shape[0], image.shape[1], strides, base)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _PLANS_PER_CAMERA:
                self._plans.clear()
            plan = self._plans[key] = _ResizePlan(self.cam, image.shape[0], image.shape[1], strides, base)
            if self.scale is not None:
                plan.scale = self.scale if self._nchw else self.scale[plan.region]
                plan.bias = self.bias if self._nchw else self.bias[plan.region]
        return plan, flat

    def write(self, image: np.ndarray, slot: np.ndarray) -> None:
        plan, flat = self.plan_for(image)
        target = slot if self.scratch is None else self.scratch
        np.take(flat, plan.offsets, out=plan.gathered, mode="clip")
        # uint8 -> float32 into the preallocated buffer first: a mixed-dtype multiply would make
        # numpy allocate a casting buffer on every call (measured: 34 KiB per frame at 128x128).
        np.copyto(plan.weighted, plan.gathered, casting="unsafe")
        np.multiply(plan.weighted, plan.weights, out=plan.weighted)
        region = target[plan.region]
        w = plan.weighted
        np.add(w[0], w[1], out=region)
        np.add(region, w[2], out=region)
        np.add(region, w[3], out=region)
        if plan.scale is not None:
            np.multiply(region, plan.scale, out=region)
            np.add(region, plan.bias, out=region)
        for band in plan.pads:
            target[band] = 0
        if self.scratch is not None:
            if slot.dtype == np.uint8:
                np.rint(self.scratch, out=self.scratch)
                np.clip(self.scratch, 0, 255, out=self.scratch)
            np.copyto(slot, self.scratch, casting="unsafe")


class Preprocessor:
    """Turns observations into backend inputs. ``memory`` is static | pool | dynamic (core.buffers).

    One Preprocessor can be used from several threads: decoding and validation run unlocked, the
    resize into the buffers is serialised by a lock (the resize scratch is shared). With ``pool``
    the batches it hands out can be in flight together; with ``static`` a batch is valid only
    until the next ``prepare``.
    """

    def __init__(self, spec: "ModelSpec", max_batch: int = 1, memory: str = "static", pool_size: int = 2,
                 tokenizer=None, jpeg_reduced_decode: bool | None = None):
        if memory not in MEMORY_STRATEGIES:
            raise ConfigError(f"memory must be one of {', '.join(MEMORY_STRATEGIES)}; got {memory!r}")
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        self.spec = spec
        self.max_batch = int(max_batch)
        self.memory = memory
        self.strategy = make_strategy(memory, spec, self.max_batch, pool_size)
        base_dir = spec.source.parent if spec.source is not None else None
        self._language = spec.instruction.enabled
        if tokenizer is None and self._language:
            tokenizer = load_tokenizer(spec.instruction, base_dir)
        self.tokenizer = tokenizer
        self._writers = [(cam, _CameraWriter(cam)) for cam in spec.cameras]
        self.jpeg_reduced_decode = (JPEG_REDUCED_DECODE_DEFAULT if jpeg_reduced_decode is None
                                    else bool(jpeg_reduced_decode))
        # per camera: the decode's least size, (height, width) of the input, or None (full decode)
        self._min_sizes = [(cam.height, cam.width) if self.jpeg_reduced_decode else None for cam in spec.cameras]
        # compressed frames decoded, per decode path (core.image.decode_path); raw frames are views
        self.decode_paths: dict[str, int] = {}
        self._camera_names = [cam.name for cam in spec.cameras]
        self._lock = threading.Lock()
        ins = spec.instruction
        self._token_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # Instructions longer than the model's context (max_tokens) are cut, as every VLA does; that
        # is counted (once per distinct instruction: tokens are cached) and logged, never silent.
        self.instructions_truncated = 0
        self.on_instruction_truncated: Callable[[str, int, int], None] | None = None
        self._tokens_name, self._mask_name = ins.input, ins.mask_input
        self._state = spec.state
        if spec.state is not None and spec.state.normalization == "mean_std":
            self._state_mean = np.asarray(spec.state.mean, dtype=np.float32)
            self._state_inv_std = (1.0 / np.asarray(spec.state.std, dtype=np.float64)).astype(np.float32)
        elif spec.state is not None and spec.state.normalization == "min_max":
            # 2 (x - low) / (high - low) - 1 == (x - (low + high) / 2) / ((high - low) / 2)
            low = np.asarray(spec.state.low, dtype=np.float64)
            high = np.asarray(spec.state.high, dtype=np.float64)
            self._state_mean = ((low + high) / 2.0).astype(np.float32)
            self._state_inv_std = (2.0 / (high - low)).astype(np.float32)
        else:
            self._state_mean = self._state_inv_std = None

    # --- validation (no writes) ---------------------------------------------------------------
    @property
    def decode_mode(self) -> str:
        """The JPEG decode setting in words (reports, diagnostics)."""
        return "reduced (DCT scale covering the input)" if self.jpeg_reduced_decode else "full"

    def decode_counts(self) -> dict[str, int]:
        """A copy of ``decode_paths`` (safe while other threads decode)."""
        with self._lock:
            return dict(self.decode_paths)

    def _count_decode(self, info: dict) -> None:
        key = decode_path(info)
        with self._lock:
            if key not in self.decode_paths and len(self.decode_paths) >= _DECODE_PATHS:
                key = "other"
            self.decode_paths[key] = self.decode_paths.get(key, 0) + 1

    def decode_ahead(self, obs: Observation) -> Observation:
        """``obs`` with its compressed camera frames already decoded (as ``prepare`` would decode them,
        counted in ``decode_paths`` the same way), for a reader that decodes the next frames while the
        backend runs (replay's read-ahead). Thread-safe: decoding is stateless and the counts are
        locked. A frame that fails to decode is left compressed, so ``prepare`` rejects it with its
        reason and counts the drop as it would have."""
        images = obs.images
        if not hasattr(images, "get"):
            return obs
        decoded = None
        for cam, min_size in zip(self.spec.cameras, self._min_sizes):
            frame = images.get(cam.name)
            if not (isinstance(frame, RawImage) and normalize_encoding(frame.encoding) in COMPRESSED_ENCODINGS):
                continue
            info: dict = {}
            try:
                array = decode_image(frame, min_size, info)
            except ImageError:
                continue
            self._count_decode(info)
            if decoded is None:
                decoded = dict(images)
            decoded[cam.name] = array
        return obs if decoded is None else dataclasses.replace(obs, images=decoded)

    def _decode_cameras(self, obs: Observation) -> list[np.ndarray]:
        images = obs.images
        decoded = []
        for (cam, _writer), min_size in zip(self._writers, self._min_sizes):
            frame = images.get(cam.name) if hasattr(images, "get") else None
            if frame is None:
                raise ImageError(
                    f"observation has no image for camera '{cam.name}'; the model needs cameras "
                    f"{self._camera_names}, got {sorted(images) if hasattr(images, 'keys') else images!r}",
                    reason="missing_camera",
                )
            if isinstance(frame, RawImage) and normalize_encoding(frame.encoding) in COMPRESSED_ENCODINGS:
                info: dict = {}
                decoded.append(decode_image(frame, min_size, info))
                self._count_decode(info)
            else:
                decoded.append(decode_image(frame))
        return decoded

    def _tokens(self, instruction: object) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(instruction, str):
            cached = self._token_cache.get(instruction)
            if cached is not None:
                return cached
        text = validate_instruction(instruction, self.spec)
        length = self.spec.instruction.max_tokens
        ids = np.empty(length, dtype=np.int32)
        mask = np.empty(length, dtype=np.float32)
        self.tokenizer.encode_into(text, ids, mask)
        needed = self.tokenizer.needed_tokens(text)
        if needed > length:
            self.instructions_truncated += 1
            if self.on_instruction_truncated is not None:
                self.on_instruction_truncated(text, needed, length)
        if len(self._token_cache) >= _TOKEN_CACHE_SIZE:
            self._token_cache.clear()
        self._token_cache[text] = (ids, mask)
        return ids, mask

    def _check_state(self, state: object) -> np.ndarray:
        """The observation's state as a numeric array of the right size, finite in float32."""
        spec = self._state
        if state is None:
            raise StateError(
                f"observation has no robot state; the model needs {spec.dims} values "
                f"({', '.join(spec.names) if spec.names else spec.input})",
                reason="missing_state",
            )
        values = state if isinstance(state, np.ndarray) else _as_array(state)
        if values.dtype.kind not in "biuf":
            raise StateError(f"robot state must be numeric, got dtype {values.dtype}", reason="bad_state")
        if values.size != spec.dims:
            raise StateError(
                f"robot state has {values.size} values (shape {values.shape}); the model needs {spec.dims}",
                reason="bad_state",
            )
        if values.dtype.kind == "f" and not (np.abs(values) <= _FLOAT32_MAX).all():
            bad = [i for i, v in enumerate(values.reshape(-1).tolist()) if not abs(v) <= _FLOAT32_MAX]
            raise StateError(
                f"robot state has non-finite values (or beyond float32 range) at indices {bad}",
                reason="bad_state",
            )
        return values

    def _write_state(self, values: np.ndarray, row: np.ndarray) -> None:
        np.copyto(row, values if values.shape == row.shape else values.reshape(row.shape), casting="unsafe")
        if self._state_mean is not None:
            np.subtract(row, self._state_mean, out=row)
            np.multiply(row, self._state_inv_std, out=row)

    # --- the hot path ---------------------------------------------------------------------------
    def prepare(self, observations: Sequence[Observation]) -> PreparedBatch:
        """Preprocess up to ``max_batch`` observations into one batch (see PreparedBatch).

        Two phases: every observation is decoded and validated first (no shared state touched,
        so several threads can decode at once); then the accepted ones are written into a buffer
        set, under the lock that guards the shared resize scratch.
        """
        count = len(observations)
        if count > self.max_batch:
            raise ConfigError(
                f"batch of {count} observations exceeds max_batch={self.max_batch}; split it "
                "(Engine.infer does) or build the Preprocessor with a larger max_batch"
            )
        started = time.monotonic_ns()
        accepted: list[Observation] = []
        rejected: list[tuple[Observation, InputError]] = []
        checked: list[tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray | None]] = []
        decode_ns = 0
        for obs in observations:
            try:
                if not isinstance(obs, Observation):
                    raise InputError(f"expected an Observation, got {type(obs).__name__}", reason="bad_observation")
                t0 = time.perf_counter_ns()
                frames = self._decode_cameras(obs)
                decode_ns += time.perf_counter_ns() - t0
                ids, mask = self._tokens(obs.instruction) if self._language else (None, None)
                state = self._check_state(obs.state) if self._state is not None else None
            except InputError as err:
                rejected.append((obs, err))
                continue
            accepted.append(obs)
            checked.append((frames, ids, mask, state))
        buffers, release = self.strategy.acquire(len(accepted))
        try:
            self._write_rows(checked, buffers)
        except BaseException:
            release()
            raise
        rows = len(accepted)
        inputs = {name: array[:rows] for name, array in buffers.items()}
        return PreparedBatch(
            inputs=inputs,
            observations=accepted,
            rejected=rejected,
            timings_ms={"preprocess": (time.monotonic_ns() - started) / 1e6, "decode": decode_ns / 1e6},
            started_ns=started,
            _release=release,
        )

    def _write_rows(self, checked, buffers: BufferSet) -> None:
        tokens_buf = buffers[self._tokens_name] if self._language else None
        mask_buf = buffers[self._mask_name] if self._language else None
        state_buf = buffers[self._state.input] if self._state is not None else None
        with self._lock:
            for row, (frames, _ids, _mask, _state) in enumerate(checked):
                for (cam, writer), frame in zip(self._writers, frames):
                    writer.write(frame, buffers[cam.input][row])
        for row, (_frames, ids, mask, state) in enumerate(checked):
            if tokens_buf is not None:
                np.copyto(tokens_buf[row], ids, casting="unsafe")
                np.copyto(mask_buf[row], mask, casting="unsafe")
            if state_buf is not None:
                self._write_state(state, state_buf[row])


def _as_array(state: object) -> np.ndarray:
    try:
        return np.asarray(state, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StateError(f"robot state is not a numeric vector: {exc}", reason="bad_state") from exc
