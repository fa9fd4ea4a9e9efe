"""TensorRT: everything up to the TensorRT calls is real and tested here (option validation, the
optimisation profile, the engine cache key and its sidecar, the ONNX the engine is built from, the
int8 calibration batches); the engine build itself needs TensorRT + an NVIDIA GPU and skips naming
what is missing."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from vla_accel.backends.base import BackendOptions

from vla_accel.core.optional import module_available
from vla_accel.backends.registry import backend_class, create_backend
from vla_accel.backends.tensorrt_backend import (
    EngineCache,
    TensorRTSettings,
    calibration_batches,
    engine_cache_for,
    engine_cache_key,
    file_sha256,
    profile_shapes,
)
from vla_accel.errors import BackendError, BackendUnavailableError


def _settings(**extra) -> TensorRTSettings:
    precision = extra.pop("precision", "fp16")
    max_batch = extra.pop("max_batch", 8)
    return TensorRTSettings.from_options(BackendOptions(precision=precision, max_batch=max_batch, extra=extra))


def test_missing_tensorrt_fails_fast_with_install_hint(tiny_bundle):
    if backend_class("tensorrt").probe().ok:
        pytest.skip("tensorrt is installed here; the missing-library path cannot be exercised")
    backend = create_backend("tensorrt", tiny_bundle, BackendOptions(precision="fp16"))
    with pytest.raises(BackendUnavailableError) as info:
        backend.load()
    message = str(info.value)
    assert "tensorrt" in info.value.missing
    assert "nvidia-jetpack" in message and "pip install tensorrt" in message and "python3-libnvinfer" in message


def test_settings_defaults_and_validation():
    s = _settings()
    assert (s.min_batch, s.opt_batch, s.max_batch) == (1, 1, 8)
    assert s.workspace_mb == 1024 and s.dla_core is None and s.gpu_fallback is True
    bad = [
        dict(opt_batch=16),  # beyond max_batch
        dict(opt_batch=0),
        dict(workspace_mb="lots"),
        dict(dla_core=-1),
        dict(dla_core=0, precision="fp32"),  # DLA has no fp32
        dict(bogus=1),
    ]
    for extra in bad:
        with pytest.raises(BackendError) as info:
            _settings(**extra)
        assert info.value.reason == "bad_option", extra


def test_bad_options_fail_at_construction(tiny_bundle):
    with pytest.raises(BackendError):
        create_backend("tensorrt", tiny_bundle, BackendOptions(precision="fp32", extra={"dla_core": 0}))


def test_profile_covers_every_input_with_only_batch_varying(tiny_bundle):
    s = _settings(opt_batch=2, max_batch=4)
    shapes = profile_shapes(tiny_bundle.spec, s)
    assert set(shapes) == set(tiny_bundle.spec.input_names)
    cam = tiny_bundle.spec.cameras[0]
    assert shapes[cam.input] == ((1, 3, cam.height, cam.width), (2, 3, cam.height, cam.width), (4, 3, cam.height, cam.width))
    tokens = tiny_bundle.spec.instruction.max_tokens
    assert shapes[tiny_bundle.spec.instruction.input] == ((1, tokens), (2, tokens), (4, tokens))


def test_cache_key_changes_with_everything_that_changes_the_engine():
    base = _settings()
    key = engine_cache_key("abc", "10.3.0", "Orin sm_87", base)
    assert key == engine_cache_key("abc", "10.3.0", "Orin sm_87", base)
    variants = [
        engine_cache_key("abd", "10.3.0", "Orin sm_87", base),
        engine_cache_key("abc", "10.4.0", "Orin sm_87", base),
        engine_cache_key("abc", "10.3.0", "RTX 4090 sm_89", base),
        engine_cache_key("abc", "10.3.0", "Orin sm_87", _settings(precision="int8")),
        engine_cache_key("abc", "10.3.0", "Orin sm_87", _settings(dla_core=0)),
        engine_cache_key("abc", "10.3.0", "Orin sm_87", _settings(max_batch=4)),
        engine_cache_key("abc", "10.3.0", "Orin sm_87", _settings(opt_batch=4)),
    ]
    assert key not in variants and len(set(variants)) == len(variants)
    # force_rebuild is an action, not a property of the engine
    assert engine_cache_key("abc", "10.3.0", "Orin sm_87", _settings(force_rebuild=True)) == key


def test_engine_cache_store_load_and_incomplete_entries(tmp_path):
    cache = EngineCache(tmp_path / "tensorrt")
    assert cache.load("k1") is None
    engine_path = cache.store("k1", b"\x00serialized-engine", {"tensorrt": "10.3.0", "precision": "fp16"})
    assert engine_path.read_bytes() == b"\x00serialized-engine"
    assert cache.load("k1") == b"\x00serialized-engine"
    assert cache.metadata("k1")["precision"] == "fp16"
    # an engine whose sidecar is missing was never completely written: not used
    cache.paths("k1")[1].unlink()
    assert cache.load("k1") is None
    cache.discard("k1")
    assert not any(p.exists() for p in cache.paths("k1"))
    assert not [p for p in (tmp_path / "tensorrt").iterdir() if p.name.startswith(".")]  # no temp files left


def test_engine_cache_lives_next_to_the_exports_of_the_model(tiny_bundle):
    cache = engine_cache_for(tiny_bundle)
    assert cache.folder.parent == tiny_bundle.cache_dir / "exports" / tiny_bundle.content_hash()


def test_onnx_source_and_its_hash_are_real(tiny_bundle):
    if not module_available("onnx"):
        pytest.skip("onnx missing; install with pip install onnx onnxscript")
    path = tiny_bundle.export("onnx", progress=False)
    import onnx

    graph = onnx.load(str(path)).graph
    names = [i.name for i in graph.input]
    assert set(tiny_bundle.spec.input_names) <= set(names)
    assert [o.name for o in graph.output] == [tiny_bundle.spec.action.output]
    digest = file_sha256(path)
    assert len(digest) == 64 and digest == file_sha256(path)


def test_int8_calibration_batches_come_from_the_shared_preprocessing(tiny_bundle):
    batches = calibration_batches(tiny_bundle.spec, count=2, batch=3)
    assert len(batches) == 2
    for batch in batches:
        assert set(batch) == set(tiny_bundle.spec.input_names)
        image = batch[tiny_bundle.spec.cameras[0].input]
        assert image.shape == (3, *tiny_bundle.spec.cameras[0].shape) and image.dtype == np.float32
        # mean/std normalised camera-like frames, not noise: bounded by (0 - mean)/std .. (1 - mean)/std
        assert -2.2 < image.min() and image.max() < 2.7
        assert batch[tiny_bundle.spec.instruction.input].dtype == np.int32
        assert batch[tiny_bundle.spec.instruction.mask_input].sum() > 0


@pytest.mark.hardware
def test_engine_build_and_parity_on_gpu(tiny_bundle, tmp_path):
    if not backend_class("tensorrt").probe().ok:
        pytest.skip("TensorRT missing: tensorrt; install JetPack (Jetson) or pip install tensorrt-cu12 (x86 + NVIDIA GPU)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs an NVIDIA GPU: none visible to torch")
    from vla_accel.models.reference import load_reference

    reference = load_reference(tiny_bundle)
    options = BackendOptions(precision="fp32", max_batch=2)
    first = create_backend("tensorrt", tiny_bundle, options).load()
    out = first.infer(reference.inputs)["actions"]
    # TF32 / reordered GEMMs on GPUs: within 1e-3 of the fp32 CPU reference
    assert np.abs(out - reference.actions).max() <= 1e-3
    first.close()
    second = create_backend("tensorrt", tiny_bundle, dataclasses.replace(options)).load()
    assert second.device_info().detail["built_now"] is False  # the cached engine was reused
    engine = second.device_info().detail["engine"]
    second.close()
    with open(engine, "r+b") as handle:  # corrupt the cached engine: it must be rebuilt, not crash
        handle.write(b"garbage")
    third = create_backend("tensorrt", tiny_bundle, dataclasses.replace(options)).load()
    assert third.device_info().detail["built_now"] is True
    assert json.loads(open(engine.replace(".engine", ".json")).read())["precision"] == "fp32"
    third.close()
