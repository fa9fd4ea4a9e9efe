"""Camera frames resized and normalised on the device (the ``cuda`` backend's uint8 path).

A robot's camera gives uint8 HxWx3 frames. Normalising on the host and copying float32 tensors
moves 4x the bytes of the frame at the network's size (and far more work on the host); here the
uint8 frame is copied as it comes (one pinned, asynchronous copy) and the device does what
``core.preprocess`` does on the CPU, with the same conventions so that both give the same tensor:

* bilinear resize with half-pixel centres, source positions clamped to the frame (OpenCV's
  INTER_LINEAR, torch's ``align_corners=False``), no antialiasing, taps computed by the same formula;
* resize modes ``stretch``, ``letterbox`` (centred or at the top left as ``pad`` says, border 0 after
  normalisation) and ``center_crop``;
* the colour order of the tensor (``rgb`` / ``bgr`` from an rgb frame) and the normalisation
  (``mean_std``, ``minus_one_one``, ``zero_one``, ``none``), in NCHW or NHWC.

The per-source-size taps are built once on the host (numpy) and kept on the device, so a frame
costs a handful of gathers and element-wise kernels, which the ``cuda`` backend captures into the
same CUDA graph as the network. Runs on any torch device (the parity tests run it on the CPU).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.spec import CameraSpec


def _taps(src: int, dst: int, start: float, extent: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source index pairs and the weight of the second, per output position (core.preprocess's rule:
    x = start + (o + 0.5) * extent / dst - 0.5, clamped to [0, src - 1])."""
    pos = start + (np.arange(dst, dtype=np.float64) + 0.5) * (extent / dst) - 0.5
    pos = np.clip(pos, 0.0, src - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def normalisation(cam: "CameraSpec") -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (scale, bias) in the tensor's channel order: value = pixel * scale + bias."""
    if cam.normalize == "mean_std":
        std = np.asarray(cam.std, dtype=np.float64)
        return 1.0 / (255.0 * std), -np.asarray(cam.mean, dtype=np.float64) / std
    if cam.normalize == "minus_one_one":
        return np.full(3, 1.0 / 127.5), np.full(3, -1.0)
    if cam.normalize == "zero_one":
        return np.full(3, 1.0 / 255.0), np.zeros(3)
    return None


class _Plan:
    """Everything that depends on the source size, on the device."""

    def __init__(self, cam: "CameraSpec", height: int, width: int, device: Any):
        import torch

        out_h, out_w = cam.height, cam.width
        region_h, region_w, top, left = out_h, out_w, 0, 0
        src_y0, src_x0, extent_y, extent_x = 0.0, 0.0, float(height), float(width)
        if cam.resize == "letterbox":
            scale = min(out_h / height, out_w / width)
            region_h = max(1, min(out_h, int(round(height * scale))))
            region_w = max(1, min(out_w, int(round(width * scale))))
            if getattr(cam, "pad", "center") != "bottom_right":  # resize_with_pad keeps the image top left
                top, left = (out_h - region_h) // 2, (out_w - region_w) // 2
        elif cam.resize == "center_crop":
            scale = max(out_h / height, out_w / width)
            extent_y, extent_x = out_h / scale, out_w / scale
            src_y0, src_x0 = (height - extent_y) / 2.0, (width - extent_x) / 2.0
        y0, y1, wy = _taps(height, region_h, src_y0, extent_y)
        x0, x1, wx = _taps(width, region_w, src_x0, extent_x)
        as_long = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        self.y0, self.y1, self.x0, self.x1 = as_long(y0), as_long(y1), as_long(x0), as_long(x1)
        self.wy = torch.from_numpy(wy).to(device).view(1, -1, 1, 1)
        self.wx = torch.from_numpy(wx).to(device).view(1, 1, -1, 1)
        self.region = (slice(top, top + region_h), slice(left, left + region_w))
        self.bordered = (region_h, region_w) != (out_h, out_w)


class DeviceImagePreparer:
    """One camera: a batch of uint8 (B, H, W, 3) rgb frames on a torch device -> the camera's input
    tensor (its layout and dtype), written into ``out``."""

    def __init__(self, cam: "CameraSpec", device: Any):
        import torch

        self.cam = cam
        self.device = torch.device(device)
        self._plans: dict[tuple[int, int], _Plan] = {}
        self._channels = torch.tensor([2, 1, 0] if cam.color == "bgr" else [0, 1, 2], device=self.device)
        norm = normalisation(cam)
        if norm is None:
            self._scale = self._bias = None
        else:
            self._scale = torch.tensor(norm[0], dtype=torch.float32, device=self.device)
            self._bias = torch.tensor(norm[1], dtype=torch.float32, device=self.device)
        self._nchw = cam.layout == "NCHW"

    def plan(self, height: int, width: int) -> _Plan:
        key = (height, width)
        if key not in self._plans:
            self._plans[key] = _Plan(self.cam, height, width, self.device)
        return self._plans[key]

    def __call__(self, frames, out) -> None:
        """``frames`` (B, H, W, 3) uint8, ``out`` (B, *cam.shape) in the camera's dtype, same device."""
        import torch

        plan = self.plan(int(frames.shape[1]), int(frames.shape[2]))
        x = frames.to(torch.float32)
        if self.cam.color == "bgr":
            x = x.index_select(3, self._channels)
        rows = torch.lerp(x.index_select(1, plan.y0), x.index_select(1, plan.y1), plan.wy)
        img = torch.lerp(rows.index_select(2, plan.x0), rows.index_select(2, plan.x1), plan.wx)  # (B, h, w, 3)
        if self._scale is not None:
            img = torch.addcmul(self._bias, img, self._scale)
        if out.dtype == torch.uint8:
            img = img.round_().clamp_(0, 255)
        if self._nchw:
            img = img.permute(0, 3, 1, 2)
            if plan.bordered:
                out.zero_()
            out[:, :, plan.region[0], plan.region[1]].copy_(img)
        else:
            if plan.bordered:
                out.zero_()
            out[:, plan.region[0], plan.region[1], :].copy_(img)
