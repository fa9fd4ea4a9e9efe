"""JPEG decoding at a reduced DCT scale (``jpeg_reduced_decode``): which reduction is chosen, that the
decoded frame still covers the model input, that the tensor the model sees keeps its shape and
moves only slightly, and that every report says which decode path ran. Fast: no ROS, no runtime."""
from __future__ import annotations

import io

import numpy as np
import pytest

from vla_accel.core.image import JPEG_REDUCTIONS, decode_compressed, decode_image, decode_path, jpeg_reduction
from vla_accel.core.preprocess import JPEG_REDUCED_DECODE_DEFAULT, Preprocessor
from vla_accel.core.spec import ModelSpec
from vla_accel.core.types import Observation, RawImage

simplejpeg = pytest.importorskip("simplejpeg", reason="missing: simplejpeg; install with pip install simplejpeg")


def _scene(width: int, height: int) -> np.ndarray:
    """A camera-like frame: smooth gradients, a few sharp-edged objects and mild sensor noise."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([40 + 150 * xx / width, 60 + 120 * yy / height, 90 + 60 * (1 - xx / width) * yy / height], axis=2)
    for k in range(4):
        y0, x0 = int(height * (0.1 + 0.2 * k)), int(width * (0.15 + 0.18 * k))
        img[y0 : y0 + height // 6, x0 : x0 + width // 7] = (230 - 40 * k, 60 + 30 * k, 30 + 50 * k)
    img += rng.normal(0, 2.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def jpeg_640x480() -> bytes:
    return simplejpeg.encode_jpeg(_scene(640, 480), quality=90, colorspace="RGB", colorsubsampling="420")


def _spec(height: int = 128, width: int = 128, resize: str = "stretch") -> ModelSpec:
    return ModelSpec.from_dict({
        "name": "jpeg-test",
        "cameras": [{"name": "primary", "input": "image", "height": height, "width": width, "resize": resize,
                     "normalize": "mean_std", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}],
        "instruction": {"max_tokens": 16},
        "action": {"output": "actions", "steps": 2, "dims": 2},
    })


def _tensor(pre: Preprocessor, data: bytes) -> np.ndarray:
    batch = pre.prepare([Observation(images={"primary": RawImage(data=data, encoding="jpeg")},
                                     instruction="pick the cup", stamp_ns=1)])
    assert not batch.rejected, batch.rejected
    return batch.inputs["image"][0].copy()


@pytest.mark.parametrize("size, min_size, expected", [
    ((480, 640), (128, 128), 2),  # 1/4 would be 120 rows: below 128
    ((480, 640), (120, 160), 4),
    ((480, 640), (60, 80), 8),
    ((480, 640), (224, 224), 2),
    ((480, 640), (241, 320), 1),  # even 1/2 is too short: full size
    ((1080, 1920), (224, 224), 4),
    ((720, 1280), (256, 256), 2),
    ((479, 641), (120, 161), 4),  # libjpeg rounds up: ceil(479/4) = 120, ceil(641/4) = 161
    ((480, 640), None, 1),
])
def test_reduction_is_the_largest_power_of_two_that_covers_the_input(size, min_size, expected):
    assert jpeg_reduction(*size, min_size) == expected


def test_reduction_always_covers_and_the_next_one_would_not():
    rng = np.random.default_rng(0)
    for _ in range(500):
        height, width = (int(v) for v in rng.integers(16, 4000, 2))
        min_h, min_w = (int(v) for v in rng.integers(1, 1000, 2))
        k = jpeg_reduction(height, width, (min_h, min_w))
        assert k in (1, *JPEG_REDUCTIONS)
        if k > 1:
            assert -(-height // k) >= min_h and -(-width // k) >= min_w
        if k < 8:
            bigger = 2 * k
            assert not (-(-height // bigger) >= min_h and -(-width // bigger) >= min_w)


@pytest.mark.parametrize("decoder", ["simplejpeg", "pillow"])
def test_decoded_size_is_the_power_of_two_scale(jpeg_640x480, decoder):
    if decoder == "pillow":
        pytest.importorskip("PIL", reason="missing: Pillow; install with pip install pillow")
        from vla_accel.core import image as image_module

        def decode(min_size):
            info: dict = {}
            return image_module._decode_pillow(jpeg_640x480, "jpeg", min_size, info), info
    else:
        def decode(min_size):
            info: dict = {}
            return decode_compressed(jpeg_640x480, "jpeg", min_size, info), info
    for min_size, shape, scale in (((128, 128), (240, 320, 3), 2), ((100, 150), (120, 160, 3), 4),
                                   ((60, 80), (60, 80, 3), 8), (None, (480, 640, 3), 1),
                                   # simplejpeg alone would take libjpeg's slow 5/8 scale (300x400) here
                                   ((256, 256), (480, 640, 3), 1)):
        out, info = decode(min_size)
        assert out.shape == shape, (min_size, out.shape)
        assert info["scale"] == scale and info["source"] == (480, 640)


def test_decode_path_names_what_ran(jpeg_640x480):
    info: dict = {}
    decode_image(RawImage(data=jpeg_640x480, encoding="jpeg"), (128, 128), info)
    assert decode_path(info) == "jpeg 640x480 -> 320x240 (DCT 1/2)"
    info = {}
    decode_image(RawImage(data=jpeg_640x480, encoding="jpeg"), None, info)
    assert decode_path(info) == "jpeg 640x480 (full)"


def test_default_is_full_decode_and_each_setting_counts_its_path(jpeg_640x480):
    assert JPEG_REDUCED_DECODE_DEFAULT is False
    spec = _spec()
    default = Preprocessor(spec)
    assert default.jpeg_reduced_decode is False and default.decode_mode == "full"
    _tensor(default, jpeg_640x480)
    assert default.decode_paths == {"jpeg 640x480 (full)": 1}
    reduced = Preprocessor(spec, jpeg_reduced_decode=True)
    _tensor(reduced, jpeg_640x480)
    _tensor(reduced, jpeg_640x480)
    assert reduced.decode_paths == {"jpeg 640x480 -> 320x240 (DCT 1/2)": 2}
    # raw frames are views, not decodes: nothing counted
    raw = Preprocessor(spec, jpeg_reduced_decode=True)
    raw.prepare([Observation(images={"primary": _scene(64, 48)}, instruction="pick the cup", stamp_ns=1)])
    assert raw.decode_paths == {}


@pytest.mark.parametrize("resize, size", [("stretch", (128, 128)), ("letterbox", (96, 128)),
                                          ("center_crop", (224, 224))])
def test_reduced_decode_keeps_the_tensor_shape_and_stays_close(jpeg_640x480, resize, size):
    spec = _spec(*size, resize=resize)
    full = _tensor(Preprocessor(spec, jpeg_reduced_decode=False), jpeg_640x480)
    reduced = _tensor(Preprocessor(spec, jpeg_reduced_decode=True), jpeg_640x480)
    assert full.shape == reduced.shape == (3, *size)
    assert np.isfinite(reduced).all()
    # mean_std units: 1 grey level is about 0.017. The DCT scaling averages pixels where the
    # bilinear resize of the full frame samples them, so sharp edges move by a few grey levels.
    diff = np.abs(full - reduced)
    assert diff.mean() < 0.03, diff.mean()  # < 2 grey levels on average
    assert diff.max() < 1.0, diff.max()
    # ...but it is a real change: the setting must not claim to be identical
    assert diff.max() > 0


def test_png_ignores_the_setting():
    pytest.importorskip("PIL", reason="missing: Pillow; install with pip install pillow")
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_scene(320, 240)).save(buf, format="PNG")
    pre = Preprocessor(_spec(64, 64), jpeg_reduced_decode=True)
    batch = pre.prepare([Observation(images={"primary": RawImage(data=buf.getvalue(), encoding="png")},
                                     instruction="pick the cup", stamp_ns=1)])
    assert not batch.rejected
    assert pre.decode_paths == {"png 320x240": 1}


def test_diagnostics_show_the_setting_and_the_paths():
    from vla_accel.runtime.status import OK, StatusReport, annotate_decode

    report = StatusReport("vla_accel: inference", OK, "ok", "torch@cpu", (("latency p50 (ms)", "5.00"),))
    out = annotate_decode(report, True, {"jpeg 640x480 -> 320x240 (DCT 1/2)": 7})
    assert out.value("jpeg decode").startswith("reduced")
    assert out.value("decoded: jpeg 640x480 -> 320x240 (DCT 1/2)") == "7"
    assert out.value("latency p50 (ms)") == "5.00"
    assert annotate_decode(report, False, {}).value("jpeg decode") == "full"


def test_runtime_config_and_node_parameter_carry_the_setting():
    from vla_accel.runtime.config import RuntimeConfig

    assert RuntimeConfig().jpeg_reduced_decode is JPEG_REDUCED_DECODE_DEFAULT
    assert RuntimeConfig.from_values({"jpeg_reduced_decode": True}).jpeg_reduced_decode is True


def test_sample_bag_with_a_jpeg_primary_camera(tmp_path):
    pytest.importorskip("rosbags", reason="missing: rosbags; install with pip install -r requirements/bags.txt")
    from vla_accel.bags.reader import FRAME, BagSource
    from vla_accel.bags.sample import CAMERA_JPEG_TOPIC, make_sample_bag
    from vla_accel.models import load_model

    manifest = make_sample_bag(tmp_path / "jpeg", frames=20, primary="jpeg", primary_size=(320, 240))
    assert manifest.counts[CAMERA_JPEG_TOPIC] == 20
    assert manifest.broken_frames == {"corrupt_compressed": 2, "unknown_encoding": 1}
    spec = load_model("tiny").spec
    with BagSource(manifest.path) as source:
        selection = source.select_topics(spec, (), None, None)
        assert selection.cameras["primary"] == CAMERA_JPEG_TOPIC
        frame = next(e for e in source.events(selection) if e.kind == FRAME and e.camera == "primary")
        assert decode_image(frame.image).shape == (240, 320, 3)


def test_replay_compares_both_decode_settings_side_by_side(tmp_path):
    pytest.importorskip("rosbags", reason="missing: rosbags; install with pip install -r requirements/bags.txt")
    pytest.importorskip("torch", reason="missing: torch; install with pip install -r requirements/torch.txt")
    from vla_accel.bags.replay import ReplayOptions, deviations, run_replay
    from vla_accel.bags.report import write_report
    from vla_accel.bags.sample import make_sample_bag

    bag = make_sample_bag(tmp_path / "jpeg", frames=6, broken=False, primary="jpeg").path
    options = ReplayOptions(backends=("torch",), bare_iterations=2, timing_rounds=1, progress=False,
                            jpeg_reduced_decode=(False, True))
    result = run_replay(bag, options, tmp_path / "out")
    labels = [run.label for run in result.runs]
    assert labels == ["torch@jpeg-full", "torch@jpeg-reduced"]
    full, reduced = result.runs
    assert full.decode_paths == {"jpeg 640x480 (full)": 6}
    assert reduced.decode_paths == {"jpeg 640x480 -> 320x240 (DCT 1/2)": 6}
    dev = deviations(result)["torch@jpeg-reduced"]
    assert dev.matched == 6 and 0 < dev.max_abs < 1e-2
    write_report(result, tmp_path / "out", deviations(result), [], plots=False)
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| JPEG decode |" in text and "reduced: jpeg 640x480 -> 320x240 (DCT 1/2) x6" in text
