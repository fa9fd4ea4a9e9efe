"""``npu``: picks Intel NPU (OpenVINO) or a vendor LiteRT delegate, and when neither is here says
everything it checked and how to install each."""
from __future__ import annotations

import os

import pytest

from vla_accel.backends.base import BackendOptions

from vla_accel.core.optional import module_available
from vla_accel.backends.npu_backend import NpuBackend, intel_npu_device_nodes
from vla_accel.backends.registry import create_backend
from vla_accel.errors import BackendUnavailableError


def test_probe_names_both_routes_when_no_npu_is_present():
    availability = NpuBackend.probe()
    if availability.ok:
        pytest.skip(f"an NPU route exists here: {availability.detail}")
    missing = " ".join(availability.missing)
    assert "Intel NPU" in missing or "openvino" in missing
    assert "libvx_delegate.so" in missing
    assert "intel-driver-compiler-npu" in availability.hint and "delegate_path" in availability.hint


def test_load_without_npu_fails_listing_what_was_checked(tiny_bundle):
    if NpuBackend.probe().ok:
        pytest.skip("an NPU route exists here")
    with pytest.raises(BackendUnavailableError) as info:
        create_backend("npu", tiny_bundle, BackendOptions(precision="int8")).load()
    assert info.value.backend == "npu" and "Intel NPU" in str(info.value)


def test_intel_route_is_checked_against_openvino_devices(tiny_bundle):
    """With OpenVINO installed but no NPU device, the real OpenVINO device list is consulted and
    reported; the vendor-delegate route is then tried and reported too."""
    if not module_available("openvino"):
        pytest.skip("openvino missing; install with pip install openvino")
    if intel_npu_device_nodes():
        pytest.skip("an Intel NPU device node exists here")
    backend = NpuBackend(tiny_bundle, BackendOptions(precision="fp16"))
    checked: list[str] = []
    assert backend._try_intel_npu(checked) is None
    assert checked and "OpenVINO NPU device" in checked[0] and "CPU" in checked[0]


def test_configured_delegate_path_is_used_and_checked(tiny_bundle):
    backend = create_backend("npu", tiny_bundle,
                             BackendOptions(precision="int8", extra={"delegate_path": "/opt/vendor/libnpu_delegate.so"}))
    with pytest.raises(BackendUnavailableError) as info:
        backend.load()
    assert "/opt/vendor/libnpu_delegate.so" in str(info.value)


def test_configured_delegate_that_is_not_a_plugin_goes_through_litert(tiny_bundle):
    if not (module_available("ai_edge_litert") and module_available("litert_torch")):
        pytest.skip("LiteRT or its converter missing; install with pip install -r requirements/litert.txt")
    libm = next((p for p in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6",
                             "/lib/aarch64-linux-gnu/libm.so.6") if os.path.isfile(p)), None)
    if libm is None:
        pytest.skip("no libm.so.6 at a known path to stand in for a non-delegate library")
    backend = create_backend("npu", tiny_bundle, BackendOptions(precision="int8", extra={"delegate_path": libm}))
    with pytest.raises(BackendUnavailableError) as info:
        backend.load()
    assert "tflite_plugin_create_delegate" in str(info.value) and info.value.backend == "npu"
