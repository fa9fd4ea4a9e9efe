"""The scheduling benchmarks' measuring parts (not their speed figures: those come from the CLI).

The allocation check is functional: with static input buffers, steady-state preprocessing must not
allocate a numpy buffer per frame, while the dynamic strategy must (else the measurement is blind).
"""
from __future__ import annotations

import json
import tracemalloc

import pytest

from vla_accel.backends.base import BackendOptions


@pytest.fixture(scope="module")
def torch_backend(tiny_bundle):
    from vla_accel.backends.registry import create_backend

    backend = create_backend("torch", tiny_bundle, BackendOptions(threads=1)).load()
    yield backend
    backend.close()


def test_static_buffers_allocate_no_numpy_buffer_per_frame_and_dynamic_does(tiny_bundle, torch_backend):
    from vla_accel.benchmarks.common import FrameSource
    from vla_accel.benchmarks.memory import allocation_pass
    from vla_accel.core.engine import Engine

    source = FrameSource(tiny_bundle.spec, "raw480", variants=1)
    observations = [source.observation()]
    results = {}
    for memory in ("static", "dynamic"):
        engine = Engine(tiny_bundle, torch_backend, memory=memory)
        for _ in range(3):
            engine.infer(observations)
        tracemalloc.start(1)
        try:
            results[memory] = allocation_pass(engine, observations, frames=6)
        finally:
            tracemalloc.stop()
    assert results["static"]["prepare"]["numpy_buffers_new"] == 0
    assert results["static"]["prepare"]["numpy_bytes_new"] == 0
    # dynamic: one fresh array per model input (image, tokens, mask, state)
    assert results["dynamic"]["prepare"]["numpy_buffers_new"] == len(tiny_bundle.spec.input_names)
    image_bytes = 3 * tiny_bundle.spec.cameras[0].height * tiny_bundle.spec.cameras[0].width * 4
    assert results["dynamic"]["prepare"]["numpy_bytes_new"] >= image_bytes
    assert results["static"]["prepare"]["transient_bytes"] < image_bytes  # no image-sized temporary
    for memory in ("static", "dynamic"):
        assert abs(results[memory]["retained_bytes_per_frame"]) < 4096  # steady state: nothing kept


def test_frame_source_makes_valid_observations_of_every_kind(tiny_bundle):
    from vla_accel.benchmarks.common import FrameSource
    from vla_accel.core.preprocess import Preprocessor

    pre = Preprocessor(tiny_bundle.spec, 1)
    for kind in ("jpeg480", "raw480"):
        batch = pre.prepare([FrameSource(tiny_bundle.spec, kind, variants=1).observation("s")])
        assert not batch.rejected and batch.size == 1


@pytest.mark.slow
@pytest.mark.parametrize("mode,extra", [
    ("pipeline", ["--pipeline-rounds", "1", "--pipeline-process-frames", "4", "--pipeline-input", "jpeg480"]),
    ("batching", ["--batching-rounds", "1", "--batching-gpu-backend", "none"]),
    ("memory", ["--memory-frames", "10", "--memory-alloc-frames", "4"]),
    ("realtime", ["--rt-rates", "15", "--rt-rate-seconds", "1", "--rt-probe-seconds", "0",
                  "--rt-standalone-s", "0.5"]),
])
def test_bench_modes_run_end_to_end(tmp_path, mode, extra):
    from vla_accel.cli import main

    out = tmp_path / f"{mode}.json"
    assert main(["bench", mode, "--model", "tiny", "--backend", "torch", "--seconds", "1", "--json", str(out),
                 *extra]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == mode and report["machine"]["logical_cpus"] >= 1
