"""The ``cuda`` backend: parity with the committed torch fp32 references per precision, CUDA graphs
against eager, static buffers across batch sizes; and, where no CUDA device exists (CI, this
project's CPU machines), the clear "what is missing, how to install it" error.
"""
from __future__ import annotations

import numpy as np
import pytest

from vla_accel.backends.base import BackendOptions

from vla_accel.core.spec import example_inputs
from vla_accel.backends.cuda_backend import CudaBackend
from vla_accel.errors import BackendError, BackendUnavailableError, InputError
from vla_accel.models.reference import TOLERANCES, load_reference

# Max |a - a_ref| of normalised actions vs the torch CPU fp32 reference, per precision: the
# package-wide tolerances (vla_accel/models/reference.py: fp32 1e-4, fp16 2e-2, bf16 5e-2).
# Measured on an H200 (docs/gpu.md): fp32 2.5e-6, fp16 2.3e-3, bf16 2.0e-2 (base model).
CUDA_TOLERANCES = {p: TOLERANCES[p] for p in ("fp32", "fp16", "bf16")}


def _cuda_missing() -> str | None:
    availability = CudaBackend.probe()
    if not availability.ok:
        return f"cuda missing: {', '.join(availability.missing)}; {availability.hint}"
    import torch

    if torch.version.cuda is None or not torch.cuda.is_available():
        return (f"cuda missing: torch {torch.__version__} has no usable CUDA device; install a CUDA build of "
                "torch matching the NVIDIA driver")
    return None


@pytest.fixture(scope="module")
def cuda_ready():
    reason = _cuda_missing()
    if reason:
        pytest.skip(reason)


def test_without_cuda_load_says_what_is_missing(tiny_bundle):
    if _cuda_missing() is None:
        pytest.skip("this machine has CUDA: the unavailable path cannot be observed here")
    backend = CudaBackend(tiny_bundle, BackendOptions(precision="fp16"))
    with pytest.raises(BackendUnavailableError) as err:
        backend.load()
    message = str(err.value)
    assert err.value.backend == "cuda" and err.value.missing
    assert "CUDA device" in message
    assert "NVIDIA driver" in message and "CUDA build of PyTorch" in message and "Jetson" in message
    assert not backend.loaded


def test_graph_option_accepts_text_from_parameter_files():
    from vla_accel.backends.cuda_backend import _flag

    assert [_flag(v) for v in (True, 1, "true", "On", "1")] == [True] * 5
    assert [_flag(v) for v in (False, 0, "false", "OFF", "no", "0", "")] == [False] * 7


def test_precision_int8_is_rejected(tiny_bundle):
    with pytest.raises(BackendError) as err:
        CudaBackend(tiny_bundle, BackendOptions(precision="int8"))
    assert err.value.reason == "bad_precision"


def test_unknown_compile_mode_is_rejected(tiny_bundle):
    with pytest.raises(BackendError) as err:
        CudaBackend(tiny_bundle, BackendOptions(precision="fp16", extra={"compile": "fastest"}))
    assert err.value.reason == "bad_option" and "max-autotune-no-cudagraphs" in str(err.value)


@pytest.mark.hardware
@pytest.mark.parametrize("name", ["tiny", "tiny-flow"])
def test_compiled_network_runs_inside_the_backends_graphs(cuda_ready, name):
    """torch.compile without its own CUDA graphs (Inductor's fused kernels) captured in the backend's
    graph: a single-pass network and a whole flow chunk match their committed CPU fp32 references."""
    from vla_accel.models import load_model
    from vla_accel.models.reference import load_program_reference

    bundle = load_model(name)
    case = load_program_reference(bundle) if bundle.is_program else load_reference(bundle)
    options = BackendOptions(precision="fp16", max_batch=2, extra={"compile": "default"})
    with CudaBackend(bundle, options) as backend:
        for _ in range(5):  # eager (compiling) passes, then the captured graph's replays
            got = backend.infer(case.inputs)[bundle.spec.action.output]
        info = backend.device_info()
        assert info.detail["cuda_graphs"] is True and info.detail["compile"] == "default"
        assert backend._graphs, "no CUDA graph was captured around the compiled program"
    assert np.isfinite(got).all()
    assert np.max(np.abs(got - case.actions)) < CUDA_TOLERANCES["fp16"]


@pytest.mark.hardware
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("graphs", [True, False], ids=["graph", "eager"])
def test_tiny_parity_per_precision(cuda_ready, tiny_bundle, precision, graphs):
    case = load_reference(tiny_bundle)
    options = BackendOptions(precision=precision, max_batch=2, extra={"cuda_graphs": graphs})
    with CudaBackend(tiny_bundle, options) as backend:
        for _ in range(5):  # the first passes are eager; then the graph is captured and replayed
            got = backend.infer(case.inputs)["actions"]
        info = backend.device_info()
    assert got.dtype == np.float32 and got.shape == case.actions.shape
    assert np.isfinite(got).all()
    assert np.max(np.abs(got - case.actions)) < CUDA_TOLERANCES[precision]
    assert info.detail["cuda_graphs"] is graphs
    assert (info.detail["graphs_captured"] == [2]) is graphs


@pytest.mark.hardware
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_base_parity(cuda_ready, base_bundle, precision):
    case = load_reference(base_bundle)
    with CudaBackend(base_bundle, BackendOptions(precision=precision, max_batch=2)) as backend:
        for _ in range(5):
            got = backend.infer(case.inputs)["actions"]
    assert np.max(np.abs(got - case.actions)) < CUDA_TOLERANCES[precision]


@pytest.mark.hardware
def test_graphs_per_batch_size_and_fresh_inputs(cuda_ready, tiny_bundle):
    """Replays must read each call's inputs (static buffers refilled), at every batch size."""
    with CudaBackend(tiny_bundle, BackendOptions(precision="fp32", max_batch=4)) as graphs, \
            CudaBackend(tiny_bundle, BackendOptions(precision="fp32", max_batch=4,
                                                    extra={"cuda_graphs": False})) as eager:
        for step in range(12):
            batch = (1, 3, 4)[step % 3]
            inputs = example_inputs(tiny_bundle.spec, batch, seed=step)
            a = graphs.infer(inputs)["actions"]
            b = eager.infer(inputs)["actions"]
            assert a.shape[0] == batch
            assert np.max(np.abs(a - b)) < 1e-4
        assert graphs.device_info().detail["graphs_captured"] == [1, 3, 4]
        with pytest.raises(InputError) as err:
            graphs.infer(example_inputs(tiny_bundle.spec, 5, seed=0))
        assert err.value.reason == "batch_too_large"


@pytest.mark.hardware
def test_device_info_describes_the_gpu(cuda_ready, tiny_bundle):
    import torch

    with CudaBackend(tiny_bundle, BackendOptions(precision="fp16")) as backend:
        info = backend.device_info()
    props = torch.cuda.get_device_properties(0)
    assert info.kind == "gpu" and info.parallel_units == props.multi_processor_count
    assert info.memory_bytes == props.total_memory
    assert info.detail["capability"] == f"{props.major}.{props.minor}"
    assert props.name in info.device


@pytest.mark.hardware
def test_gpu_layout_is_on_and_matches_the_plain_network(cuda_ready, base_bundle):
    """Fused attention, padded tokens and the patch GEMM give the plain layout's outputs."""
    inputs = example_inputs(base_bundle.spec, 2, seed=7)
    with CudaBackend(base_bundle, BackendOptions(precision="fp32", max_batch=2)) as fast, \
            CudaBackend(base_bundle, BackendOptions(precision="fp32", max_batch=2,
                                                    extra={"gpu_layout": False})) as plain:
        for _ in range(5):
            a = fast.infer(inputs)["actions"]
            b = plain.infer(inputs)["actions"]
        assert fast.device_info().detail["gpu_layout"] and not plain.device_info().detail["gpu_layout"]
        assert fast.last_device_ms > 0
    assert np.max(np.abs(a - b)) < 1e-4


@pytest.mark.hardware
def test_hand_captured_graph_survives_torch_compile_graphs(cuda_ready, base_bundle):
    """torch.compile's CUDA-graph mode clears cuBLAS workspaces; a graph captured by the backend
    must not have its workspace handed to other tensors (it once crashed, or wrote into them)."""
    import torch

    inputs = example_inputs(base_bundle.spec, 32, seed=11)
    with CudaBackend(base_bundle, BackendOptions(precision="bf16", max_batch=32)) as graphs:
        for _ in range(5):
            before = graphs.infer(inputs)["actions"]
        assert graphs.device_info().detail["graphs_captured"] == [32]
        with CudaBackend(base_bundle, BackendOptions(precision="bf16", max_batch=32,
                                                     extra={"compile": "reduce-overhead"})) as compiled:
            for _ in range(4):
                compiled_out = compiled.infer(inputs)["actions"]
            # Fill freed memory with sentinels: if the graph's workspace had been handed out, the replay
            # below would overwrite them (or fault).
            sentinels = [torch.full((1 << 20,), 7.0, device="cuda") for _ in range(64)]
            for _ in range(3):
                after = graphs.infer(inputs)["actions"]
                compiled_again = compiled.infer(inputs)["actions"]
            torch.cuda.synchronize()
            assert all(bool((s == 7.0).all()) for s in sentinels)
    np.testing.assert_array_equal(after, before)
    assert np.max(np.abs(compiled_again - compiled_out)) == 0
    assert np.max(np.abs(compiled_out - before)) < 5e-2


@pytest.mark.hardware
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_pt2_program_runs_under_cuda_graphs(cuda_ready, tiny_bundle, precision):
    """The reference network's torch.export program (no Python model code), moved to the GPU and run
    by cuda with a CUDA graph over it, at several batch sizes."""
    case = load_reference(tiny_bundle)
    options = BackendOptions(precision=precision, max_batch=4, extra={"program": "pt2"})
    with CudaBackend(tiny_bundle, options) as backend:
        for _ in range(5):
            got = backend.infer(case.inputs)["actions"]
        info = backend.device_info()
        assert info.detail["program"].endswith(".pt2") and info.detail["graphs_captured"] == [2]
        other = backend.infer(example_inputs(tiny_bundle.spec, 3, seed=1))["actions"]  # another batch size
    assert other.shape[0] == 3 and np.isfinite(other).all()
    assert np.max(np.abs(got - case.actions)) < CUDA_TOLERANCES[precision]


@pytest.mark.hardware
@pytest.mark.slow
def test_user_pt2_policy_runs_on_cuda_with_parity(cuda_ready, tiny_bundle, tmp_path):
    """A policy known only by its .pt2 file and spec (format: pt2) runs on cuda, matching its CPU run."""
    import dataclasses

    import torch

    from vla_accel.models.bundle import ModelBundle
    from vla_accel.models.export_pt2 import load_program

    path = tiny_bundle.export("pt2", precision="fp32", progress=False)
    user = ModelBundle(dataclasses.replace(tiny_bundle.spec, name="user-policy", format="pt2", weights=str(path),
                                           architecture={}), cache_dir=tmp_path)
    inputs = example_inputs(user.spec, 2, seed=3)
    with torch.inference_mode():
        on_cpu = load_program(path, "cpu")(*[torch.from_numpy(inputs[n]) for n in user.spec.input_names]).numpy()
    with CudaBackend(user, BackendOptions(precision="fp32", max_batch=2)) as backend:
        for _ in range(5):
            got = backend.infer(inputs)["actions"]
        assert backend.device_info().detail["graphs_captured"] == [2]
    assert np.max(np.abs(got - on_cpu)) < CUDA_TOLERANCES["fp32"]


@pytest.mark.hardware
@pytest.mark.slow
@pytest.mark.aoti
def test_aoti_package_runs_under_cuda_graphs(cuda_ready, tiny_bundle):
    """The AOTInductor package of the network (compiled on this machine), loaded after a check in a
    child process, under a CUDA graph."""
    case = load_reference(tiny_bundle)
    options = BackendOptions(precision="bf16", max_batch=2, extra={"program": "aoti"})
    with CudaBackend(tiny_bundle, options) as backend:
        for _ in range(5):
            got = backend.infer(case.inputs)["actions"]
    assert np.max(np.abs(got - case.actions)) < CUDA_TOLERANCES["bf16"]


@pytest.mark.hardware
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_flow_program_chunk_as_one_graph_matches_the_eager_runner(cuda_ready, precision):
    """tiny-flow: prefix + every Euler step captured as one CUDA graph gives what the ProgramRunner
    computes step by step (eager on the GPU) for the same start noise."""
    from vla_accel.models import load_model

    bundle = load_model("tiny-flow")
    spec = bundle.spec
    inputs = example_inputs(spec, 2, seed=4)
    inputs[spec.program.noise] = np.random.default_rng(9).standard_normal(
        (2, spec.action.steps, spec.action.dims)).astype(np.float32)
    with CudaBackend(bundle, BackendOptions(precision=precision, max_batch=2)) as graphs, \
            CudaBackend(bundle, BackendOptions(precision=precision, max_batch=2,
                                               extra={"cuda_graphs": False})) as eager:
        for _ in range(5):
            a = graphs.infer(inputs)["actions"]
            b = eager.infer(inputs)["actions"]
        assert any(isinstance(k, tuple) and k[0] == "program" for k in graphs._graphs)
        assert graphs.last_device_ms > 0
    assert np.isfinite(a).all()
    assert np.max(np.abs(a - b)) < (1e-4 if precision == "fp32" else 2e-2)
