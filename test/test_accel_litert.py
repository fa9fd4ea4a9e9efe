"""LiteRT family: torch -> .tflite export (fp32 / fp16 / int8) parity against the committed torch
references, name-based tensor matching, batch handling, (de)quantisation, and actionable errors for
every delegate backend whose hardware is absent here (Edge TPU, GPU, Hexagon, QNN, external)."""
from __future__ import annotations

import ctypes.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from vla_accel.backends.base import BackendOptions

from vla_accel.core.optional import module_available

from vla_accel.core.spec import example_inputs
from vla_accel.backends.registry import backend_class, create_backend
from vla_accel.errors import BackendError, BackendUnavailableError, InputError, ModelFileError
from vla_accel.models.reference import TOLERANCES, inputs_digest, load_reference

REPO = Path(__file__).resolve().parents[1]
REPRESENTATIVE_REFERENCE = REPO / "test" / "data" / "reference" / "tiny_representative_fp32.npz"
# Max |a - a_ref| on normalised actions in [-1, 1] for LiteRT, measured on the tiny model (see
# docs/backends.md): fp32 1.2e-6, fp16 (weights cast to float16) 3.6e-4. Full-integer int8 with
# per-tensor min/max activation ranges, on the network designed for it (models/network.py), calibrated
# on generated scenes: see the measured figures in docs/backends.md. Calibration is deterministic, so
# these bounds are the targets, not margins for noise; a broken quantisation (a wrong scale or
# zero point) gives correlation near 0.
INT8_MAX_ABS = 0.05
INT8_MEAN_ABS = 0.015
INT8_MIN_CORRELATION = 0.99
# On the committed reference too, although its Gaussian-noise images lie outside the calibrated range.
INT8_REFERENCE_MAX_ABS = 0.05  # measured 0.039

HAVE_LITERT = module_available("ai_edge_litert") or module_available("tflite_runtime")
HAVE_CONVERTER = module_available("litert_torch") and module_available("ai_edge_quantizer")


def _require_converter():
    if not HAVE_LITERT:
        pytest.skip("LiteRT missing: ai-edge-litert; install with pip install ai-edge-litert")
    if not HAVE_CONVERTER:
        pytest.skip("tflite converter missing: litert-torch; install with pip install -r requirements/litert.txt")


@pytest.fixture(scope="module")
def tflite_backends(tiny_bundle):
    cache: dict = {}

    def get(precision: str, max_batch: int = 2):
        _require_converter()
        key = (precision, max_batch)
        if key not in cache:
            cache[key] = create_backend("tflite", tiny_bundle, BackendOptions(precision=precision, max_batch=max_batch)).load()
        return cache[key]

    yield get
    for backend in cache.values():
        backend.close()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tflite_parity_with_committed_reference(tflite_backends, tiny_bundle, precision):
    backend = tflite_backends(precision)
    reference = load_reference(tiny_bundle)
    actions = backend.infer(reference.inputs)[tiny_bundle.spec.action.output]
    assert actions.shape == reference.actions.shape and actions.dtype == np.float32
    diff = float(np.abs(actions - reference.actions).max())
    bound = INT8_REFERENCE_MAX_ABS if precision == "int8" else TOLERANCES[precision]
    print(f"tflite {precision} vs committed reference: max {diff_max(actions, reference.actions):.2e}")
    assert diff <= bound, f"tflite {precision} differs from torch by {diff:.2e}"
    if precision == "fp32":
        assert diff <= 1e-4


def diff_max(a, b) -> float:
    return float(np.abs(a - b).max())


def _representative_reference(bundle):
    from vla_accel.models.calibration_set import representative_inputs

    if not REPRESENTATIVE_REFERENCE.is_file():
        pytest.fail(f"{REPRESENTATIVE_REFERENCE} missing; regenerate with .venv/bin/python scripts/make_accel_reference.py")
    with np.load(REPRESENTATIVE_REFERENCE) as data:
        stored = {k: data[k] for k in data.files}
    assert str(stored["content_hash"]) == bundle.content_hash(), (
        "representative reference is stale; regenerate with .venv/bin/python scripts/make_accel_reference.py")
    batches = list(representative_inputs(bundle.spec, int(stored["batches"]), batch=int(stored["batch"]),
                                         seed=int(stored["seed"])))
    merged = {n: np.concatenate([b[n] for b in batches]) for n in bundle.spec.input_names}
    assert inputs_digest(merged) == str(stored["inputs_digest"]), (
        "representative inputs no longer regenerate identically; run scripts/make_accel_reference.py")
    return batches, stored["actions"]


def test_tflite_int8_parity_on_representative_frames(tflite_backends, tiny_bundle):
    backend = tflite_backends("int8")
    batches, expected = _representative_reference(tiny_bundle)
    out = np.concatenate([backend.infer(b)[tiny_bundle.spec.action.output] for b in batches])
    assert out.dtype == np.float32 and out.shape == expected.shape
    err = np.abs(out - expected)
    corr = float(np.corrcoef(out.ravel(), expected.ravel())[0, 1])
    print(f"int8 on representative frames: max {err.max():.4f} mean {err.mean():.4f} corr {corr:.4f}")
    assert err.max() <= INT8_MAX_ABS and err.mean() <= INT8_MEAN_ABS and corr >= INT8_MIN_CORRELATION, (
        f"int8: max {err.max():.3f} mean {err.mean():.3f} corr {corr:.3f}")
    info = backend.device_info()
    assert info.detail["quantisation"] == "int8" and info.precision == "int8"


def test_export_is_cached_with_sidecar_and_named_signature(tflite_backends, tiny_bundle):
    from ai_edge_litert.interpreter import Interpreter

    from vla_accel.models.export_tflite import export_tflite, tflite_path

    tflite_backends("fp32")
    path = export_tflite(tiny_bundle, "fp32", progress=False)
    assert path == tflite_path(tiny_bundle, "fp32", 1) and tiny_bundle.content_hash() in str(path)
    mtime = path.stat().st_mtime_ns
    assert export_tflite(tiny_bundle, "fp32", progress=False).stat().st_mtime_ns == mtime  # no re-export
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["precision"] == "fp32" and meta["batch"] == 1 and "litert-torch" in meta["converter"]
    signature = Interpreter(model_path=str(path)).get_signature_list()["serving_default"]
    assert sorted(signature["inputs"]) == sorted(tiny_bundle.spec.input_names)
    assert signature["outputs"] == [tiny_bundle.spec.action.output]
    # the bundle's generic export entry point reaches the same file
    assert tiny_bundle.export("tflite", precision="fp32", progress=False) == path


def test_int8_model_has_integer_io_and_is_dequantised_by_backend(tflite_backends, tiny_bundle):
    from ai_edge_litert.interpreter import Interpreter

    backend = tflite_backends("int8")
    path = backend.device_info().detail["model_files"][0]
    details = Interpreter(model_path=path).get_input_details()
    dtypes = {d["name"].replace("serving_default_", ""): d["dtype"] for d in details}
    assert dtypes[tiny_bundle.spec.cameras[0].input] == np.int8
    assert dtypes[tiny_bundle.spec.instruction.input] == np.int32  # token ids are never quantised
    out = backend.infer(example_inputs(tiny_bundle.spec, 1, seed=5))[tiny_bundle.spec.action.output]
    assert out.dtype == np.float32 and np.all(np.abs(out) <= 1.0 + 1e-6)


def test_batches_pad_to_the_smallest_export_and_larger_ones_fail(tflite_backends, tiny_bundle):
    backend = tflite_backends("fp32", max_batch=2)
    assert backend.device_info().detail["model_batches"] == [1, 2]
    torch_backend = create_backend("torch", tiny_bundle).load()
    single = example_inputs(tiny_bundle.spec, 1, seed=9)
    out = backend.infer(single)["actions"]
    assert out.shape[0] == 1
    assert np.abs(out - torch_backend.infer(single)["actions"]).max() <= 1e-4
    with pytest.raises(InputError) as info:
        backend.infer(example_inputs(tiny_bundle.spec, 3, seed=9))
    assert info.value.reason == "bad_batch" and "max_batch" in str(info.value)


def test_tensor_names_are_matched_by_name_and_mismatch_is_explained(tflite_backends, tiny_bundle, tmp_path):
    import dataclasses

    from vla_accel.models import ModelBundle
    from vla_accel.models.export_tflite import export_tflite

    tflite_backends("fp32")
    path = export_tflite(tiny_bundle, "fp32", progress=False)
    # The converter sorts inputs (image_primary, state, token_mask, tokens); the spec order differs,
    # so a positional feed would be wrong: the fp32 parity above already proves the name matching.
    renamed_instruction = dataclasses.replace(tiny_bundle.spec.instruction, input="token_ids")
    spec = dataclasses.replace(tiny_bundle.spec, instruction=renamed_instruction, format="tflite",
                               weights=str(path), source=None)
    user_model = ModelBundle(spec, name="renamed", cache_dir=tmp_path)
    with pytest.raises(ModelFileError) as info:
        create_backend("tflite", user_model).load()
    message = str(info.value)
    assert "token_ids" in message and "tokens" in message and info.value.reason == "tensor_name_mismatch"


def test_unsupported_precision_and_converter_errors(tiny_bundle):
    from vla_accel.models.export_tflite import export_tflite

    with pytest.raises(BackendError) as info:
        create_backend("tflite", tiny_bundle, BackendOptions(precision="bf16"))
    assert "fp32" in str(info.value)
    with pytest.raises(ModelFileError):
        export_tflite(tiny_bundle, "int4", progress=False)
    with pytest.raises(ModelFileError):
        export_tflite(tiny_bundle, "fp32", progress=False, batch=0)


def test_tensor_codec_round_trips_int8_affine_quantisation():
    from vla_accel.backends.litert_backend import _TensorCodec

    codec = _TensorCodec("x", "serving_default_x", np.dtype(np.int8), scale=0.05, zero_point=-3)
    values = np.array([[-6.25, -1.0, 0.0, 0.049, 6.5]], dtype=np.float32)
    encoded = codec.encode(values)
    assert encoded.dtype == np.int8
    assert encoded.tolist() == [[-128, -23, -3, -2, 127]]  # clipped at both ends
    decoded = codec.decode(encoded)
    assert np.allclose(decoded[0, 1:4], [-1.0, 0.0, 0.05], atol=1e-6)


# --- absent hardware: everything up to the delegate runs, the missing piece is named -----------
DELEGATE_CASES = [
    ("edgetpu", "int8", "libedgetpu.so.1", "libedgetpu1-std"),
    ("litert-gpu", "fp16", "libtensorflowlite_gpu_delegate.so", "delegate_path"),
    ("hexagon", "int8", "libhexagon_delegate.so", "libhexagon_nn_skel"),
    ("qnn", "int8", "libQnnTFLiteDelegate.so", "QNN"),
    ("external", "int8", "external delegate", "delegate_path"),
]


@pytest.mark.parametrize("backend,precision,library,hint", DELEGATE_CASES)
def test_absent_delegate_fails_fast_naming_library_and_install(tiny_bundle, backend, precision, library, hint):
    cls = backend_class(backend)
    availability = cls.probe()
    if availability.ok:
        pytest.skip(f"{backend}: its delegate is present on this machine ({availability.detail})")
    assert any(library in m for m in availability.missing), availability
    with pytest.raises(BackendUnavailableError) as info:
        create_backend(backend, tiny_bundle, BackendOptions(precision=precision)).load()
    message = str(info.value)
    assert library in message and hint in message and info.value.backend == backend


def _a_shared_library_that_is_not_a_delegate() -> str:
    found = ctypes.util.find_library("m")
    for candidate in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6",
                      "/lib/aarch64-linux-gnu/libm.so.6", "/usr/lib/aarch64-linux-gnu/libm.so.6"):
        if os.path.isfile(candidate):
            return candidate
    if found and os.path.isfile(found):
        return found
    pytest.skip("no libm.so.6 at a known path to stand in for a non-delegate library")


def test_configured_delegate_that_is_not_a_plugin_is_reported(tiny_bundle):
    if not HAVE_LITERT:
        pytest.skip("LiteRT missing: ai-edge-litert; install with pip install ai-edge-litert")
    _require_converter()
    libm = _a_shared_library_that_is_not_a_delegate()
    backend = create_backend("external", tiny_bundle,
                             BackendOptions(precision="fp32", extra={"delegate_path": libm}))
    with pytest.raises(BackendUnavailableError) as info:
        backend.load()  # the real load_delegate runs and rejects the library
    assert libm in str(info.value) and "tflite_plugin_create_delegate" in str(info.value)


def test_configured_delegate_path_that_does_not_exist(tiny_bundle):
    backend = create_backend("litert-gpu", tiny_bundle,
                             BackendOptions(precision="fp32", extra={"delegate_path": "/nonexistent/libgpu.so"}))
    with pytest.raises(BackendUnavailableError) as info:
        backend.load()
    assert "/nonexistent/libgpu.so" in str(info.value)


def test_qnn_backend_type_is_validated(tiny_bundle):
    from vla_accel.backends.litert_backend import QnnBackend

    backend = QnnBackend(tiny_bundle, BackendOptions(precision="int8", extra={"backend_type": "tpu"}))
    with pytest.raises(BackendError) as info:
        backend._delegate_options()
    assert "htp" in str(info.value)


def test_edgetpu_refuses_an_uncompiled_model(tiny_bundle, tmp_path):
    """The Edge TPU delegate only runs edgetpu-custom-op: an int8 model straight from the converter
    would run on the CPU, so the check that guards against it must flag it."""
    from vla_accel.backends.litert_backend import EdgeTPUBackend

    _require_converter()
    from vla_accel.models.export_tflite import export_tflite

    path = export_tflite(tiny_bundle, "int8", progress=False)
    assert b"edgetpu-custom-op" not in path.read_bytes()

    class Runner:  # the check reads only the model file of each runner
        def __init__(self, p):
            self.path = p

    backend = EdgeTPUBackend(tiny_bundle, BackendOptions(precision="int8"))
    backend._runners = [Runner(path)]
    with pytest.raises(ModelFileError) as info:
        backend._check_model()
    assert "edgetpu_compiler" in str(info.value)


def test_pypi_pycoral_is_not_mistaken_for_corals(tmp_path, monkeypatch):
    from vla_accel.backends.litert_backend import coral_pycoral_available

    fake = tmp_path / "pycoral"
    fake.mkdir()
    (fake / "__init__.py").write_text("")  # the unrelated PyPI project has no utils/edgetpu.py
    # (not monkeypatch.syspath_prepend: its invalidate_caches() trips over a finder that a
    # heavy runtime installed; a new sys.path entry gets a fresh finder anyway)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    assert coral_pycoral_available() is False
    (fake / "utils").mkdir()
    (fake / "utils" / "edgetpu.py").write_text("")
    assert coral_pycoral_available() is True


def test_a_user_tflite_model_from_a_spec_runs_by_name(tflite_backends, tiny_bundle, tmp_path):
    """A ready .tflite named by a user spec (format: tflite) runs without the torch network."""
    import dataclasses

    from vla_accel.models import ModelBundle
    from vla_accel.models.export_tflite import export_tflite

    tflite_backends("fp32")
    path = export_tflite(tiny_bundle, "fp32", progress=False)  # fixed batch 1
    spec = dataclasses.replace(tiny_bundle.spec, format="tflite", weights=str(path), source=None)
    user_model = ModelBundle(spec, name="user-tflite", cache_dir=tmp_path)
    backend = create_backend("tflite", user_model, BackendOptions(max_batch=1)).load()
    try:
        inputs = example_inputs(tiny_bundle.spec, 1, seed=21)
        expected = create_backend("torch", tiny_bundle).load().infer(inputs)["actions"]
        assert np.abs(backend.infer(inputs)["actions"] - expected).max() <= 1e-4
        assert backend.device_info().detail["model_files"] == [str(path)]
    finally:
        backend.close()
