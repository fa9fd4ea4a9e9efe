"""InferenceLoop: serial and pipelined, latest-frame policy, micro-batching, errors and shutdown.

What is under test is the scheduler, so most tests run the real Engine (real Preprocessor and
Postprocessor, real metrics) on a small numpy Backend defined here: it turns each row's robot state
into that row's actions (so a chunk can be traced back to its observation), records the batch
sizes it saw, and can be told to be slow, to fail or to hang. One test runs the real tiny model
through the torch backend.
"""
from __future__ import annotations

import threading
import time
from typing import Mapping

import numpy as np
import pytest

from vla_accel.backends.base import Availability, Backend, BackendOptions, DeviceInfo
from vla_accel.core.engine import Engine
from vla_accel.core.scheduling import InferenceLoop
from vla_accel.core.types import Observation
from vla_accel.errors import BackendError

STOP_BOUND_S = 10.0  # "did not hang": generous, never a speed claim


class StateEchoBackend(Backend):
    """actions[b, :, 0] = state[b, 0]; the other dims 0. Optional delay, failures and a hang."""

    name = "state-echo"

    def __init__(self, model, options=None, *, delay_s=0.0, per_row_s=0.0, fail_calls=(), hang_s=0.0):
        super().__init__(model, options or BackendOptions(max_batch=8))
        self.delay_s, self.per_row_s = delay_s, per_row_s
        self.fail_calls = set(fail_calls)
        self.hang_s = hang_s
        self.batch_sizes: list[int] = []
        self.lock = threading.Lock()

    @classmethod
    def probe(cls) -> Availability:
        return Availability(ok=True)

    def _load(self) -> None:
        self.steps, self.dims = self.spec.action.steps, self.spec.action.dims

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        state = inputs[self.spec.state.input]
        with self.lock:
            call = len(self.batch_sizes)
            self.batch_sizes.append(state.shape[0])
        if self.hang_s:
            time.sleep(self.hang_s)
        if call in self.fail_calls:
            raise BackendError(f"state-echo: failing call {call} as asked", reason="device_lost")
        if self.delay_s or self.per_row_s:
            time.sleep(self.delay_s + self.per_row_s * state.shape[0])
        out = np.zeros((state.shape[0], self.steps, self.dims), dtype=np.float32)
        out[:, :, 0] = state[:, :1]
        return {self.spec.action.output: out}

    def _device_info(self) -> DeviceInfo:
        return DeviceInfo(backend=self.name, device="CPU", kind="cpu", parallel_units=1, precision="fp32")


def make_obs(spec, stamp: int, stream: str = "default", marker: float = 0.0) -> Observation:
    image = np.full((48, 64, 3), stamp % 251, dtype=np.uint8)
    state = np.zeros(spec.state.dims, dtype=np.float32)
    state[0] = marker
    return Observation(images={spec.cameras[0].name: image}, instruction="pick up the cube", stamp_ns=stamp,
                       state=state, stream=stream)


def marker_of(chunk) -> float:
    # q01_q99 un-normalisation of dim 0 (x): a = x * (high - low) / 2 + (high + low) / 2
    return float(chunk.values[0, 0]) / 0.03


class Collector:
    def __init__(self):
        self.chunks = []
        self.errors = []
        self.lock = threading.Lock()
        self.event = threading.Event()

    def on_chunks(self, chunks):
        with self.lock:
            self.chunks.extend(chunks)
        self.event.set()

    def on_error(self, exc):
        with self.lock:
            self.errors.append(exc)

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.chunks) >= count:
                    return True
            time.sleep(0.005)
        return False


@pytest.fixture()
def engine_factory(tiny_bundle):
    made = []

    def make(memory="static", max_batch=1, **backend_kwargs):
        backend = StateEchoBackend(tiny_bundle, BackendOptions(max_batch=max_batch), **backend_kwargs)
        engine = Engine(tiny_bundle, backend, max_batch=max_batch, memory=memory, pool_size=2)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def run_one_by_one(loop, collector, spec, count, stream="default"):
    for i in range(count):
        loop.submit(make_obs(spec, 1000 + i, stream, marker=i / count))
        assert collector.wait_for(i + 1), f"chunk {i} never came"


@pytest.mark.parametrize("pipeline", [False, True])
def test_every_frame_comes_back_in_order_with_its_stamp(engine_factory, tiny_bundle, pipeline):
    engine = engine_factory(memory="pool" if pipeline else "static")
    collector = Collector()
    loop = InferenceLoop(engine, pipeline=pipeline, on_chunks=collector.on_chunks, on_error=collector.on_error)
    with loop:
        run_one_by_one(loop, collector, tiny_bundle.spec, 20)
    assert [c.stamp_ns for c in collector.chunks] == [1000 + i for i in range(20)]
    np.testing.assert_allclose([marker_of(c) for c in collector.chunks], [i / 20 for i in range(20)], atol=1e-5)
    assert not collector.errors and not loop.stuck_threads
    snap = engine.metrics.snapshot()
    assert snap.frames_received == 20 and snap.frames_processed == 20 and snap.frames_dropped == 0
    assert snap.stage("age_at_start")["count"] == 20


@pytest.mark.parametrize("pipeline", [False, True])
def test_a_slow_backend_supersedes_frames_and_every_frame_is_accounted_for(engine_factory, tiny_bundle, pipeline):
    engine = engine_factory(memory="pool" if pipeline else "static", delay_s=0.03)
    collector = Collector()
    loop = InferenceLoop(engine, pipeline=pipeline, on_chunks=collector.on_chunks).start()
    for i in range(60):  # ~6x faster than the backend
        loop.submit(make_obs(tiny_bundle.spec, 1000 + i))
        time.sleep(0.005)
    assert loop.pending_frames() <= 1  # one slot per stream: no backlog
    deadline = time.monotonic() + STOP_BOUND_S
    while not loop.idle and time.monotonic() < deadline:
        time.sleep(0.005)
    assert loop.idle
    assert loop.stop(timeout=STOP_BOUND_S)
    snap = engine.metrics.snapshot()
    stamps = [c.stamp_ns for c in collector.chunks]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # never an older frame after a newer
    assert snap.frames_superseded > 0
    assert snap.frames_received == 60 == snap.frames_processed + snap.frames_dropped
    assert stamps[-1] == 1059  # the newest frame is never the one dropped


def test_pipeline_needs_pooled_buffers(engine_factory):
    with pytest.raises(ValueError, match="pool"):
        InferenceLoop(engine_factory(memory="static"), pipeline=True, on_chunks=print)


def test_micro_batching_groups_streams_and_returns_each_chunk_to_its_stream(engine_factory, tiny_bundle):
    streams = [f"/robot{i}" for i in range(4)]
    engine = engine_factory(max_batch=4)
    collector = Collector()
    loop = InferenceLoop(engine, batch_size=4, max_batch_delay_ms=2000.0, on_chunks=collector.on_chunks)
    loop.register_streams(streams)
    with loop:
        for round_ in range(3):
            for k, stream in enumerate(streams):
                loop.submit(make_obs(tiny_bundle.spec, 100 * round_ + k, stream, marker=0.1 * k + 0.01 * round_))
            assert collector.wait_for(4 * (round_ + 1))
    assert engine.backend.batch_sizes == [4, 4, 4]  # waited for every stream, within the delay
    for chunk in collector.chunks:
        k, round_ = int(chunk.stamp_ns % 100), int(chunk.stamp_ns // 100)
        assert chunk.stream == streams[k]
        assert marker_of(chunk) == pytest.approx(0.1 * k + 0.01 * round_, abs=1e-5)


def test_micro_batching_does_not_wait_past_the_delay(engine_factory, tiny_bundle):
    engine = engine_factory(max_batch=4)
    collector = Collector()
    loop = InferenceLoop(engine, batch_size=4, max_batch_delay_ms=30.0, on_chunks=collector.on_chunks)
    loop.register_streams(["a", "b", "c"])
    with loop:
        loop.submit(make_obs(tiny_bundle.spec, 1, "a"))  # b and c never send
        assert collector.wait_for(1, timeout=STOP_BOUND_S)
    assert engine.backend.batch_sizes == [1]


@pytest.mark.parametrize("pipeline", [False, True])
def test_backend_errors_are_reported_and_the_loop_keeps_going(engine_factory, tiny_bundle, pipeline):
    engine = engine_factory(memory="pool" if pipeline else "static", fail_calls={2, 3})
    collector = Collector()
    loop = InferenceLoop(engine, pipeline=pipeline, on_chunks=collector.on_chunks, on_error=collector.on_error)
    with loop:
        for i in range(8):
            loop.submit(make_obs(tiny_bundle.spec, 1000 + i))
            deadline = time.monotonic() + STOP_BOUND_S
            while len(collector.chunks) + len(collector.errors) < i + 1 and time.monotonic() < deadline:
                time.sleep(0.005)
    assert [e.reason for e in collector.errors] == ["device_lost", "device_lost"]
    assert [c.stamp_ns for c in collector.chunks] == [1000, 1001, 1004, 1005, 1006, 1007]
    snap = engine.metrics.snapshot()
    assert snap.dropped.get("backend_error") == 2 and snap.backend_errors == {"device_lost": 2}
    assert snap.frames_received == 8 == snap.frames_processed + snap.frames_dropped


@pytest.mark.parametrize("pipeline", [False, True])
def test_stop_never_hangs_even_inside_a_stuck_backend_call(engine_factory, tiny_bundle, pipeline):
    engine = engine_factory(memory="pool" if pipeline else "static", hang_s=3.0)
    loop = InferenceLoop(engine, pipeline=pipeline, on_chunks=lambda chunks: None).start()
    loop.submit(make_obs(tiny_bundle.spec, 1))
    deadline = time.monotonic() + STOP_BOUND_S
    while not engine.backend.batch_sizes and time.monotonic() < deadline:
        time.sleep(0.005)
    started = time.monotonic()
    assert loop.stop(timeout=0.2) is False  # it says a thread is still in the backend call
    assert time.monotonic() - started < STOP_BOUND_S
    assert any(name.endswith(("serial", "infer")) for name in loop.stuck_threads)
    with pytest.raises(RuntimeError, match="still inside a backend call"):
        loop.start()


@pytest.mark.parametrize("pipeline", [False, True])
def test_stop_is_prompt_when_idle_and_can_restart(engine_factory, tiny_bundle, pipeline):
    engine = engine_factory(memory="pool" if pipeline else "static")
    collector = Collector()
    loop = InferenceLoop(engine, pipeline=pipeline, on_chunks=collector.on_chunks)
    assert loop.stop() is True  # never started
    for attempt in range(2):
        loop.start()
        loop.submit(make_obs(tiny_bundle.spec, attempt))
        assert collector.wait_for(attempt + 1)
        assert loop.stop(timeout=STOP_BOUND_S) is True
    assert loop.stop() is True  # twice is fine
    assert [c.stamp_ns for c in collector.chunks] == [0, 1]


def test_a_consumer_that_raises_does_not_kill_the_loop(engine_factory, tiny_bundle):
    engine = engine_factory()
    seen, errors = [], []

    def flaky(chunks):
        seen.extend(chunks)
        if len(seen) == 1:
            raise RuntimeError("consumer bug")

    with InferenceLoop(engine, on_chunks=flaky, on_error=errors.append) as loop:
        for i in range(3):
            loop.submit(make_obs(tiny_bundle.spec, i))
            deadline = time.monotonic() + STOP_BOUND_S
            while len(seen) < i + 1 and time.monotonic() < deadline:
                time.sleep(0.005)
    assert len(seen) == 3 and [type(e) for e in errors] == [RuntimeError]


def test_adaptive_batch_grows_when_latency_is_far_under_target(engine_factory, tiny_bundle):
    streams = [f"cam{i}" for i in range(4)]
    engine = engine_factory(max_batch=4)
    collector = Collector()
    loop = InferenceLoop(engine, batch_size=4, max_batch_delay_ms=50.0, adaptive_batch=True,
                         target_latency_ms=5000.0, on_chunks=collector.on_chunks)
    loop.sizer.explore_every = 2
    loop.register_streams(streams)
    assert loop.current_batch_limit == 1
    with loop:
        for round_ in range(12):
            for k, stream in enumerate(streams):
                loop.submit(make_obs(tiny_bundle.spec, 100 * round_ + k, stream))
            assert collector.wait_for(4 * (round_ + 1))
    assert loop.current_batch_limit == 4 and engine.backend.batch_sizes[-1] == 4
    assert engine.backend.batch_sizes[0] == 1


def test_parameters_are_checked(engine_factory):
    engine = engine_factory(max_batch=2)
    with pytest.raises(ValueError, match="batch_size"):
        InferenceLoop(engine, batch_size=3, on_chunks=print)
    with pytest.raises(ValueError, match="target_latency_ms"):
        InferenceLoop(engine, batch_size=2, adaptive_batch=True, on_chunks=print)


def test_real_tiny_model_through_the_pipelined_loop(tiny_bundle):
    from vla_accel.backends.registry import create_backend

    backend = create_backend("torch", tiny_bundle, BackendOptions(max_batch=2, threads=1))
    engine = Engine(tiny_bundle, backend, max_batch=2, memory="pool")
    collector = Collector()
    loop = InferenceLoop(engine, batch_size=2, max_batch_delay_ms=500.0, pipeline=True,
                         on_chunks=collector.on_chunks, on_error=collector.on_error)
    loop.register_streams(["left", "right"])
    try:
        with loop:
            for i in range(3):
                loop.submit(make_obs(tiny_bundle.spec, 10 * i, "left", marker=0.5))
                loop.submit(make_obs(tiny_bundle.spec, 10 * i + 1, "right", marker=-0.5))
                assert collector.wait_for(2 * (i + 1), timeout=60.0)
    finally:
        engine.close()
    assert not collector.errors
    by_stream = {s: [c.stamp_ns for c in collector.chunks if c.stream == s] for s in ("left", "right")}
    assert by_stream == {"left": [0, 10, 20], "right": [1, 11, 21]}
    for chunk in collector.chunks:
        assert chunk.values.shape == (tiny_bundle.spec.action.steps, tiny_bundle.spec.action.dims)
        assert np.all(np.isfinite(chunk.values)) and chunk.backend == "torch"
    # Same frame content, same model: the two streams' chunks must differ only through their inputs.
    direct = Engine(tiny_bundle, create_backend("torch", tiny_bundle, BackendOptions(max_batch=1, threads=1)))
    try:
        expected = direct.infer_one(make_obs(tiny_bundle.spec, 20, "left", marker=0.5))
    finally:
        direct.close()
    got = next(c for c in collector.chunks if c.stamp_ns == 20)
    np.testing.assert_allclose(got.values, expected.values, atol=1e-5)


class GatedBackend(StateEchoBackend):
    """Call 0 blocks until the test opens the gate: lets a test look at the loop mid-inference."""

    def __init__(self, model, options=None):
        super().__init__(model, options)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def _infer(self, inputs):
        if not self.entered.is_set():
            self.entered.set()
            self.gate.wait(STOP_BOUND_S)
        return super()._infer(inputs)


@pytest.mark.parametrize("pipeline", [False, True])
def test_pipeline_prepares_the_next_frame_while_the_backend_is_busy(tiny_bundle, pipeline):
    backend = GatedBackend(tiny_bundle, BackendOptions(max_batch=1))
    engine = Engine(tiny_bundle, backend, memory="pool", pool_size=2)
    collector = Collector()
    loop = InferenceLoop(engine, pipeline=pipeline, on_chunks=collector.on_chunks).start()
    try:
        loop.submit(make_obs(tiny_bundle.spec, 1))
        assert backend.entered.wait(STOP_BOUND_S)  # frame 1 is inside the backend, held there
        loop.submit(make_obs(tiny_bundle.spec, 2))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and engine.preprocessor.strategy.free_count > 0:
            time.sleep(0.005)
        if pipeline:
            # frame 2 was taken and preprocessed into the second pooled buffer set meanwhile
            assert loop.pending_frames() == 0 and engine.preprocessor.strategy.free_count == 0
        else:
            # serial: frame 2 waits in its slot until frame 1 is done
            assert loop.pending_frames() == 1 and engine.preprocessor.strategy.free_count == 1
        backend.gate.set()
        assert collector.wait_for(2)
    finally:
        backend.gate.set()
        loop.stop(timeout=STOP_BOUND_S)
        engine.close()
    assert [c.stamp_ns for c in collector.chunks] == [1, 2]
    assert engine.preprocessor.strategy.free_count == 2  # every pooled set came back
