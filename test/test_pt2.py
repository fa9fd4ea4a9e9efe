"""``.pt2`` policy programs (vla_accel/models/export_pt2.py): torch.export + AOTInductor packages.

The CPU package of the reference network is compiled here (gcc; minutes on two cores: ``slow``) and
must match the committed reference; the load errors and the spec format are checked always. The
cuda side (a CUDA package under CUDA graphs) is in test_cuda_backend.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from vla_accel.errors import ModelFileError
from vla_accel.models.export_pt2 import export_pt2, load_pt2

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
        export_pt2(tiny_bundle, device="tpu")
    with pytest.raises(ModelFileError) as err:
        export_pt2(tiny_bundle, precision="int8")
    assert err.value.reason == "bad_precision"


def test_cuda_package_without_cuda_says_so(tiny_bundle):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the missing-CUDA path cannot be observed here")
    with pytest.raises(ModelFileError) as err:
        tiny_bundle.export("pt2", device="cuda", progress=False)
    assert "CUDA" in str(err.value)


@pytest.mark.slow
def test_cpu_package_matches_the_reference(tiny_bundle, tmp_path):
    from vla_accel.models.reference import load_reference

    path = tiny_bundle.export("pt2", device="cpu", progress=False)
    assert path.suffix == ".pt2" and path.stat().st_size > 0
    case = load_reference(tiny_bundle)
    runner = load_pt2(path, "cpu")
    args = [torch.from_numpy(case.inputs[name]) for name in tiny_bundle.spec.input_names]
    with torch.inference_mode():
        got = runner(*args).numpy()
        one = runner(*[a[:1] for a in args]).numpy()  # the batch dimension is dynamic
    assert np.max(np.abs(got - case.actions)) < 1e-4
    assert np.max(np.abs(one - case.actions[:1])) < 1e-4
    # The same package as a user's policy program: a spec with format pt2 names the file, and the
    # bundle hands it over as it is (no network code needed).
    import dataclasses

    from vla_accel.models.bundle import ModelBundle

    user = ModelBundle(dataclasses.replace(tiny_bundle.spec, name="user-policy", format="pt2", weights=str(path),
                                           architecture={}), cache_dir=tmp_path)
    assert not user.has_torch_network and user.model_file == path
    assert user.export("pt2", progress=False) == path


def test_a_package_that_cannot_load_is_caught_in_a_child_process(tmp_path):
    """A crash or failure while loading native code happens in a child process, not in the caller."""
    from vla_accel.models.export_pt2 import check_pt2_loads

    bogus = tmp_path / "model.pt2"
    bogus.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError) as err:
        check_pt2_loads(bogus, "cpu", timeout_s=120)
    assert "child process" in str(err.value) and err.value.reason == "bad_model_file"
