"""core.engine: ordering, stamps, drops, un-normalisation, backend failures and swaps, staged use
with pooled buffers; then the real tiny model on the torch backend.

The fast tests drive the engine with ``MarkerBackend``, a real Backend subclass computing a
deterministic numpy function of its inputs (each observation's first state value, broadcast over
the chunk, plus 0.01 per step). It stands in for a model, not for the unit under test: every
assertion is about the engine's own behaviour.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

from vla_accel.backends.base import Availability, Backend, BackendOptions, DeviceInfo
from vla_accel.core.engine import Engine
from vla_accel.core.metrics import InferenceMetrics
from vla_accel.core.spec import ModelSpec
from vla_accel.core.types import Observation
from vla_accel.errors import BackendError, ImageError, InstructionError

SPEC = ModelSpec.from_dict({
    "name": "engine-test",
    "cameras": [{"name": "front", "input": "image_front", "height": 16, "width": 16}],
    "instruction": {"max_tokens": 16},
    "state": {"dims": 2},
    "action": {
        "steps": 3, "dims": 2, "names": ["x", "g"], "dt": 0.1, "space": "mixed",
        "normalization": "q01_q99", "low": [-2.0, 0.0], "high": [2.0, 1.0], "mask": [True, False],
        "clip_low": [-10.0, -0.5], "clip_high": [10.0, 0.5],
    },
})
MODEL = SimpleNamespace(spec=SPEC, name="engine-test")


class MarkerBackend(Backend):
    """actions[b, s, :] = state[b, 0] + 0.01 * s (NaN when state[b, 1] is 99, to simulate a fault)."""

    name = "marker"
    kind = "cpu"

    @classmethod
    def probe(cls) -> Availability:
        return Availability(True)

    def _load(self) -> None:
        self.seen_batches: list[int] = []
        self.offset = 0.0

    def _infer(self, inputs):
        state = inputs["state"]
        assert inputs["image_front"].shape[1:] == (3, 16, 16)
        self.seen_batches.append(state.shape[0])
        steps = np.arange(3, dtype=np.float32) * 0.01
        out = state[:, 0, None, None] + steps[None, :, None] + self.offset + np.zeros((1, 1, 2), np.float32)
        out[state[:, 1] == 99] = np.nan
        return {"actions": out.astype(np.float32)}

    def _device_info(self) -> DeviceInfo:
        return DeviceInfo(backend=self.name, device="numpy", kind="cpu", parallel_units=1, precision="fp32")


class BrokenRuntimeBackend(MarkerBackend):
    name = "broken"

    def _infer(self, inputs):
        raise RuntimeError("device lost")


def frame(value: int = 100) -> np.ndarray:
    return np.full((24, 32, 3), value, np.uint8)


def obs(marker: float, stamp: int, *, instruction="move", image=None, flag: float = 0.0, stream="default",
        received_ns: int = 0) -> Observation:
    return Observation(
        images={"front": frame() if image is None else image},
        instruction=instruction,
        stamp_ns=stamp,
        state=np.array([marker, flag], np.float32),
        stream=stream,
        received_ns=received_ns,
    )


def expected_values(marker: float) -> np.ndarray:
    x = marker + np.arange(3) * 0.01
    return np.stack([(x + 1) / 2 * 4.0 - 2.0, np.clip(x, -0.5, 0.5)], axis=1)


def make_engine(**kwargs) -> Engine:
    backend = MarkerBackend(MODEL, BackendOptions())
    return Engine(MODEL, backend, **kwargs)


def test_chunks_come_back_in_order_with_stamps_and_unnormalised_values():
    engine = make_engine(max_batch=2)
    observations = [obs(0.1 * i, stamp=1000 + i, stream=f"s{i}") for i in range(5)]
    chunks = engine.infer(observations)
    assert engine.backend.seen_batches == [2, 2, 1]
    assert [c.stamp_ns for c in chunks] == [1000, 1001, 1002, 1003, 1004]
    assert [c.stream for c in chunks] == ["s0", "s1", "s2", "s3", "s4"]
    for i, chunk in enumerate(chunks):
        np.testing.assert_allclose(chunk.values, expected_values(0.1 * i), atol=1e-5)
        assert chunk.backend == "marker" and chunk.model == "engine-test" and chunk.names == ("x", "g")
        assert set(chunk.timings_ms) >= {"preprocess", "infer", "postprocess", "total", "batch_size"}
    assert chunks[4].timings_ms["batch_size"] == 1.0
    snap = engine.metrics.snapshot()
    assert snap.frames_received == 5 and snap.frames_processed == 5 and snap.frames_dropped == 0
    assert snap.stage("infer")["count"] == 3 and snap.mean_batch_size == pytest.approx(5 / 3)
    assert snap.backend == "marker" and snap.device == "numpy"


def test_bad_observations_are_dropped_counted_and_the_rest_served():
    engine = make_engine(max_batch=4)
    observations = [
        obs(0.1, 1),
        obs(0.2, 2, instruction=""),
        Observation(images={}, instruction="x", stamp_ns=3, state=np.zeros(2, np.float32)),
        obs(0.4, 4),
        obs(0.5, 5, image=np.zeros((0, 3, 3), np.uint8)),
    ]
    chunks = engine.infer(observations)
    assert [c.stamp_ns for c in chunks] == [1, 4]
    np.testing.assert_allclose(chunks[1].values, expected_values(0.4), atol=1e-5)
    snap = engine.metrics.snapshot()
    assert snap.dropped == {"empty_instruction": 1, "missing_camera": 1, "empty_image": 1}
    assert snap.frames_received == 5 and snap.frames_processed == 2


def test_infer_one_raises_the_input_error():
    engine = make_engine()
    with pytest.raises(InstructionError):
        engine.infer_one(obs(0.1, 1, instruction="x" * 5000))
    with pytest.raises(ImageError):
        engine.infer_one(obs(0.1, 1, image=np.zeros((4, 4), np.float32)))
    chunk = engine.infer_one(obs(0.3, 7))
    assert chunk.stamp_ns == 7
    assert engine.metrics.snapshot().dropped == {"instruction_too_long": 1, "unknown_encoding": 1}


def test_non_finite_output_fails_the_batch_and_releases_pooled_buffers():
    engine = make_engine(max_batch=2, memory="pool", pool_size=1)
    engine.preprocessor.strategy.timeout_s = 0.1
    with pytest.raises(BackendError) as info:
        engine.infer([obs(0.1, 1), obs(0.2, 2, flag=99)])
    assert info.value.reason == "non_finite_output"
    snap = engine.metrics.snapshot()
    assert snap.backend_errors == {"non_finite_output": 1} and snap.dropped == {"backend_error": 2}
    assert snap.frames_processed == 0
    # the only pooled buffer set came back: the next batch runs
    assert engine.infer([obs(0.3, 3)])[0].stamp_ns == 3


def test_backend_failures_are_counted_wrapped_and_release_buffers():
    engine = make_engine(memory="pool", pool_size=1)
    engine.preprocessor.strategy.timeout_s = 0.1
    engine.backend = BrokenRuntimeBackend(MODEL, BackendOptions()).load()
    with pytest.raises(BackendError) as info:
        engine.infer([obs(0.1, 1)])
    assert info.value.reason == "backend_error" and "device lost" in str(info.value)
    engine.backend = MarkerBackend(MODEL, BackendOptions(fault="marker:infer:after=1")).load()
    engine.infer([obs(0.1, 2)])
    with pytest.raises(BackendError) as info:
        engine.infer([obs(0.1, 3)])
    assert info.value.reason == "injected_fault"
    snap = engine.metrics.snapshot()
    assert snap.backend_errors == {"backend_error": 1, "injected_fault": 1}
    assert snap.dropped == {"backend_error": 2} and snap.frames_processed == 1


def test_backend_can_be_swapped_at_run_time():
    engine = make_engine()
    first = engine.infer_one(obs(0.1, 1))
    replacement = MarkerBackend(MODEL, BackendOptions()).load()
    replacement.name = "marker-2"
    replacement.offset = 0.5
    engine.backend = replacement
    engine.refresh_device()
    second = engine.infer_one(obs(0.1, 2))
    assert first.backend == "marker" and second.backend == "marker-2"
    np.testing.assert_allclose(second.values, expected_values(0.6), atol=1e-5)
    assert engine.metrics.snapshot().backend == "marker-2"


def test_staged_api_overlaps_batches_with_pooled_buffers():
    engine = make_engine(max_batch=1, memory="pool", pool_size=2)
    first = engine.prepare([obs(0.1, 1)])
    second = engine.prepare([obs(0.2, 2)])  # prepared while the first is still pending
    out_second = engine.run(second)
    out_first = engine.run(first)
    [c1] = engine.finish(first, out_first)
    [c2] = engine.finish(second, out_second)
    np.testing.assert_allclose(c1.values, expected_values(0.1), atol=1e-5)
    np.testing.assert_allclose(c2.values, expected_values(0.2), atol=1e-5)
    assert engine.preprocessor.strategy.free_count == 2
    empty = engine.prepare([])
    assert engine.run(empty) == {} and engine.finish(empty, {}) == []


def test_ages_and_total_latency_use_received_time():
    engine = make_engine()
    received = time.monotonic_ns() - 30_000_000  # the frame arrived 30 ms ago
    chunk = engine.infer_one(obs(0.1, 1, received_ns=received))
    snap = engine.metrics.snapshot()
    assert snap.stage("age_at_start")["p50"] >= 30.0
    assert chunk.timings_ms["total"] >= 30.0 and snap.stage("total")["p50"] == pytest.approx(chunk.timings_ms["total"])


def test_shared_metrics_object_is_used():
    metrics = InferenceMetrics()
    engine = Engine(MODEL, MarkerBackend(MODEL), metrics=metrics)
    engine.infer([obs(0.1, 1)])
    assert engine.metrics is metrics and metrics.snapshot().frames_processed == 1
    assert metrics.model == "engine-test"


def test_tiny_model_on_torch_backend():
    pytest.importorskip("torch", reason="missing: torch; install with pip install torch==2.13.0 (CPU wheel)")
    import torch

    from vla_accel.backends.registry import create_backend
    from vla_accel.models import load_model

    bundle = load_model("tiny")
    backend = create_backend("torch", bundle, BackendOptions(threads=1))
    engine = Engine(bundle, backend, max_batch=2)
    rng = np.random.default_rng(0)
    camera = bundle.spec.cameras[0].name
    observations = [
        Observation(images={camera: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)},
                    instruction=text, stamp_ns=10 + i, state=rng.standard_normal(8).astype(np.float32))
        for i, text in enumerate(["pick up the cup", "open the drawer"])
    ]
    chunks = engine.infer(observations)
    assert [c.stamp_ns for c in chunks] == [10, 11]
    action = bundle.spec.action
    # Independent path: the torch module on the same preprocessed inputs, un-normalised by hand.
    prepared = engine.preprocessor.prepare(observations)
    module = bundle.torch_module("cpu")
    with torch.inference_mode():
        raw = module(*[torch.from_numpy(np.ascontiguousarray(prepared.inputs[n]))
                       for n in bundle.spec.input_names]).numpy()
    low, high = np.array(action.low), np.array(action.high)
    mask = np.array(action.mask)
    want = np.where(mask, (raw + 1) / 2 * (high - low) + low, raw)
    want = np.clip(want, action.clip_low, action.clip_high)
    for i, chunk in enumerate(chunks):
        assert chunk.values.shape == (action.steps, action.dims)
        np.testing.assert_allclose(chunk.values, want[i], rtol=1e-5, atol=1e-6)
    assert not np.allclose(chunks[0].values, chunks[1].values)
    assert engine.metrics.snapshot().backend == "torch"


def test_instruction_longer_than_the_context_is_counted_and_logged(caplog):
    engine = Engine(MODEL, MarkerBackend(MODEL))
    limit = SPEC.instruction.max_tokens
    with caplog.at_level("WARNING", logger="vla_accel.core.engine"):
        engine.infer([obs(0.1, 1, instruction="x" * (limit - 2))])  # bos + bytes + eos: fits exactly
        assert engine.metrics.snapshot().extra == {}
        engine.infer([obs(0.1, 2, instruction="y" * (limit + 5))])
        engine.infer([obs(0.1, 3, instruction="y" * (limit + 5))])  # same text: tokenised once
    assert engine.metrics.snapshot().extra == {"events_instruction_truncated": 1}
    assert engine.metrics.as_dict()["events_instruction_truncated"] == 1
    assert any("instruction_truncated" in r.getMessage() or "is cut" in r.getMessage() for r in caplog.records)
