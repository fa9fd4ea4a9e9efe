"""CPU backends (torch, onnxruntime, openvino): parity against the committed torch references,
device reporting, and clear errors for what is not there."""
from __future__ import annotations

import numpy as np
import pytest

from vla_accel.backends.base import BackendOptions

from vla_accel.core.optional import module_available

from vla_accel.core.spec import example_inputs
from vla_accel.backends.registry import backend_class, create_backend, list_backends
from vla_accel.errors import BackendError, BackendUnavailableError, InputError, UnknownBackendError
from vla_accel.models import load_model
from vla_accel.models.reference import TOLERANCES, load_reference

RUNTIME_MODULES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}
INSTALL = {
    "torch": "pip install torch==2.13.0 (CPU build)",
    "onnxruntime": "pip install onnxruntime",
    "openvino": "pip install openvino",
}


def _require(backend: str) -> None:
    if not module_available(RUNTIME_MODULES[backend]):
        pytest.skip(f"{backend} missing: {RUNTIME_MODULES[backend]}; install with {INSTALL[backend]}")


@pytest.fixture(scope="module")
def loaded():
    """Backends loaded once per (model, backend, precision) for this module."""
    cache: dict = {}

    def get(model_name: str, backend: str, precision: str = "fp32", **options):
        _require(backend)
        key = (model_name, backend, precision, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = create_backend(backend, load_model(model_name), BackendOptions(precision=precision, **options)).load()
        return cache[key]

    yield get
    for backend in cache.values():
        backend.close()


def test_unknown_backend_lists_valid_names(tiny_bundle):
    with pytest.raises(UnknownBackendError) as info:
        create_backend("tpu9000", tiny_bundle)
    message = str(info.value)
    assert "tpu9000" in message
    for name in ("torch", "onnxruntime", "openvino"):
        assert name in message and name in list_backends()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_probe_is_cheap_and_ok(backend):
    _require(backend)
    availability = backend_class(backend).probe()
    assert availability.ok, availability


PARITY_CASES = [
    ("tiny", "torch", "fp32"),
    ("tiny", "onnxruntime", "fp32"),
    ("tiny", "openvino", "fp32"),
    ("tiny", "openvino", "default"),  # OpenVINO's own choice (bf16 on AVX512-BF16 / AMX CPUs)
    ("tiny", "onnxruntime", "int8"),  # dynamic quantisation of the fp32 export
    ("tiny-2cam", "onnxruntime", "int8"),
    ("tiny-2cam", "onnxruntime", "fp32"),
    ("tiny-2cam", "openvino", "fp32"),
    pytest.param("base", "torch", "fp32", marks=pytest.mark.slow),
    pytest.param("base", "onnxruntime", "fp32", marks=pytest.mark.slow),
    pytest.param("base", "openvino", "fp32", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("model_name, backend, precision", PARITY_CASES)
def test_parity_with_committed_torch_reference(loaded, model_name, backend, precision):
    runner = loaded(model_name, backend, precision)
    reference = load_reference(runner.model)
    actions = runner.infer(reference.inputs)[runner.spec.action.output]
    assert actions.shape == reference.actions.shape and actions.dtype == np.float32
    ran_at = runner.device_info().precision  # the precision the runtime reports it actually used
    tolerance = TOLERANCES[ran_at]
    diff = float(np.abs(actions - reference.actions).max())
    assert diff <= tolerance, f"{backend} ({ran_at}) differs from the torch reference by {diff:.2e} > {tolerance:.0e}"
    if precision in ("fp32", "int8"):
        assert ran_at == precision


def test_openvino_default_precision_is_reported(loaded):
    info = loaded("tiny", "openvino", "default").device_info()
    assert info.precision in ("fp32", "bf16", "fp16")
    assert info.detail["requested_precision"] == "default"


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_batch_sizes_and_device_info(loaded, backend):
    runner = loaded("tiny", backend)
    for batch in (1, 5):
        out = runner.infer(example_inputs(runner.spec, batch=batch, seed=batch))
        assert out["actions"].shape == (batch, 10, 7)
    info = runner.device_info()
    assert info.backend == backend and info.kind == "cpu"
    assert info.parallel_units >= 1 and info.runtime_version.startswith(backend)
    assert info.detail["cpu"]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_bad_inputs_raise_input_errors(loaded, backend):
    runner = loaded("tiny", backend)
    inputs = example_inputs(runner.spec, batch=2, seed=0)
    missing = {k: v for k, v in inputs.items() if k != "state"}
    with pytest.raises(InputError, match="missing input tensor 'state'"):
        runner.infer(missing)
    wrong = dict(inputs, image_primary=inputs["image_primary"][:, :, :64])
    with pytest.raises(InputError, match="per-sample shape"):
        runner.infer(wrong)
    mixed = dict(inputs, state=inputs["state"][:1])
    with pytest.raises(InputError, match="batch 1"):
        runner.infer(mixed)


def test_threads_option_is_applied(loaded):
    info = loaded("tiny", "onnxruntime", threads=1).device_info()
    assert info.parallel_units == 1
    ov_info = loaded("tiny", "openvino", threads=1).device_info()
    assert ov_info.parallel_units == 1


def test_openvino_absent_device_fails_clearly(tiny_bundle):
    _require("openvino")
    backend = create_backend("openvino", tiny_bundle, BackendOptions(device="NPU"))
    with pytest.raises(BackendUnavailableError, match="OpenVINO device NPU") as info:
        backend.load()
    assert "NPU" in info.value.hint and "driver" in info.value.hint


def test_onnxruntime_absent_provider_fails_clearly(tiny_bundle):
    _require("onnxruntime")
    options = BackendOptions(extra={"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]})
    backend = create_backend("onnxruntime", tiny_bundle, options)
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA: the absent-provider path cannot be exercised")
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        backend.load()


def test_onnxruntime_reports_active_provider_and_options(loaded):
    info = loaded("tiny", "onnxruntime").device_info()
    assert info.detail["providers"][0] == "CPUExecutionProvider"
    assert info.detail["graph_optimization"] == "all"
    assert info.detail["allow_spinning"] == "during_run"  # threads sleep between runs by default


@pytest.mark.parametrize("value,mode", [(True, "on"), (False, "off"), ("during_run", "during_run")])
def test_onnxruntime_spinning_modes_load_and_agree(tiny_bundle, value, mode):
    _require("onnxruntime")
    from vla_accel.core.spec import example_inputs

    inputs = example_inputs(tiny_bundle.spec, 1, seed=3)
    reference = create_backend("onnxruntime", tiny_bundle, BackendOptions(threads=1)).load()
    backend = create_backend("onnxruntime", tiny_bundle, BackendOptions(extra={"allow_spinning": value})).load()
    try:
        assert backend.device_info().detail["allow_spinning"] == mode
        out = tiny_bundle.spec.action.output
        assert np.allclose(backend.infer(inputs)[out], reference.infer(inputs)[out], atol=1e-5)
    finally:
        backend.close()
        reference.close()


def test_bad_options_are_backend_errors(tiny_bundle):
    _require("onnxruntime")
    with pytest.raises(BackendError, match="graph_optimization"):
        create_backend("onnxruntime", tiny_bundle, BackendOptions(extra={"graph_optimization": "max"})).load()
    with pytest.raises(BackendError, match="allow_spinning"):
        create_backend("onnxruntime", tiny_bundle, BackendOptions(extra={"allow_spinning": "sometimes"})).load()
    with pytest.raises(BackendError, match="CPU only"):
        create_backend("torch", tiny_bundle, BackendOptions(device="cuda")).load()
    with pytest.raises(BackendError, match="supports precision"):
        create_backend("onnxruntime", tiny_bundle, BackendOptions(precision="fp16"))


def test_infer_before_load_is_an_error(tiny_bundle):
    backend = create_backend("torch", tiny_bundle)
    with pytest.raises(BackendError, match="before load"):
        backend.infer(example_inputs(tiny_bundle.spec))
