"""Camera frame decoding: ``RawImage`` (or an array) -> HxWx3 uint8 RGB array.

Raw frames are returned as numpy VIEWS over the message buffer, never copies: the row padding of
``step`` becomes the row stride, bgr8 becomes a view with a negative channel stride, rgba8/bgra8
slice the alpha channel away, mono8 is broadcast over three channels with a zero stride. The
preprocessor gathers pixels from whatever strides it gets, so no frame is ever copied whole.
Compressed frames (JPEG, PNG) are decoded (simplejpeg for JPEG when importable, else Pillow;
Pillow for PNG); decoders are imported lazily, on the first compressed frame. Given ``min_size``,
a JPEG is decoded at a reduced scale in the DCT domain (libjpeg's scaled IDCT): the largest
power-of-two reduction (1/2, 1/4, 1/8, see ``jpeg_reduction``) whose decoded size still covers
``min_size`` on both axes, so the resize that follows only downsamples. Only power-of-two scales are
used: libjpeg-turbo's other M/8 scales (5/8, 3/8 ...) take a slow generic IDCT path and decoded a
640x480 frame slower than at full size (1.8 ms against 0.7 ms here). Reduced decoding changes
pixel values slightly against full decode + resize (the DCT scaling averages pixels), so callers
choose it (the ``jpeg_reduced_decode`` setting) and say which path ran (``out_info``).

Every malformed frame raises ``ImageError`` with a ``reason``: unknown_encoding, step_mismatch,
size_mismatch, truncated, corrupt_compressed, empty_image (missing_camera is raised by the
preprocessor). The view shares memory with the input: the caller must keep the input alive and
unchanged until the frame has been preprocessed (the ROS message object does this naturally).
"""
from __future__ import annotations

import io

import numpy as np

from vla_accel.core.types import RawImage
from vla_accel.errors import ImageError

# Raw encodings (sensor_msgs/image_encodings names) and compressed formats accepted.
RAW_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
COMPRESSED_ENCODINGS = ("jpeg", "png")
SUPPORTED_ENCODINGS = RAW_ENCODINGS + COMPRESSED_ENCODINGS
# Larger sides than this are rejected as corrupt headers rather than attempted (memory safety).
MAX_IMAGE_SIDE = 16384
# DCT-domain reductions libjpeg decodes with its fast scaled IDCTs, largest first.
JPEG_REDUCTIONS = (8, 4, 2)

# encoding -> (bytes per pixel, channel indices producing R, G, B as a slice, or None for mono)
_RAW_LAYOUT: dict[str, tuple[int, slice | None]] = {
    "rgb8": (3, slice(0, 3, 1)),
    "bgr8": (3, slice(2, None, -1)),
    "rgba8": (4, slice(0, 3, 1)),
    "bgra8": (4, slice(2, None, -1)),
    "mono8": (1, None),
}


def _supported_message() -> str:
    return f"supported encodings: {', '.join(SUPPORTED_ENCODINGS)}"


def normalize_encoding(encoding: str) -> str:
    """Map an encoding or a sensor_msgs/CompressedImage ``format`` string to a canonical name.

    CompressedImage formats look like ``"jpeg"``, ``"png"`` or ``"rgb8; jpeg compressed bgr8"``
    (image_transport); the codec word decides. Raw encodings are case-insensitive here.
    """
    text = str(encoding).strip().lower()
    if text in _RAW_LAYOUT:
        return text
    if ";" in text or " " in text:
        words = text.replace(";", " ").split()
        for word in words:
            if word in ("jpeg", "jpg"):
                return "jpeg"
            if word == "png":
                return "png"
    if text in ("jpeg", "jpg"):
        return "jpeg"
    return text


def _byte_view(data: object) -> np.ndarray:
    """A 1-D uint8 view over any buffer (bytes, bytearray, memoryview, array.array, ndarray)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ImageError(
                f"image data array must be uint8, got {data.dtype}; {_supported_message()}",
                reason="unknown_encoding",
            )
        if not data.flags.c_contiguous:
            # A non-contiguous raw buffer has no meaningful 'step'; copying is the honest answer.
            data = np.ascontiguousarray(data)
        return data.reshape(-1)
    try:
        return np.frombuffer(data, dtype=np.uint8)  # type: ignore[call-overload]
    except (TypeError, ValueError) as exc:
        raise ImageError(
            f"image data must be a bytes-like buffer, got {type(data).__name__}: {exc}",
            reason="empty_image" if _is_empty(data) else "corrupt_compressed",
        ) from exc


def _is_empty(data: object) -> bool:
    try:
        return len(data) == 0  # type: ignore[arg-type]
    except TypeError:
        return data is None


def _check_side(height: int, width: int, what: str) -> None:
    if not (0 < height <= MAX_IMAGE_SIDE and 0 < width <= MAX_IMAGE_SIDE):
        raise ImageError(
            f"{what} size {width}x{height} is invalid: width and height must be between 1 and "
            f"{MAX_IMAGE_SIDE}",
            reason="size_mismatch",
        )


def check_array(image: np.ndarray) -> np.ndarray:
    """Validate an already-decoded image: HxWx3 uint8 RGB (any strides) or HxW uint8 (mono).

    Mono arrays are broadcast to three channels (a view). Returns the HxWx3 view.
    """
    if image.dtype != np.uint8:
        raise ImageError(
            f"decoded image arrays must be uint8 RGB, got dtype {image.dtype}", reason="unknown_encoding"
        )
    if image.size == 0:
        raise ImageError(f"image array is empty (shape {image.shape})", reason="empty_image")
    if image.ndim == 2:
        _check_side(image.shape[0], image.shape[1], "image array")
        return np.broadcast_to(image[:, :, None], (image.shape[0], image.shape[1], 3))
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(
            f"decoded image arrays must be HxWx3 (RGB) or HxW (mono), got shape {image.shape}",
            reason="size_mismatch",
        )
    _check_side(image.shape[0], image.shape[1], "image array")
    return image


def decode_raw(image: RawImage) -> np.ndarray:
    """Raw (uncompressed) frame -> HxWx3 uint8 RGB view over ``image.data`` (no copy)."""
    encoding = normalize_encoding(image.encoding)
    layout = _RAW_LAYOUT.get(encoding)
    if layout is None:
        raise ImageError(
            f"unsupported image encoding '{image.encoding}'"
            + (" (big-endian)" if image.is_bigendian else "")
            + f"; {_supported_message()}",
            reason="unknown_encoding",
        )
    if _is_empty(image.data):
        raise ImageError(
            f"{encoding} image {image.width}x{image.height} has no data", reason="empty_image"
        )
    try:
        height, width, step = int(image.height), int(image.width), int(image.step)
    except (TypeError, ValueError) as exc:
        raise ImageError(
            f"{encoding} image has non-integer geometry height={image.height!r} width={image.width!r} "
            f"step={image.step!r}",
            reason="size_mismatch",
        ) from exc
    _check_side(height, width, f"{encoding} image")
    channels, rgb = layout
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageError(
            f"{encoding} image {width}x{height}: step {step} is smaller than width*channels "
            f"= {row_bytes}",
            reason="step_mismatch",
        )
    buf = _byte_view(image.data)
    needed = step * height
    if buf.size < needed:
        raise ImageError(
            f"{encoding} image {width}x{height} step {step}: data has {buf.size} bytes, needs "
            f"step*height = {needed}",
            reason="truncated",
        )
    # The view: rows `step` bytes apart, pixels `channels` bytes apart, channels 1 byte apart.
    pixels = np.ndarray(
        (height, width, channels), dtype=np.uint8, buffer=buf, offset=0, strides=(step, channels, 1)
    )
    if rgb is None:
        return np.broadcast_to(pixels, (height, width, 3))
    return pixels[:, :, rgb]


def jpeg_reduction(height: int, width: int, min_size: tuple[int, int] | None) -> int:
    """The DCT-domain reduction (1, 2, 4 or 8) for a ``height`` x ``width`` JPEG: the largest whose
    decoded size, ceil(side / k) as libjpeg rounds it, still covers ``min_size`` = (min_height,
    min_width) on both axes; 1 (full size) without ``min_size`` or when even 1/2 would be too small."""
    if not min_size:
        return 1
    min_h, min_w = int(min_size[0]), int(min_size[1])
    for k in JPEG_REDUCTIONS:
        if -(-height // k) >= min_h and -(-width // k) >= min_w:
            return k
    return 1


def decode_path(info: dict) -> str:
    """A short name of the decode path an ``out_info`` describes, for reports and diagnostics:
    ``jpeg 640x480 -> 320x240 (DCT 1/2)``, ``jpeg 640x480 (full)``, ``png 64x64``."""
    encoding, (height, width) = info.get("encoding", "?"), info.get("source", (0, 0))
    scale = int(info.get("scale", 1))
    if encoding != "jpeg":
        return f"{encoding} {width}x{height}"
    if scale == 1:
        return f"jpeg {width}x{height} (full)"
    out_h, out_w = info.get("decoded", (0, 0))
    return f"jpeg {width}x{height} -> {out_w}x{out_h} (DCT 1/{scale})"


def decode_compressed(data: object, encoding: str, min_size: tuple[int, int] | None = None,
                      out_info: dict | None = None) -> np.ndarray:
    """JPEG or PNG bytes -> HxWx3 uint8 RGB array (a fresh array: decoding always allocates).

    ``min_size`` = (min_height, min_width): a JPEG is decoded reduced by ``jpeg_reduction`` (2, 4 or
    8, in the DCT domain) when the result still covers that size (PNG is always decoded at full
    size). ``out_info``, when given, receives ``encoding``, ``source`` (height, width), ``scale`` (the
    reduction used) and ``decoded`` (height, width).
    """
    encoding = normalize_encoding(encoding)
    if encoding not in COMPRESSED_ENCODINGS:
        raise ImageError(
            f"unsupported compressed format '{encoding}'; {_supported_message()}", reason="unknown_encoding"
        )
    if _is_empty(data):
        raise ImageError(f"{encoding} image has no data", reason="empty_image")
    info = out_info if out_info is not None else {}
    info["encoding"] = encoding
    decoded = _decode_jpeg_simplejpeg(data, min_size, info) if encoding == "jpeg" else None
    if decoded is None:
        decoded = _decode_pillow(data, encoding, min_size, info)
    info["decoded"] = decoded.shape[:2]
    return decoded


def _decode_jpeg_simplejpeg(data: object, min_size: tuple[int, int] | None = None,
                            info: dict | None = None) -> np.ndarray | None:
    """Decode with simplejpeg; None when simplejpeg is not installed (Pillow is used instead)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    buf = data if isinstance(data, (bytes, bytearray, memoryview, np.ndarray)) else _byte_view(data)
    info = info if info is not None else {}
    try:
        height, width, _colorspace, _subsampling = simplejpeg.decode_jpeg_header(buf)
        _check_side(height, width, "jpeg image")
        scale = jpeg_reduction(height, width, min_size)
        info["source"], info["scale"] = (height, width), scale
        if scale > 1:
            # simplejpeg takes the smallest libjpeg scale M/8 giving at least this size: with the
            # exact 1/k size and min_factor=k that is the power-of-two scale 1/k (see the module doc)
            return simplejpeg.decode_jpeg(buf, colorspace="RGB", min_height=-(-height // scale),
                                          min_width=-(-width // scale), min_factor=scale)
        return simplejpeg.decode_jpeg(buf, colorspace="RGB")
    except ValueError as exc:
        raise ImageError(f"jpeg image does not decode: {exc}", reason="corrupt_compressed") from exc


def _decode_pillow(data: object, encoding: str, min_size: tuple[int, int] | None = None,
                   info: dict | None = None) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImageError(
            f"decoding {encoding} needs Pillow{' or simplejpeg' if encoding == 'jpeg' else ''}: "
            f"pip install pillow{' simplejpeg' if encoding == 'jpeg' else ''}",
            reason="unknown_encoding",
        ) from exc
    raw = bytes(data) if not isinstance(data, (bytes, bytearray)) else data
    try:
        with Image.open(io.BytesIO(raw)) as img:
            expected = "JPEG" if encoding == "jpeg" else "PNG"
            if img.format != expected:
                raise ImageError(
                    f"data declared as {encoding} is {img.format or 'unknown'}", reason="corrupt_compressed"
                )
            width, height = img.size
            _check_side(height, width, f"{encoding} image")
            scale = jpeg_reduction(height, width, min_size) if encoding == "jpeg" else 1
            if info is not None:
                info["source"], info["scale"] = (height, width), scale
            if scale > 1:
                # draft picks the largest power-of-two scale with size // scale >= the request
                img.draft("RGB", (max(1, width // scale), max(1, height // scale)))
            rgb = img.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # UnidentifiedImageError and truncated-file errors are OSError subclasses.
        raise ImageError(f"{encoding} image does not decode: {exc}", reason="corrupt_compressed") from exc


def check_compressed(image: RawImage) -> RawImage:
    """Cheap checks of a JPEG / PNG frame without decoding it (microseconds, no pixel buffer): data
    present, the format's signature, its end marker near the end, and for JPEG (with simplejpeg)
    the header and the image size. Returns the frame for ``decode_image`` to decode later; raises
    ImageError (empty_image, corrupt_compressed, unknown_encoding, size_mismatch). A frame that
    passes can still fail to decode (damaged entropy data): the decoder says so then."""
    encoding = normalize_encoding(image.encoding)
    if encoding not in COMPRESSED_ENCODINGS:
        raise ImageError(
            f"unsupported compressed format '{encoding}'; {_supported_message()}", reason="unknown_encoding"
        )
    if _is_empty(image.data):
        raise ImageError(f"{encoding} image has no data", reason="empty_image")
    data = _byte_view(image.data)
    tail = bytes(data[-32:])
    if encoding == "jpeg":
        if bytes(data[:3]) != b"\xff\xd8\xff" or b"\xff\xd9" not in tail:
            raise ImageError("jpeg image lacks its start or end marker (truncated or not a JPEG)",
                             reason="corrupt_compressed")
        try:
            import simplejpeg
        except ImportError:
            return image
        try:
            height, width, _colorspace, _subsampling = simplejpeg.decode_jpeg_header(data)
        except ValueError as exc:
            raise ImageError(f"jpeg image does not decode: {exc}", reason="corrupt_compressed") from exc
        _check_side(height, width, "jpeg image")
        return image
    if bytes(data[:8]) != b"\x89PNG\r\n\x1a\n" or b"IEND" not in tail:
        raise ImageError("png image lacks its signature or IEND chunk (truncated or not a PNG)",
                         reason="corrupt_compressed")
    return image


def decode_image(image: RawImage | np.ndarray, min_size: tuple[int, int] | None = None,
                 out_info: dict | None = None) -> np.ndarray:
    """Decode one camera frame into an HxWx3 uint8 RGB array (a view for raw frames).

    Accepts a ``RawImage`` (raw encodings of RAW_ENCODINGS, or ``jpeg`` / ``png`` data, also
    CompressedImage-style format strings) or an already decoded HxWx3 uint8 RGB array.
    ``min_size`` (height, width) lets a JPEG be decoded at a reduced DCT scale (see above); raw
    frames and arrays are never rescaled here. ``out_info`` (compressed frames only) receives what
    ``decode_compressed`` says about the decode. Raises ImageError (see the module docstring).
    """
    if isinstance(image, np.ndarray):
        return check_array(image)
    if not isinstance(image, RawImage):
        raise ImageError(
            f"camera frame must be a RawImage or an HxWx3 uint8 array, got {type(image).__name__}",
            reason="unknown_encoding",
        )
    encoding = normalize_encoding(image.encoding)
    if encoding in COMPRESSED_ENCODINGS:
        return decode_compressed(image.data, encoding, min_size, out_info)
    return decode_raw(image)


def encode_raw(rgb: np.ndarray, encoding: str = "rgb8", row_padding: int = 0) -> RawImage:
    """Build a RawImage from an HxWx3 RGB uint8 array (synthetic cameras, tests, bag writers)."""
    rgb = check_array(np.asarray(rgb))
    height, width = rgb.shape[:2]
    encoding = normalize_encoding(encoding)
    if encoding not in _RAW_LAYOUT:
        raise ImageError(f"cannot encode to '{encoding}'; {_supported_message()}", reason="unknown_encoding")
    if encoding == "mono8":
        # ITU-R BT.601 luma, the usual rgb -> mono conversion.
        luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        pixels = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, :, None]
    else:
        order = [2, 1, 0] if encoding.startswith("bgr") else [0, 1, 2]
        pixels = rgb[:, :, order]
        if encoding.endswith("a8"):
            pixels = np.concatenate([pixels, np.full((height, width, 1), 255, np.uint8)], axis=2)
    channels = pixels.shape[2]
    step = width * channels + int(row_padding)
    buf = np.zeros((height, step), dtype=np.uint8)
    buf[:, : width * channels] = pixels.reshape(height, width * channels)
    return RawImage(data=buf.tobytes(), encoding=encoding, height=height, width=width, step=step)
