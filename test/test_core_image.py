"""core.image: every encoding (with row padding), the zero-copy property, every bad-image reason,
JPEG and PNG decoding."""
from __future__ import annotations

import array
import io

import numpy as np
import pytest

from vla_accel.core.image import (
    MAX_IMAGE_SIDE,
    SUPPORTED_ENCODINGS,
    decode_compressed,
    decode_image,
    encode_raw,
    normalize_encoding,
)
from vla_accel.core.types import RawImage
from vla_accel.errors import ImageError


@pytest.fixture(scope="module")
def rgb():
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def _raw(pixels: np.ndarray, encoding: str, padding: int) -> tuple[RawImage, bytearray]:
    """A RawImage over a bytearray laid out by hand (rows of width*channels + padding bytes)."""
    height, width, channels = pixels.shape
    step = width * channels + padding
    buf = bytearray(b"\xee" * (step * height))
    for y in range(height):
        buf[y * step : y * step + width * channels] = pixels[y].tobytes()
    return RawImage(data=buf, encoding=encoding, height=height, width=width, step=step), buf


@pytest.mark.parametrize("padding", [0, 3, 64])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_decode_to_rgb_views(rgb, encoding, padding):
    order = {"rgb8": [0, 1, 2], "bgr8": [2, 1, 0], "rgba8": [0, 1, 2], "bgra8": [2, 1, 0]}[encoding]
    pixels = rgb[:, :, order]
    if encoding.endswith("a8"):
        alpha = np.full(rgb.shape[:2] + (1,), 200, np.uint8)
        pixels = np.concatenate([pixels, alpha], axis=2)
    image, buf = _raw(pixels, encoding, padding)
    out = decode_image(image)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)
    # zero copy: the result is a view over the message buffer
    backing = np.frombuffer(buf, dtype=np.uint8)
    assert np.shares_memory(out, backing)
    buf[0 : 1] = bytes([(buf[0] + 1) % 256])  # writes through to the view
    first = out[0, 0, 0] if encoding in ("rgb8", "rgba8") else out[0, 0, 2]
    assert first == (int(rgb[0, 0, 0] if encoding in ("rgb8", "rgba8") else rgb[0, 0, 2]) + 1) % 256


@pytest.mark.parametrize("padding", [0, 5])
def test_mono8_broadcasts_without_copy(padding):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    image, buf = _raw(gray[:, :, None], "mono8", padding)
    out = decode_image(image)
    assert out.shape == (4, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)
    assert np.shares_memory(out, np.frombuffer(buf, dtype=np.uint8))
    assert out.strides[2] == 0


@pytest.mark.parametrize("container", ["bytes", "memoryview", "array", "ndarray"])
def test_buffer_types_ros_may_hand_over(rgb, container):
    image = encode_raw(rgb, "rgb8", row_padding=2)
    data = image.data
    image.data = {
        "bytes": bytes(data),
        "memoryview": memoryview(bytes(data)),
        "array": array.array("B", data),  # rclpy's uint8[] fields
        "ndarray": np.frombuffer(data, dtype=np.uint8).copy(),
    }[container]
    np.testing.assert_array_equal(decode_image(image), rgb)


def test_decoded_arrays_pass_through(rgb):
    assert decode_image(rgb) is rgb
    view = rgb[:, ::-1]  # any strides are accepted as they are
    assert decode_image(view) is view
    mono = decode_image(rgb[:, :, 0])
    assert mono.shape == rgb.shape and np.shares_memory(mono, rgb)


def test_encode_raw_round_trips_each_encoding(rgb):
    for encoding in ("rgb8", "bgr8", "rgba8", "bgra8"):
        np.testing.assert_array_equal(decode_image(encode_raw(rgb, encoding, row_padding=1)), rgb)
    mono = decode_image(encode_raw(rgb, "mono8"))
    expected = np.clip(np.rint(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)), 0, 255)
    np.testing.assert_array_equal(mono[:, :, 1], expected.astype(np.uint8))


def _reason(image) -> str:
    with pytest.raises(ImageError) as info:
        decode_image(image)
    return info.value.reason


def test_unknown_encodings_list_the_supported_ones(rgb):
    with pytest.raises(ImageError) as info:
        decode_image(RawImage(data=bytes(12), encoding="yuv422", height=2, width=2, step=4))
    assert info.value.reason == "unknown_encoding"
    for name in SUPPORTED_ENCODINGS:
        assert name in str(info.value)
    # 16-bit and big-endian data are not supported
    assert _reason(RawImage(data=bytes(24), encoding="rgb16", height=2, width=2, step=12, is_bigendian=True)) == (
        "unknown_encoding"
    )
    assert _reason(RawImage(data=bytes(8), encoding="mono16", height=2, width=2, step=4)) == "unknown_encoding"
    assert _reason(rgb.astype(np.float32)) == "unknown_encoding"
    assert _reason("not an image") == "unknown_encoding"


def test_bad_geometry_reasons():
    assert _reason(RawImage(data=bytes(12), encoding="rgb8", height=2, width=2, step=5)) == "step_mismatch"
    assert _reason(RawImage(data=bytes(12), encoding="rgb8", height=0, width=2, step=6)) == "size_mismatch"
    assert _reason(RawImage(data=bytes(12), encoding="rgb8", height=-2, width=2, step=6)) == "size_mismatch"
    huge = MAX_IMAGE_SIDE + 1
    assert _reason(RawImage(data=bytes(12), encoding="mono8", height=1, width=huge, step=huge)) == "size_mismatch"
    assert _reason(RawImage(data=bytes(11), encoding="rgb8", height=2, width=2, step=6)) == "truncated"
    # padding of the last row counts: step*height bytes are required
    assert _reason(RawImage(data=bytes(14), encoding="rgb8", height=2, width=2, step=8)) == "truncated"
    assert _reason(RawImage(data=b"", encoding="rgb8", height=2, width=2, step=6)) == "empty_image"
    assert _reason(RawImage(data=b"", encoding="rgb8")) == "empty_image"
    assert _reason(np.zeros((0, 4, 3), np.uint8)) == "empty_image"
    assert _reason(np.zeros((4, 4, 4), np.uint8)) == "size_mismatch"


def _pil_bytes(rgb: np.ndarray, fmt: str, **kwargs) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format=fmt, **kwargs)
    return out.getvalue()


def test_png_decodes_losslessly(rgb):
    pytest.importorskip("PIL", reason="missing: Pillow; install with pip install pillow")
    data = _pil_bytes(rgb, "PNG")
    np.testing.assert_array_equal(decode_image(RawImage(data=data, encoding="png")), rgb)
    # image_transport style format string, and rclpy's array('B') payload
    image = RawImage(data=array.array("B", data), encoding="rgb8; png compressed rgb8")
    np.testing.assert_array_equal(decode_image(image), rgb)


def test_jpeg_decodes_close_to_source():
    pytest.importorskip("PIL", reason="missing: Pillow; install with pip install pillow")
    # a smooth image survives JPEG at quality 95 within a few grey levels
    yy, xx = np.mgrid[0:32, 0:48]
    smooth = np.stack([xx * 5, yy * 7, (xx + yy) * 3], axis=2).astype(np.uint8)
    data = _pil_bytes(smooth, "JPEG", quality=95)
    out = decode_image(RawImage(data=data, encoding="jpeg"))
    assert out.shape == smooth.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - smooth.astype(int)).mean() < 3.0
    # the Pillow path gives the same pixels as simplejpeg (both are libjpeg-turbo)
    from vla_accel.core import image as image_module

    np.testing.assert_array_equal(image_module._decode_pillow(data, "jpeg"), out)


def test_corrupt_compressed_images(rgb):
    pytest.importorskip("PIL", reason="missing: Pillow; install with pip install pillow")
    jpeg = _pil_bytes(rgb, "JPEG")
    png = _pil_bytes(rgb, "PNG")
    assert _reason(RawImage(data=b"\xff\xd8\xff garbage", encoding="jpeg")) == "corrupt_compressed"
    assert _reason(RawImage(data=jpeg[: len(jpeg) // 3], encoding="jpeg")) == "corrupt_compressed"
    assert _reason(RawImage(data=png[: len(png) // 2], encoding="png")) == "corrupt_compressed"
    assert _reason(RawImage(data=b"not a png at all", encoding="png")) == "corrupt_compressed"
    assert _reason(RawImage(data=jpeg, encoding="png")) == "corrupt_compressed"  # declared png, is jpeg
    assert _reason(RawImage(data=b"", encoding="jpeg")) == "empty_image"
    with pytest.raises(ImageError):
        decode_compressed(png, "tiff")


def test_normalize_encoding():
    assert normalize_encoding("RGB8") == "rgb8"
    assert normalize_encoding("jpg") == "jpeg"
    assert normalize_encoding("bgr8; jpeg compressed bgr8") == "jpeg"
    assert normalize_encoding("16UC1") == "16uc1"


def test_jpeg_min_size_decodes_at_a_reduced_dct_scale():
    pytest.importorskip("PIL", reason="missing: Pillow; install with pip install pillow")
    yy, xx = np.mgrid[0:256, 0:512]
    smooth = np.stack([xx // 2, yy, (xx + yy) // 3], axis=2).astype(np.uint8)
    data = _pil_bytes(smooth, "JPEG", quality=95)
    from vla_accel.core import image as image_module

    small = decode_image(RawImage(data=data, encoding="jpeg"), min_size=(64, 100))
    assert small.shape == (64, 128, 3)  # 1/4 scale: the smallest keeping >= 64 x 100
    assert image_module._decode_pillow(data, "jpeg", (64, 100)).shape == (64, 128, 3)
    # the scaled decode is the block average of the full one, within JPEG noise
    full = decode_image(RawImage(data=data, encoding="jpeg")).astype(np.float64)
    blocks = full.reshape(64, 4, 128, 4, 3).mean(axis=(1, 3))
    assert np.abs(small - blocks).mean() < 2.0
    # PNG ignores it
    png = _pil_bytes(smooth, "PNG")
    assert decode_image(RawImage(data=png, encoding="png"), min_size=(64, 100)).shape == smooth.shape


def test_non_integer_geometry_is_a_size_mismatch():
    assert _reason(RawImage(data=bytes(12), encoding="rgb8", height="two", width=2, step=6)) == "size_mismatch"
    assert _reason(RawImage(data=bytes(12), encoding="rgb8", height=None, width=2, step=6)) == "size_mismatch"


def test_random_malformed_frames_raise_image_error_or_decode():
    rng = np.random.default_rng(11)
    encodings = list(SUPPORTED_ENCODINGS) + ["rgb16", "", "BGR8"]
    for _ in range(400):
        height, width = (int(v) for v in rng.integers(-2, 20, size=2))
        step = int(rng.integers(-1, 80))
        data = rng.integers(0, 256, size=int(rng.integers(0, 1500)), dtype=np.uint8).tobytes()
        image = RawImage(data=data, encoding=str(rng.choice(encodings)), height=height, width=width, step=step)
        try:
            out = decode_image(image)
        except ImageError as err:
            assert err.reason in ("unknown_encoding", "step_mismatch", "size_mismatch", "truncated",
                                  "corrupt_compressed", "empty_image")
            continue
        assert out.shape == (height, width, 3) and out.dtype == np.uint8
