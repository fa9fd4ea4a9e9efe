"""Frames resized and normalised on the device (vla_accel/backends/cuda_images.py) against the CPU
preprocessing (core.preprocess), which every other backend uses.

The arithmetic is device-agnostic torch, so its parity runs here on the CPU for every resize mode,
colour order and layout; the cuda backend's ``infer_frames`` (pinned upload, the preparation captured
into the network's CUDA graph) is checked against ``infer`` on the GPU and skips without CUDA.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vla_accel.backends.cuda_images import DeviceImagePreparer
from vla_accel.core.preprocess import _CameraWriter
from vla_accel.core.spec import CameraSpec

torch = pytest.importorskip("torch")

# Max |difference| of normalised values: float32 sums in another order (values reach ~2.6 for mean_std).
TOLERANCE = 2e-5


def _frame(height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("resize", ["stretch", "letterbox", "letterbox-bottom_right", "center_crop"])
@pytest.mark.parametrize("color,layout,normalize", [("rgb", "NCHW", "mean_std"), ("bgr", "NHWC", "minus_one_one"),
                                                    ("rgb", "NHWC", "zero_one"), ("bgr", "NCHW", "none")])
@pytest.mark.parametrize("source", [(480, 640), (96, 72)], ids=["640x480", "72x96-upscale"])
def test_device_preparation_matches_cpu_preprocessing(resize, color, layout, normalize, source):
    resize, _, pad = resize.partition("-")
    cam = CameraSpec(name="c", input="image", height=56, width=80, resize=resize, normalize=normalize,
                     layout=layout, color=color, pad=pad or "center")
    frames = [_frame(*source, seed=s) for s in range(2)]
    expected = np.zeros((2, *cam.shape), dtype=np.float32)
    writer = _CameraWriter(cam)
    for i, frame in enumerate(frames):
        writer.write(frame, expected[i])
    got = torch.zeros((2, *cam.shape), dtype=torch.float32)
    DeviceImagePreparer(cam, "cpu")(torch.from_numpy(np.stack(frames)), got)
    assert np.max(np.abs(got.numpy() - expected)) < TOLERANCE * (255 if normalize == "none" else 1)


def test_uint8_tensor_is_rounded_like_the_cpu_path():
    cam = CameraSpec(name="c", input="image", height=32, width=48, normalize="none", dtype="uint8", layout="NHWC")
    frame = _frame(100, 150, seed=3)
    expected = np.zeros((1, *cam.shape), dtype=np.uint8)
    _CameraWriter(cam).write(frame, expected[0])
    got = torch.zeros((1, *cam.shape), dtype=torch.uint8)
    DeviceImagePreparer(cam, "cpu")(torch.from_numpy(frame[None]), got)
    assert np.max(np.abs(got.numpy().astype(int) - expected.astype(int))) <= 1


def _cuda_missing():
    from vla_accel.backends.cuda_backend import CudaBackend

    availability = CudaBackend.probe()
    if not availability.ok or not torch.cuda.is_available():
        return "cuda missing: a CUDA device and a CUDA build of torch (" + ", ".join(availability.missing) + ")"
    return None


@pytest.mark.hardware
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_infer_frames_matches_cpu_preprocessing(base_bundle, precision):
    reason = _cuda_missing()
    if reason:
        pytest.skip(reason)
    from vla_accel.backends.base import BackendOptions
    from vla_accel.core.spec import example_inputs
    from vla_accel.backends.cuda_backend import CudaBackend

    spec = base_bundle.spec
    batch = 3
    frames = {cam.input: np.stack([_frame(480, 640, seed=10 * i + k) for i in range(batch)])
              for k, cam in enumerate(spec.cameras)}
    inputs = example_inputs(spec, batch, seed=5)
    for cam in spec.cameras:  # the CPU path: the same frames through core.preprocess
        writer = _CameraWriter(cam)
        for i in range(batch):
            writer.write(frames[cam.input][i], inputs[cam.input][i])
    others = {name: inputs[name] for name in inputs if name not in frames}
    with CudaBackend(base_bundle, BackendOptions(precision=precision, max_batch=4)) as backend:
        for _ in range(5):  # eager passes, then the captured graph (preparation included)
            got = backend.infer_frames(frames, others)["actions"]
            want = backend.infer(inputs)["actions"]
        assert backend.device_info().detail["frame_graphs_captured"]
    assert np.max(np.abs(got - want)) < (2e-3 if precision == "fp32" else 3e-2)
