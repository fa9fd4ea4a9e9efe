"""core.postprocess: un-normalisation and clipping against hand-computed values, chunk fields,
refusal of non-finite or mis-shaped outputs."""
from __future__ import annotations

import numpy as np
import pytest

from vla_accel.core.postprocess import Postprocessor
from vla_accel.core.spec import ModelSpec
from vla_accel.core.types import Observation
from vla_accel.errors import BackendError


def spec_with(**action) -> ModelSpec:
    base = {"steps": 2, "dims": 3, "names": ["x", "y", "g"], "dt": 0.25, "space": "eef_delta"}
    base.update(action)
    return ModelSpec.from_dict({
        "name": "post", "cameras": [{"name": "c", "input": "img", "height": 8, "width": 8}], "action": base,
    })


RAW = np.array([[[-1.0, 0.0, 1.0], [0.5, -0.5, 0.25]]], dtype=np.float32)


def test_q01_q99_with_mask():
    post = Postprocessor(spec_with(normalization="q01_q99", low=[-2, 0, 10], high=[2, 4, 20],
                                   mask=[True, True, False]))
    out = post.unnormalize(RAW)
    # a = (x + 1) / 2 * (high - low) + low on masked dims; g passes through
    expected = [[[-2.0, 2.0, 1.0], [1.0, 1.0, 0.25]]]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.dtype == np.float32


def test_mean_std_then_clip():
    post = Postprocessor(spec_with(normalization="mean_std", mean=[1, 2, 3], std=[2, 2, 2],
                                   clip_low=[-1, 0, 0], clip_high=[1.5, 10, 4]))
    out = post.unnormalize(RAW)
    # x*std+mean = [[-1, 2, 5], [2, 1, 3.5]] -> clipped
    np.testing.assert_allclose(out, [[[-1.0, 2.0, 4.0], [1.5, 1.0, 3.5]]], atol=1e-6)


def test_none_leaves_values_and_does_not_touch_input():
    raw = RAW.copy()
    out = Postprocessor(spec_with()).unnormalize(raw)
    np.testing.assert_array_equal(out, RAW)
    assert not np.shares_memory(out, raw)
    np.testing.assert_array_equal(raw, RAW)


def test_float16_and_flat_outputs_are_accepted():
    post = Postprocessor(spec_with())
    np.testing.assert_allclose(post.unnormalize(RAW.astype(np.float16)), RAW, atol=1e-3)
    np.testing.assert_array_equal(post.unnormalize(RAW.reshape(1, 6)), RAW)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_outputs_are_refused(bad):
    raw = np.zeros((3, 2, 3), np.float32)
    raw[1, 0, 2] = bad
    with pytest.raises(BackendError) as info:
        Postprocessor(spec_with()).unnormalize(raw)
    assert info.value.reason == "non_finite_output"
    assert "[1]" in str(info.value)


@pytest.mark.parametrize("shape", [(1, 3, 3), (1, 2), (2, 3), (6,)])
def test_wrong_shapes_are_refused(shape):
    with pytest.raises(BackendError) as info:
        Postprocessor(spec_with()).unnormalize(np.zeros(shape, np.float32))
    assert info.value.reason == "bad_output_shape"


def test_batch_size_mismatch_and_integer_outputs_are_refused():
    post = Postprocessor(spec_with())
    with pytest.raises(BackendError):
        post.unnormalize(np.zeros((2, 2, 3), np.float32), expected_batch=3)
    with pytest.raises(BackendError):
        post.unnormalize(np.zeros((1, 2, 3), np.int32))


def test_chunks_carry_source_stamp_stream_and_names():
    post = Postprocessor(spec_with())
    observations = [
        Observation(images={}, instruction="a", stamp_ns=1_000, stream="left", frame_id="cam_l"),
        Observation(images={}, instruction="b", stamp_ns=2_000, stream="right", frame_id="cam_r"),
    ]
    values = post.unnormalize(np.stack([RAW[0], -RAW[0]]))
    chunks = post.to_chunks(values, observations, model="m", backend="b", timings={"infer": 3.0})
    assert [c.stamp_ns for c in chunks] == [1_000, 2_000]
    assert [c.stream for c in chunks] == ["left", "right"]
    assert [c.frame_id for c in chunks] == ["cam_l", "cam_r"]
    assert chunks[0].names == ("x", "y", "g") and chunks[0].dt == 0.25 and chunks[0].space == "eef_delta"
    assert chunks[1].model == "m" and chunks[1].backend == "b"
    np.testing.assert_array_equal(chunks[1].values, -RAW[0])
    assert chunks[0].steps == 2 and chunks[0].dims == 3
    assert chunks[0].time_of_step(1) == 1_000 + 250_000_000
    chunks[0].timings_ms["x"] = 1.0
    assert "x" not in chunks[1].timings_ms  # each chunk owns its timings
    with pytest.raises(BackendError):
        post.to_chunks(values, observations[:1])
