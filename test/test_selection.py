"""Backend selection and fallback: FallbackChain at load and mid-stream (fault injection through
VLA_ACCEL_FAULT, the same mechanism as a drill on a robot), resolve_backends for explicit names and
``auto`` ordered by a calibration file, and the calibration cache itself."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vla_accel.backends.base import FAULT_ENV, BackendOptions

from vla_accel.core.optional import module_available

from vla_accel.core.spec import example_inputs
from vla_accel.backends.calibration import CalibrationRecord, CalibrationStore, machine_id, measure_backend
from vla_accel.backends.selection import FallbackChain, available_backends, resolve_backends
from vla_accel.errors import BackendError, InputError, SpecError, UnknownBackendError

# Two CPU backends that load in well under a second once their exports are cached.
PRIMARY, SECONDARY = "onnxruntime", "torch"


@pytest.fixture(autouse=True)
def _needs_runtimes(monkeypatch):
    for module in ("onnxruntime", "torch"):
        if not module_available(module):
            pytest.skip(f"{module} missing; install with pip install {module}")
    monkeypatch.delenv(FAULT_ENV, raising=False)


@pytest.fixture(scope="module")
def torch_reference(tiny_bundle):
    from vla_accel.backends.registry import create_backend

    backend = create_backend("torch", tiny_bundle).load()
    yield backend
    backend.close()


def test_load_falls_back_when_the_first_candidate_cannot_load(tiny_bundle, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, f"{PRIMARY}:load")
    chain = FallbackChain(tiny_bundle, [PRIMARY, SECONDARY]).load()
    try:
        assert chain.active_name == SECONDARY
        assert chain.device_info().backend == SECONDARY
        assert "injected load fault" in chain.failures[PRIMARY]
        assert chain.switches == 0  # nothing ran yet: not a mid-stream switch
        (event,) = chain.events
        assert (event.from_backend, event.to_backend) == ("", SECONDARY) and PRIMARY in event.reason
    finally:
        chain.close()


def test_mid_stream_failure_switches_within_one_frame_and_loses_no_batch(tiny_bundle, torch_reference, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, f"{PRIMARY}:infer:after=3")
    switches = []
    chain = FallbackChain(tiny_bundle, [PRIMARY, SECONDARY],
                          on_switch=lambda old, new, err: switches.append((old, new, str(err))))
    chain.load()
    try:
        assert chain.active_name == PRIMARY
        served_by = []
        for frame in range(6):
            inputs = example_inputs(tiny_bundle.spec, 2, seed=100 + frame)
            out = chain.infer(inputs)["actions"]  # every frame gets an answer, including the failing one
            expected = torch_reference.infer(inputs)["actions"]
            assert np.abs(out - expected).max() <= 1e-4, f"frame {frame} wrong after the switch"
            served_by.append(chain.active_name)
        assert served_by == [PRIMARY] * 3 + [SECONDARY] * 3  # the 4th frame itself ran on the fallback
        assert chain.switches == 1 and len(switches) == 1
        old, new, why = switches[0]
        assert (old, new) == (PRIMARY, SECONDARY) and "injected inference fault" in why
        assert chain.events[-1].from_backend == PRIMARY and chain.events[-1].to_backend == SECONDARY
        info = chain.device_info()
        assert info.backend == SECONDARY and info.detail["fallback_switches"] == 1
        assert info.detail["fallback_chain"] == [PRIMARY, SECONDARY]
    finally:
        chain.close()


def test_non_finite_outputs_switch_to_the_next_backend(tiny_bundle, torch_reference, monkeypatch):
    """A runtime whose numerics break (NaN outputs, injected after 2 good calls) is replaced like one
    that raises: the NaN batch itself is answered by the fallback, never published."""
    monkeypatch.setenv(FAULT_ENV, f"{PRIMARY}:nan:after=2")
    chain = FallbackChain(tiny_bundle, [PRIMARY, SECONDARY]).load()
    try:
        served_by = []
        for frame in range(4):
            inputs = example_inputs(tiny_bundle.spec, 1, seed=200 + frame)
            out = chain.infer(inputs)["actions"]
            assert np.isfinite(out).all()
            assert np.abs(out - torch_reference.infer(inputs)["actions"]).max() <= 1e-4
            served_by.append(chain.active_name)
        assert served_by == [PRIMARY] * 2 + [SECONDARY] * 2
        assert "non-finite" in chain.failures[PRIMARY]
    finally:
        chain.close()


def test_close_does_not_wait_forever_for_a_stuck_inference(tiny_bundle):
    import threading

    chain = FallbackChain(tiny_bundle, [SECONDARY]).load()
    held = threading.Event()
    release = threading.Event()

    def hold_the_lock():  # stands in for a runtime call that never returns
        with chain._lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold_the_lock, daemon=True)
    thread.start()
    assert held.wait(5)
    try:
        assert chain.close(timeout=0.2) is False
        assert chain.loaded  # not torn down under the running call
    finally:
        release.set()
        thread.join(5)
    assert chain.close() is True and not chain.loaded


def test_all_candidates_failing_lists_every_reason(tiny_bundle, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, f"{PRIMARY}:load,{SECONDARY}:load")
    with pytest.raises(BackendError) as info:
        FallbackChain(tiny_bundle, [PRIMARY, SECONDARY, "tensorrt"], BackendOptions(precision="fp32")).load()
    message = str(info.value)
    assert info.value.reason == "all_backends_failed"
    assert PRIMARY in message and SECONDARY in message and "tensorrt" in message and "injected load fault" in message


def test_last_backend_failing_mid_stream_raises_instead_of_hanging(tiny_bundle, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, f"{SECONDARY}:infer:after=1")
    chain = FallbackChain(tiny_bundle, [SECONDARY]).load()
    inputs = example_inputs(tiny_bundle.spec, 1, seed=1)
    chain.infer(inputs)
    with pytest.raises(BackendError) as info:
        chain.infer(inputs)
    assert info.value.reason == "all_backends_failed" and not chain.loaded


def test_bad_input_does_not_trigger_a_switch(tiny_bundle):
    chain = FallbackChain(tiny_bundle, [PRIMARY, SECONDARY]).load()
    try:
        bad = example_inputs(tiny_bundle.spec, 1, seed=1)
        bad.pop(tiny_bundle.spec.instruction.input)
        with pytest.raises(InputError):
            chain.infer(bad)
        assert chain.active_name == PRIMARY and chain.switches == 0
    finally:
        chain.close()


def test_per_backend_options_and_warmup(tiny_bundle):
    options = {PRIMARY: BackendOptions(threads=1), SECONDARY: BackendOptions(threads=1)}
    with FallbackChain(tiny_bundle, [PRIMARY, SECONDARY], options) as chain:
        chain.warmup(batch_size=1, iterations=1)
        assert chain.options.threads == 1 and chain.name == PRIMARY


def test_resolve_explicit_names_aliases_and_fallback():
    assert resolve_backends("ort", fallback=["cpu", "onnxruntime"]) == ["onnxruntime", "torch"]
    with pytest.raises(UnknownBackendError):
        resolve_backends("tpu9000")
    with pytest.raises(SpecError):
        resolve_backends("torch", requirement="fastest")


def _record(bundle, backend: str, p50: float, fps: float) -> CalibrationRecord:
    return CalibrationRecord(model_hash=bundle.content_hash(), backend=backend, precision="fp32",
                             machine=machine_id(), p50_ms=p50, p90_ms=p50 * 1.2, throughput_fps=fps,
                             batch=4, iterations=10, device=f"{backend}@cpu")


def test_auto_orders_present_backends_from_a_calibration_file(tiny_bundle, tmp_path):
    present = available_backends()
    assert {"torch", "onnxruntime"} <= set(present)
    store = CalibrationStore(tmp_path / "calibration.json")
    # latency favours onnxruntime, throughput favours torch (as a batching GPU might)
    store.put(_record(tiny_bundle, "torch", p50=40.0, fps=400.0))
    store.put(_record(tiny_bundle, "onnxruntime", p50=10.0, fps=120.0))
    store.put(_record(tiny_bundle, "tensorrt", p50=1.0, fps=9000.0))  # not present here: never chosen
    other = _record(tiny_bundle, "torch", p50=0.1, fps=1e6)
    other.machine = "another-machine"
    store.put(other)  # another machine's numbers are ignored
    store.save()
    reloaded = CalibrationStore(tmp_path / "calibration.json")
    candidates = ["torch", "onnxruntime", "tensorrt"]
    latency = resolve_backends("auto", "latency", calibration=reloaded, model=tiny_bundle, candidates=candidates,
                               measure=False)
    throughput = resolve_backends("auto", "throughput", calibration=reloaded, model=tiny_bundle,
                                  candidates=candidates, measure=False)
    assert latency == ["onnxruntime", "torch"]
    assert throughput == ["torch", "onnxruntime"]
    assert "tensorrt" not in latency
    with_tail = resolve_backends("auto", "latency", fallback=["torch"], calibration=reloaded, model=tiny_bundle,
                                 candidates=candidates, measure=False)
    assert with_tail == ["onnxruntime", "torch"]


def test_auto_measures_what_has_no_calibration_within_a_bounded_time(tiny_bundle, tmp_path):
    store = CalibrationStore(tmp_path / "calibration.json")
    store.put(_record(tiny_bundle, "onnxruntime", p50=1e6, fps=1e-3))  # a recorded slow one
    order = resolve_backends("auto", "latency", calibration=store, model=tiny_bundle,
                             candidates=["onnxruntime", "torch"], measure_budget_s=0.3)
    assert order == ["torch", "onnxruntime"]  # torch was measured for real and beats the recorded value
    saved = json.loads((tmp_path / "calibration.json").read_text())
    (measured,) = [r for r in saved["records"].values() if r["backend"] == "torch"]
    assert measured["p50_ms"] > 0 and measured["throughput_fps"] > 0 and measured["machine"] == machine_id()


def test_auto_without_a_model_or_calibration_refuses_to_guess():
    with pytest.raises(BackendError) as info:
        resolve_backends("auto")
    assert "model" in str(info.value)


def test_measure_backend_reports_real_timings(tiny_bundle):
    record = measure_backend(tiny_bundle, "onnxruntime", batch=2, budget_s=0.2)
    assert record.backend == "onnxruntime" and record.batch == 2
    assert 0 < record.p50_ms <= record.p90_ms and record.throughput_fps > 0 and record.iterations >= 3
    assert record.model_hash == tiny_bundle.content_hash() and record.device.startswith("onnxruntime@")


def test_corrupt_calibration_file_is_ignored_and_rewritten(tiny_bundle, tmp_path, caplog):
    path = tmp_path / "calibration.json"
    path.write_text("{not json")
    store = CalibrationStore(path)
    assert store.records() == []
    assert "unreadable" in caplog.text
    store.put(_record(tiny_bundle, "torch", p50=5.0, fps=50.0))
    store.save()
    assert CalibrationStore(path).get(tiny_bundle.content_hash(), "torch").p50_ms == 5.0


def test_an_unexpected_runtime_exception_also_switches(tiny_bundle, torch_reference):
    """Not only BackendError: a runtime raising anything mid-stream hands over to the next backend."""
    chain = FallbackChain(tiny_bundle, [PRIMARY, SECONDARY]).load()
    try:
        def broken(inputs):
            raise KeyError("device lost")

        chain.active._infer = broken  # the runtime call inside the real backend fails
        inputs = example_inputs(tiny_bundle.spec, 1, seed=3)
        out = chain.infer(inputs)["actions"]
        assert chain.active_name == SECONDARY and chain.switches == 1
        assert np.abs(out - torch_reference.infer(inputs)["actions"]).max() <= 1e-4
        assert "KeyError" in chain.failures[PRIMARY]
    finally:
        chain.close()
