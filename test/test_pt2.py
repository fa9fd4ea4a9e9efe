"""``.pt2`` policy programs (vla_accel/models/export_pt2.py): torch.export programs and AOTInductor
packages.

The torch.export program of the reference network is exported, loaded and compared with the committed
reference here; its AOTInductor CPU package is compiled with gcc (minutes on two cores: ``slow``).
Load errors and the spec format are checked always. The cuda side is in test_cuda_backend.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from vla_accel.errors import ModelFileError
from vla_accel.models.export_pt2 import export_pt2, is_aoti_package, load_program, load_pt2

torch = pytest.importorskip("torch")


def test_missing_package_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError) as err:
        load_pt2(tmp_path / "absent.pt2")
    assert err.value.reason == "missing_file"


def test_a_file_that_is_no_package_is_a_clear_error(tmp_path):
    bogus = tmp_path / "model.pt2"
    bogus.write_bytes(b"not a zip archive")
    with pytest.raises(ModelFileError) as err:
        load_pt2(bogus)
    assert "pt2" in str(err.value) and err.value.reason == "bad_model_file"


def test_bad_device_and_precision_are_rejected(tiny_bundle):
    with pytest.raises(ModelFileError):
        export_pt2(tiny_bundle, aoti_device="tpu")
    with pytest.raises(ModelFileError) as err:
        export_pt2(tiny_bundle, precision="int8")
    assert err.value.reason == "bad_precision"


def test_cuda_package_without_cuda_says_so(tiny_bundle):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the missing-CUDA path cannot be observed here")
    with pytest.raises(ModelFileError) as err:
        tiny_bundle.export("pt2", aoti_device="cuda", progress=False)
    assert "CUDA" in str(err.value)


def _user_bundle(tiny_bundle, path, cache_dir):
    import dataclasses

    from vla_accel.models.bundle import ModelBundle

    return ModelBundle(dataclasses.replace(tiny_bundle.spec, name="user-policy", format="pt2", weights=str(path),
                                           architecture={}), cache_dir=cache_dir)


def test_exported_program_matches_the_reference_at_any_batch(tiny_bundle, tmp_path):
    from vla_accel.models.reference import load_reference

    path = tiny_bundle.export("pt2", progress=False)
    assert path.suffix == ".pt2" and not is_aoti_package(path)
    case = load_reference(tiny_bundle)
    program = load_program(path, "cpu")
    args = [torch.from_numpy(case.inputs[name]) for name in tiny_bundle.spec.input_names]
    with torch.inference_mode():
        got = program(*args).numpy()
        one = program(*[a[:1] for a in args]).numpy()  # the batch dimension is dynamic
    assert np.max(np.abs(got - case.actions)) < 1e-4
    assert np.max(np.abs(one - case.actions[:1])) < 1e-4
    # The same file as a user's policy program: a spec with format pt2 names it; no network code.
    user = _user_bundle(tiny_bundle, path, tmp_path)
    assert not user.has_torch_network and user.model_file == path
    assert user.export("pt2", progress=False) == path


def test_exported_program_moves_to_another_device(tiny_bundle):
    """The program is traced on the CPU; loading rewrites the device (checked on the meta device)."""
    from vla_accel.core.spec import example_inputs

    program = load_program(tiny_bundle.export("pt2", progress=False), "meta")
    inputs = example_inputs(tiny_bundle.spec, 3, seed=0)
    out = program(*[torch.from_numpy(inputs[n]).to("meta") for n in tiny_bundle.spec.input_names])
    spec = tiny_bundle.spec
    assert out.device.type == "meta" and tuple(out.shape) == (3, spec.action.steps, spec.action.dims)


@pytest.mark.slow
@pytest.mark.aoti
def test_cpu_aoti_package_matches_the_reference(tiny_bundle):
    from vla_accel.models.reference import load_reference

    path = tiny_bundle.export("pt2", aoti_device="cpu", progress=False)
    assert is_aoti_package(path)
    case = load_reference(tiny_bundle)
    program = load_program(path, "cpu")  # checked in a child process, then loaded here
    args = [torch.from_numpy(case.inputs[name]) for name in tiny_bundle.spec.input_names]
    with torch.inference_mode():
        got = program(*args).numpy()
    assert np.max(np.abs(got - case.actions)) < 1e-4


def test_a_package_that_cannot_load_is_caught_in_a_child_process(tmp_path):
    """A crash or failure while loading native code happens in a child process, not in the caller."""
    from vla_accel.models.export_pt2 import check_pt2_loads

    bogus = tmp_path / "model.pt2"
    bogus.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError) as err:
        check_pt2_loads(bogus, "cpu", timeout_s=120)
    assert "child process" in str(err.value) and err.value.reason == "bad_model_file"
