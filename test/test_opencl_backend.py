"""The ``opencl`` backend: its kernels against numpy, the whole network against the committed torch
references, program caching and precompiled binaries, device choice and bad input.

Runs wherever an OpenCL platform exists (PoCL on the CPU here: apt-get install -y pocl-opencl-icd
ocl-icd-libopencl1); skips naming the missing piece elsewhere.
"""
from __future__ import annotations

import numpy as np
import pytest

from vla_accel.backends.base import BackendOptions

from vla_accel.core.spec import example_inputs
from vla_accel.backends.opencl_backend import OpenCLBackend
from vla_accel.errors import BackendError, InputError, ModelFileError
from vla_accel.models.reference import load_reference

# Max |a - a_ref| on normalised actions for this fp32 re-implementation (measured ~1e-6 on PoCL).
OPENCL_TOLERANCE = 1e-3


def _require_opencl():
    availability = OpenCLBackend.probe()
    if not availability.ok:
        pytest.skip(f"opencl missing: {', '.join(availability.missing)}; {availability.hint}")
    import pyopencl as cl

    try:
        platforms = cl.get_platforms()
    except cl.LogicError as exc:
        pytest.skip(f"opencl missing: no OpenCL platform ({exc}); install pocl-opencl-icd ocl-icd-libopencl1")
    if not any(p.get_devices() for p in platforms):
        pytest.skip("opencl missing: no OpenCL device; install pocl-opencl-icd ocl-icd-libopencl1")
    return cl


@pytest.fixture(scope="module")
def cl():
    return _require_opencl()


@pytest.fixture(scope="module")
def tiny_opencl(cl, tiny_bundle, tmp_path_factory):
    backend = OpenCLBackend(
        tiny_bundle, BackendOptions(max_batch=2, cache_dir=tmp_path_factory.mktemp("opencl_cache"))
    ).load()
    yield backend
    backend.close()


def _run_kernel(backend, name, global_size, local_size, *args):
    kernel = backend._kernel(name, *args)  # noqa: SLF001 (the backend's own launch helper)
    backend._cl.enqueue_nd_range_kernel(backend.queue, kernel, global_size, local_size)
    backend.queue.finish()


def _buffer(backend, array):
    cl = backend._cl
    return cl.Buffer(backend.context, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR,
                     hostbuf=np.ascontiguousarray(array))


def _read(backend, buffer, shape, dtype=np.float32):
    out = np.empty(shape, dtype=dtype)
    backend._cl.enqueue_copy(backend.queue, out, buffer, is_blocking=True)
    return out


# --- kernels -------------------------------------------------------------------------------------
def _linear_global_size(backend, kernel_name, m, n):
    block = backend.tile * (backend.wpt if kernel_name == "linear_blocked" else 1)
    return (-(-n // block) * backend.tile, -(-m // block) * backend.tile)


@pytest.mark.parametrize("kernel_name", ["linear", "linear_blocked"])
@pytest.mark.parametrize("m,n,k", [(1, 7, 5), (37, 45, 70), (16, 32, 16), (130, 70, 33)])
@pytest.mark.parametrize("activation", [0, 1, 2])
def test_linear_kernel_matches_numpy(tiny_opencl, kernel_name, m, n, k, activation):
    rng = np.random.default_rng(m * 1000 + n + activation)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.2
    bias = rng.standard_normal(n).astype(np.float32)
    residual = rng.standard_normal((m, n)).astype(np.float32)
    c_buf = _buffer(tiny_opencl, residual)
    i32 = np.int32
    be = tiny_opencl
    _run_kernel(be, kernel_name, _linear_global_size(be, kernel_name, m, n), (be.tile, be.tile),
                _buffer(be, a), i32(m), i32(0), i32(0), i32(k), _buffer(be, w), _buffer(be, bias),
                c_buf, i32(m), i32(0), i32(0), i32(n), i32(m), i32(n), i32(k), i32(activation), i32(1))
    got = _read(be, c_buf, (m, n))
    x = a.astype(np.float64) @ w.T.astype(np.float64) + bias
    if activation == 1:
        x = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    elif activation == 2:
        x = np.tanh(x)
    np.testing.assert_allclose(got, x + residual, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel_name", ["linear", "linear_blocked"])
def test_linear_kernel_row_mapping_writes_only_its_rows(tiny_opencl, kernel_name):
    """The patch GEMM writes rows (b, offset..offset+P) of a (B, T, D) buffer and nothing else."""
    be, i32 = tiny_opencl, np.int32
    batch, seq, width, patches, offset, k = 2, 9, 5, 3, 4, 6
    rng = np.random.default_rng(1)
    a = rng.standard_normal((batch * patches, k)).astype(np.float32)
    w = rng.standard_normal((width, k)).astype(np.float32)
    bias = np.zeros(width, np.float32)
    poison = np.full((batch * seq, width), 777.0, np.float32)
    c_buf = _buffer(be, poison)
    rows = batch * patches
    _run_kernel(be, kernel_name, _linear_global_size(be, kernel_name, rows, width), (be.tile, be.tile),
                _buffer(be, a), i32(rows), i32(0), i32(0), i32(k), _buffer(be, w), _buffer(be, bias),
                c_buf, i32(patches), i32(seq), i32(offset), i32(width),
                i32(rows), i32(width), i32(k), i32(0), i32(0))
    got = _read(be, c_buf, (batch, seq, width))
    expected = poison.reshape(batch, seq, width).copy()
    expected[:, offset:offset + patches] = (a @ w.T).reshape(batch, patches, width)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_layer_norm_kernel_matches_numpy(tiny_opencl):
    be = tiny_opencl
    rows, width = 5, be.config.hidden_dim
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((rows, width)) * 3 + 1).astype(np.float32)
    gamma = rng.standard_normal(width).astype(np.float32)
    beta = rng.standard_normal(width).astype(np.float32)
    out = _buffer(be, np.zeros_like(x))
    i32, wg = np.int32, be.reduce_wg
    _run_kernel(be, "layer_norm", (wg, rows), (wg, 1), _buffer(be, x), i32(rows), i32(0), i32(0), out,
                _buffer(be, gamma), _buffer(be, beta), i32(width), np.float32(1e-6), be._cl.LocalMemory(4 * wg))
    mean = x.mean(axis=1, keepdims=True)
    var = x.var(axis=1, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-6) * gamma + beta
    np.testing.assert_allclose(_read(be, out, x.shape), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel_name", ["attention", "attention_blocked"])
@pytest.mark.parametrize("seq", [11, 37])
def test_attention_kernel_masks_padded_keys(tiny_opencl, kernel_name, seq):
    from vla_accel.backends.opencl_backend import ATTENTION_QUERIES, ATTENTION_WG

    be = tiny_opencl
    batch, heads, head_dim = 2, 3, 8
    width = heads * head_dim
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((batch, seq, 3 * width)).astype(np.float32)
    bias = np.zeros((batch, seq), np.float32)
    bias[0, 4:7] = -1.0e4  # padded keys of sample 0
    out = _buffer(be, np.full((batch * seq, width), 777.0, np.float32))
    i32, f32, wg = np.int32, np.float32, be.attention_wg
    lm = be._cl.LocalMemory
    common = (_buffer(be, qkv), _buffer(be, bias), out, i32(seq), i32(width), i32(head_dim), f32(1 / np.sqrt(head_dim)))
    if kernel_name == "attention":
        _run_kernel(be, "attention", (wg * seq, heads, batch), (wg, 1, 1), *common,
                    lm(4 * seq), lm(4 * wg), lm(4 * head_dim))
    else:
        qb, lanes = ATTENTION_QUERIES, ATTENTION_WG // ATTENTION_QUERIES
        _run_kernel(be, "attention_blocked", (ATTENTION_WG * -(-seq // qb), heads, batch), (ATTENTION_WG, 1, 1),
                    *common, lm(4 * qb * (head_dim + 1)), lm(4 * qb * seq), lm(8 * qb * lanes), lm(8 * qb))
    q, k, v = np.split(qkv.reshape(batch, seq, 3, heads, head_dim), 3, axis=2)
    q, k, v = (t[:, :, 0].transpose(0, 2, 1, 3) for t in (q, k, v))  # (B, H, T, Dh)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head_dim) + bias[:, None, None, :]
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = (weights @ v).transpose(0, 2, 1, 3).reshape(batch * seq, width)
    np.testing.assert_allclose(_read(be, out, expected.shape), expected, atol=2e-5, rtol=1e-5)
    # a padded key contributes nothing: changing its value leaves sample 0 unchanged
    assert np.allclose(weights[0, :, :, 4:7], 0.0)


# --- the whole network --------------------------------------------------------------------------
def test_tiny_matches_committed_reference(tiny_opencl, tiny_bundle):
    case = load_reference(tiny_bundle)
    got = tiny_opencl.infer(case.inputs)["actions"]
    assert got.shape == case.actions.shape and got.dtype == np.float32
    assert np.isfinite(got).all()
    assert np.max(np.abs(got - case.actions)) < OPENCL_TOLERANCE


def test_batch_sizes_reuse_buffers_and_agree(tiny_opencl, tiny_bundle):
    case = load_reference(tiny_bundle)
    one = tiny_opencl.infer({k: v[1:2] for k, v in case.inputs.items()})["actions"]
    assert np.max(np.abs(one[0] - case.actions[1])) < OPENCL_TOLERANCE
    again = tiny_opencl.infer(case.inputs)["actions"]
    assert np.max(np.abs(again - case.actions)) < OPENCL_TOLERANCE
    assert sorted(tiny_opencl._plans) == [1, 2]  # one launch plan per batch size, built once


def test_two_cameras_match_reference(cl, tmp_path):
    from vla_accel.models import load_model

    bundle = load_model("tiny-2cam")
    case = load_reference(bundle)
    with OpenCLBackend(bundle, BackendOptions(max_batch=2, cache_dir=tmp_path)) as backend:
        got = backend.infer(case.inputs)["actions"]
    assert np.max(np.abs(got - case.actions)) < OPENCL_TOLERANCE


@pytest.mark.slow
def test_base_matches_committed_reference(cl, base_bundle, tmp_path):
    case = load_reference(base_bundle)
    with OpenCLBackend(base_bundle, BackendOptions(max_batch=2, cache_dir=tmp_path)) as backend:
        got = backend.infer(case.inputs)["actions"]
    assert np.max(np.abs(got - case.actions)) < OPENCL_TOLERANCE


# --- program cache and precompiled binaries --------------------------------------------------------
def test_program_binary_is_cached_and_reused(cl, tiny_bundle, tmp_path):
    options = BackendOptions(cache_dir=tmp_path)
    with OpenCLBackend(tiny_bundle, options) as first:
        assert first.device_info().detail["program"] == "source"
    cached = list((tmp_path / "opencl").glob("reference_vla-*.bin"))
    assert len(cached) == 1 and cached[0].stat().st_size > 0
    with OpenCLBackend(tiny_bundle, options) as second:
        assert second.device_info().detail["program"] == "cache"
        case = load_reference(tiny_bundle)
        got = second.infer({k: v[:1] for k, v in case.inputs.items()})["actions"]
        assert np.max(np.abs(got[0] - case.actions[0])) < OPENCL_TOLERANCE


def test_corrupt_cached_binary_is_rebuilt(cl, tiny_bundle, tmp_path):
    options = BackendOptions(cache_dir=tmp_path)
    OpenCLBackend(tiny_bundle, options).load().close()
    (cached,) = (tmp_path / "opencl").glob("reference_vla-*.bin")
    cached.write_bytes(b"not a program binary")
    with OpenCLBackend(tiny_bundle, options) as backend:
        assert backend.device_info().detail["program"] == "source"
    assert cached.read_bytes() != b"not a program binary"


def test_unwritable_cache_does_not_stop_loading(cl, tiny_bundle, tmp_path):
    not_a_folder = tmp_path / "cache_is_a_file"
    not_a_folder.write_text("x")
    with OpenCLBackend(tiny_bundle, BackendOptions(cache_dir=not_a_folder)) as backend:
        assert backend.device_info().detail["program"] == "source"


def test_bad_gemm_geometry_is_rejected(cl, tiny_bundle, tmp_path):
    with pytest.raises(BackendError) as err:
        OpenCLBackend(tiny_bundle, BackendOptions(cache_dir=tmp_path, extra={"wpt": 0})).load()
    assert err.value.reason == "bad_option"


def test_precompiled_program_binary_loads(cl, tiny_bundle, tmp_path):
    """The FPGA path (options.extra['program_binary']) exercised with a binary this platform made."""
    OpenCLBackend(tiny_bundle, BackendOptions(cache_dir=tmp_path)).load().close()
    (binary,) = (tmp_path / "opencl").glob("reference_vla-*.bin")
    options = BackendOptions(cache_dir=tmp_path / "other", extra={"program_binary": str(binary)})
    with OpenCLBackend(tiny_bundle, options) as backend:
        assert backend.device_info().detail["program"] == f"binary:{binary}"
        case = load_reference(tiny_bundle)
        got = backend.infer({k: v[:1] for k, v in case.inputs.items()})["actions"]
    assert np.max(np.abs(got[0] - case.actions[0])) < OPENCL_TOLERANCE


def test_bad_program_binary_gives_clear_errors(cl, tiny_bundle, tmp_path):
    missing = BackendOptions(extra={"program_binary": str(tmp_path / "board.aocx")})
    with pytest.raises(ModelFileError, match="board.aocx"):
        OpenCLBackend(tiny_bundle, missing).load()
    garbage = tmp_path / "board.xclbin"
    garbage.write_bytes(b"\x00garbage" * 64)
    with pytest.raises(BackendError) as err:
        OpenCLBackend(tiny_bundle, BackendOptions(extra={"program_binary": str(garbage)})).load()
    assert err.value.reason == "bad_program_binary"
    assert "Xilinx" in str(err.value) and "reference_vla.cl" in str(err.value)


# --- device choice, device info, bad input --------------------------------------------------------
def test_device_selection(cl, tiny_bundle, tmp_path):
    from vla_accel.backends.opencl_backend import list_devices

    devices = list_devices()
    first = devices[0]
    for selector in (first["index"], first["name"][:6].upper()):
        backend = OpenCLBackend(tiny_bundle, BackendOptions(device=selector, cache_dir=tmp_path)).load()
        assert backend.device_info().device == first["name"]
        backend.close()
    for selector in ("9:9", "no-such-opencl-device"):
        with pytest.raises(BackendError) as err:
            OpenCLBackend(tiny_bundle, BackendOptions(device=selector, cache_dir=tmp_path)).load()
        assert err.value.reason == "unknown_device"
        assert first["name"] in str(err.value)  # the message lists what exists


def test_profile_times_every_stage(tiny_opencl, tiny_bundle):
    stages = tiny_opencl.profile(example_inputs(tiny_bundle.spec, 1, seed=0), repeats=1)
    assert {"qkv", "attention", "fc1 + gelu", "head + tanh"} <= set(stages)
    assert all(ms >= 0 for ms in stages.values()) and sum(stages.values()) > 0


def test_device_info(tiny_opencl):
    info = tiny_opencl.device_info()
    assert info.backend == "opencl" and info.precision == "fp32"
    assert info.parallel_units == info.detail["compute_units"] >= 1
    assert info.memory_bytes > 0 and info.detail["local_memory_bytes"] > 0
    assert info.detail["max_work_group_size"] >= tiny_opencl.tile**2
    assert info.kind in ("cpu", "gpu", "fpga")
    assert "launch" not in info.detail  # plain data only


def test_kernel_launch_plan_describes_the_network(tiny_opencl):
    launches = tiny_opencl.kernel_launches(1)
    depth = tiny_opencl.config.depth
    assert sum("attention" in what for what in launches) == depth
    assert launches[-1] == "head + tanh"


def test_bad_inputs_raise_input_errors(tiny_opencl, tiny_bundle):
    inputs = example_inputs(tiny_bundle.spec, 3, seed=0)
    with pytest.raises(InputError) as err:
        tiny_opencl.infer(inputs)
    assert err.value.reason == "batch_too_large"
    inputs = example_inputs(tiny_bundle.spec, 1, seed=0)
    with pytest.raises(InputError):
        tiny_opencl.infer({k: v for k, v in inputs.items() if k != "state"})
    bad = dict(inputs, image_primary=inputs["image_primary"][:, :, :64])
    with pytest.raises(InputError) as err:
        tiny_opencl.infer(bad)
    assert err.value.reason == "bad_input_shape"
    tokens = inputs["tokens"].copy()
    tokens[0, 0] = 10_000
    with pytest.raises(InputError) as err:
        tiny_opencl.infer(dict(inputs, tokens=tokens))
    assert err.value.reason == "bad_tokens"
    # int64 tokens (what numpy gives by default) are accepted and converted
    out = tiny_opencl.infer(dict(inputs, tokens=inputs["tokens"].astype(np.int64)))["actions"]
    assert out.shape == (1, tiny_bundle.spec.action.steps, tiny_bundle.spec.action.dims)


def test_unsupported_precision_is_rejected(tiny_bundle):
    with pytest.raises(BackendError) as err:
        OpenCLBackend(tiny_bundle, BackendOptions(precision="fp16"))
    assert err.value.reason == "bad_precision"
