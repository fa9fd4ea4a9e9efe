"""The shared contracts: errors, the backend registry, the Backend base class, fault injection.

No heavy runtime is imported here; the backend under test is a small numpy backend defined below,
which is what these tests exercise: the base class's lifecycle and fault-injection logic.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vla_accel.backends import registry
from vla_accel.backends.base import (
    Availability,
    Backend,
    BackendOptions,
    DeviceInfo,
)
from vla_accel.core.spec import ActionSpec, CameraSpec, InstructionSpec, ModelSpec, StateSpec, example_inputs
from vla_accel.errors import BackendError, BackendUnavailableError, UnknownBackendError


def _spec(state: bool = True) -> ModelSpec:
    return ModelSpec(
        name="contract",
        cameras=(CameraSpec(name="primary", input="image_primary", height=16, width=12),),
        instruction=InstructionSpec(max_tokens=8),
        action=ActionSpec(steps=4, dims=2, names=("a", "b")),
        state=StateSpec(dims=3) if state else None,
    ).validate()


class _Bundle:
    def __init__(self, spec):
        self.spec = spec


class MeanBackend(Backend):
    """Actions = mean of the image tensor per sample, broadcast: enough to see data flow through."""

    name = "mean"
    precisions = ("fp32",)

    @classmethod
    def probe(cls) -> Availability:
        return Availability(ok=True)

    def _load(self) -> None:
        self.loads = getattr(self, "loads", 0) + 1

    def _infer(self, inputs):
        img = inputs["image_primary"]
        m = img.reshape(img.shape[0], -1).mean(axis=1).astype(np.float32)
        return {"actions": np.broadcast_to(m[:, None, None], (img.shape[0], 4, 2)).copy()}

    def _device_info(self) -> DeviceInfo:
        return DeviceInfo(backend=self.name, device="CPU", kind="cpu", parallel_units=1, precision="fp32")


class AbsentBackend(MeanBackend):
    name = "absent"

    @classmethod
    def probe(cls) -> Availability:
        return Availability(ok=False, missing=("libfoo.so.1",), hint="install libfoo1 from the vendor repository")


def test_unknown_backend_lists_valid_names():
    with pytest.raises(UnknownBackendError) as err:
        registry.canonical_name("warp-drive")
    msg = str(err.value)
    assert "warp-drive" in msg
    for name in ("torch", "onnxruntime", "tensorrt", "edgetpu", "opencl"):
        assert name in msg
    assert err.value.reason == "unknown_backend"


def test_aliases_resolve():
    assert registry.canonical_name("CPU") == "torch"
    assert registry.canonical_name(" coral ") == "edgetpu"


def test_registry_is_lazy():
    # Listing and resolving names must import no runtime: checked in a fresh interpreter.
    code = (
        "import sys; from vla_accel.backends import registry; from vla_accel import cli; "
        "registry.list_backends(); registry.canonical_name('tensorrt'); "
        "heavy = [m for m in ('torch', 'tensorrt', 'openvino', 'onnxruntime', 'ai_edge_litert', "
        "'tflite_runtime', 'pyopencl', 'rclpy') if m in sys.modules]; print(heavy); sys.exit(bool(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_backend_lifecycle_and_infer():
    be = MeanBackend(_Bundle(_spec()))
    with pytest.raises(BackendError, match="before load"):
        be.infer(example_inputs(be.spec, 1))
    with be:
        out = be.infer(example_inputs(be.spec, 2, seed=3))
        assert out["actions"].shape == (2, 4, 2)
        assert be.device_info().hardware_id == "mean@CPU"
    assert not be.loaded


def test_absent_backend_fails_fast_with_hint():
    be = AbsentBackend(_Bundle(_spec()))
    with pytest.raises(BackendUnavailableError) as err:
        be.load()
    assert "libfoo.so.1" in str(err.value) and "install libfoo1" in str(err.value)


def test_precision_rejected_with_reason():
    with pytest.raises(BackendError, match="supports precision fp32"):
        MeanBackend(_Bundle(_spec()), BackendOptions(precision="int8"))


def test_fault_injection_at_load(monkeypatch):
    monkeypatch.setenv("VLA_ACCEL_FAULT", "other:load,mean:load")
    with pytest.raises(BackendError) as err:
        MeanBackend(_Bundle(_spec())).load()
    assert err.value.reason == "injected_fault"


def test_fault_injection_mid_stream():
    be = MeanBackend(_Bundle(_spec()), BackendOptions(fault="mean:infer:after=2")).load()
    x = example_inputs(be.spec, 1)
    be.infer(x)
    be.infer(x)
    with pytest.raises(BackendError, match="after 2 calls"):
        be.infer(x)


def test_example_inputs_follow_spec():
    spec = _spec()
    x = example_inputs(spec, 3, seed=1)
    assert x["image_primary"].shape == (3, 3, 16, 12) and x["image_primary"].dtype == np.float32
    assert x["tokens"].dtype == np.int32 and x["tokens"].shape == (3, 8)
    assert x["token_mask"].dtype == np.float32
    # every sample has at least one real token, and padding is masked out
    assert (x["token_mask"].sum(axis=1) >= 1).all()
    assert ((x["tokens"] == 0) == (x["token_mask"] == 0)).all()
    assert x["state"].shape == (3, 3)
    assert set(x) == set(spec.input_names)
    assert "state" not in example_inputs(_spec(state=False), 1)
