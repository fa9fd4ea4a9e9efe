"""Fleet inference: a real Triton server (the nvidia-pytriton wheel's tritonserver, in .venv-triton)
on loopback serving the reference ``tiny`` policy; the ``triton`` backend, the robot-side client,
bad requests, and the fallback to a local backend when the server dies (and back when it returns).

The server tests skip naming what is missing: the server environment (``./run.sh setup`` makes
.venv-triton) or the client (``pip install 'tritonclient[grpc]'``)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from vla_accel.backends.base import BackendOptions
from vla_accel.core.spec import example_inputs
from vla_accel.backends.registry import create_backend
from vla_accel.errors import BackendError, InputError
from vla_accel.backends import triton_protocol as protocol
from vla_accel.serve.repository import ServeConfig, render_config

MAX_BATCH = 8  # as conftest.TRITON_MAX_BATCH


def _require_client():
    from vla_accel.backends.triton_backend import TritonBackend

    availability = TritonBackend.probe()
    if not availability.ok:
        pytest.skip(f"needs {', '.join(availability.missing)}: pip install 'tritonclient[grpc]'")


@pytest.fixture(scope="session")
def local_ort(tiny_bundle):
    backend = create_backend("onnxruntime", tiny_bundle, BackendOptions(max_batch=MAX_BATCH, threads=1,
                                                                         extra={"allow_spinning": False}))
    backend.load()
    yield backend
    backend.close()


def _triton(bundle, url, **extra):
    return create_backend("triton", bundle, BackendOptions(max_batch=4, extra={"url": url, "timeout_s": 5.0, **extra}))


def test_free_ports_are_distinct_and_equal_ports_are_refused(tmp_path):
    """Three ports for one server come from one call and differ; a server given one port twice is refused before
    it starts (tritonserver would exit with "cannot listen to HTTP and GRPC at the same address and port")."""
    from vla_accel.serve.server import ServerError, TritonServer, free_ports

    for _ in range(50):
        assert len(set(free_ports(3))) == 3
    with pytest.raises(ServerError, match="ports must differ"):
        TritonServer(tmp_path, grpc_port=9001, http_port=9001, metrics_port=9002)


def test_generated_config_carries_batching_and_the_spec(tiny_bundle):
    config = ServeConfig(max_batch=16, max_queue_delay_us=500, instances=2)
    policy = render_config("tiny", tiny_bundle.spec, config, "policy")
    graph = render_config("tiny_graph", tiny_bundle.spec, config, "graph")
    for text in (policy, graph):
        assert "max_batch_size: 16" in text and "max_queue_delay_microseconds: 500" in text
        assert "count: 2" in text and 'backend: "python"' in text
        assert "dims: [ 10, 7 ]" in text  # actions: steps x dims from the spec
    assert 'name: "image_primary"' in policy and "TYPE_UINT8" in policy and "dims: [ -1, -1, 3 ]" in policy
    assert 'name: "instruction"' in policy and "TYPE_STRING" in policy
    assert 'name: "tokens"' in graph and "TYPE_INT32" in graph and "dims: [ 32 ]" in graph
    cam = tiny_bundle.spec.cameras[0]
    assert f"dims: [ {', '.join(str(d) for d in cam.shape)} ]" in graph


def test_server_reports_ready_and_metrics(triton_server):
    import urllib.request

    server, names = triton_server
    assert server.ready() and set(names.values()) == {"tiny", "tiny_graph"}
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        text = response.read().decode()
    assert "nv_inference_request_success" in text


def test_triton_backend_matches_local_onnxruntime(triton_server, tiny_bundle, local_ort):
    server, _ = triton_server
    backend = _triton(tiny_bundle, server.grpc_url).load()
    try:
        info = backend.device_info()
        assert info.backend == "triton" and info.detail["model"] == "tiny_graph"
        for batch, seed in ((1, 3), (3, 4)):
            inputs = example_inputs(tiny_bundle.spec, batch, seed=seed)
            remote = backend.infer(inputs)["actions"]
            local = local_ort.infer(inputs)["actions"]
            assert remote.shape == (batch, 10, 7) and remote.dtype == np.float32
            np.testing.assert_allclose(remote, local, atol=1e-5, rtol=0)
    finally:
        backend.close()


def test_policy_model_takes_raw_frames_and_matches_local_engine(triton_server, tiny_bundle, local_ort):
    from vla_accel.core.engine import Engine
    from vla_accel.core.types import Observation
    from vla_accel.serve.client import RemotePolicy

    server, names = triton_server
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 256, size=(2, 480, 640, 3), dtype=np.uint8)  # what a camera gives
    texts = ["pick up the red cup", "open the drawer"]
    state = rng.standard_normal((2, 8)).astype(np.float32)
    policy = RemotePolicy(server.grpc_url, names["policy"])
    try:
        remote = policy.infer_batch({"primary": frames}, texts, state)
        single = policy.infer({"primary": frames[0]}, texts[0], state[0])
    finally:
        policy.close()
    engine = Engine(tiny_bundle, local_ort, max_batch=MAX_BATCH)
    chunks = engine.infer([Observation(images={"primary": frames[i]}, instruction=texts[i], stamp_ns=i, state=state[i])
                           for i in range(2)])
    local = np.stack([c.values for c in chunks])
    assert remote.shape == (2, 10, 7)
    np.testing.assert_allclose(remote, local, atol=1e-5, rtol=0)
    np.testing.assert_allclose(single, local[0], atol=1e-5, rtol=0)


def _raw_infer(url, model, tensors):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        inputs = []
        for name, array, dtype in tensors:
            tensor = grpcclient.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return client.infer(model, inputs, client_timeout=10)
    finally:
        client.close()


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(triton_server, tiny_bundle, local_ort):
    from tritonclient.utils import InferenceServerException

    server, names = triton_server
    graph = names["graph"]
    good = example_inputs(tiny_bundle.spec, 1, seed=11)
    sig = protocol.graph_signature(tiny_bundle.spec)

    def tensors(inputs, **override):
        out = []
        for name, (_, dtype) in sig.items():
            array, dt = override.get(name, (inputs[name], dtype))
            out.append((name, array, dt))
        return out

    cam = tiny_bundle.spec.cameras[0].input
    image = good[cam]
    cases = {
        "wrong shape": (graph, tensors(good, **{cam: (image[:, :, :64], "FP32")}), "shape"),
        "wrong dtype": (graph, tensors(good, **{cam: (image.astype(np.float64), "FP64")}), "data-type"),
        "oversized batch": (graph, tensors(example_inputs(tiny_bundle.spec, MAX_BATCH + 1, seed=1)), "batch"),
        "unknown model": ("no_such_policy", tensors(good), "no_such_policy"),
        "oversized frame": (names["policy"], [
            ("image_primary", np.zeros((1, 1200, 1600, 3), np.uint8), "UINT8"),
            ("instruction", np.array([[b"go"]], dtype=object), "BYTES"),
            ("state", np.zeros((1, 8), np.float32), "FP32")], "larger than"),
        "bad utf-8": (names["policy"], [
            ("image_primary", np.zeros((1, 48, 64, 3), np.uint8), "UINT8"),
            ("instruction", np.array([[b"\xff\xfe"]], dtype=object), "BYTES"),
            ("state", np.zeros((1, 8), np.float32), "FP32")], "UTF-8"),
    }
    for label, (model, request, expect) in cases.items():
        with pytest.raises(InferenceServerException) as info:
            _raw_infer(server.grpc_url, model, request)
        assert expect.lower() in str(info.value).lower(), (label, str(info.value))
        # and the server still answers a good request with the right actions
        answer = _raw_infer(server.grpc_url, graph, tensors(good)).as_numpy("actions")
        np.testing.assert_allclose(answer, local_ort.infer(good)["actions"], atol=1e-5, rtol=0)
    assert server.running


def test_triton_backend_checks_the_served_model_against_the_spec(triton_server, tiny_bundle):
    server, names = triton_server
    backend = _triton(tiny_bundle, server.grpc_url, model=names["policy"])  # raw-frame model: other inputs
    with pytest.raises(BackendError) as info:
        backend.load()
    assert info.value.reason == "spec_mismatch" and "image_primary" in str(info.value)
    with pytest.raises(BackendError) as info:
        _triton(tiny_bundle, server.grpc_url, model="no_such_policy").load()
    assert info.value.reason in ("model_not_ready", "server_error")
    backend = _triton(tiny_bundle, server.grpc_url).load()
    try:
        with pytest.raises(InputError):  # a wrong tensor is refused before it travels
            backend.infer({**example_inputs(tiny_bundle.spec, 1), "tokens": np.zeros((1, 5), np.int32)})
    finally:
        backend.close()


def test_request_past_its_deadline_is_a_timeout(triton_server, tiny_bundle):
    server, _ = triton_server
    backend = _triton(tiny_bundle, server.grpc_url).load()
    try:
        assert backend.healthy()
        backend.timeout_s = 1e-5  # no server answers a 224 KB request within 10 us
        with pytest.raises(BackendError) as info:
            backend.infer(example_inputs(tiny_bundle.spec, 1))
        assert info.value.reason == "timeout"
        backend.timeout_s = 5.0
        assert backend.healthy()  # a missed deadline is not a dead server: the next request may run
        assert backend.infer(example_inputs(tiny_bundle.spec, 1))["actions"].shape == (1, 10, 7)
    finally:
        backend.close()


def test_unreachable_server_at_load_falls_back_to_local(tiny_bundle):
    from vla_accel.backends.selection import FallbackChain
    from vla_accel.serve.server import free_port

    _require_client()
    options = {"triton": BackendOptions(extra={"url": f"127.0.0.1:{free_port()}", "timeout_s": 0.5}),
               "onnxruntime": BackendOptions(extra={"allow_spinning": False})}
    chain = FallbackChain(tiny_bundle, ["triton", "onnxruntime"], options).load()
    try:
        assert chain.active_name == "onnxruntime"
        assert "server live check" in chain.failures["triton"] and "UNAVAILABLE" in chain.failures["triton"]
    finally:
        chain.close()


def test_server_killed_mid_stream_switches_to_local_within_one_frame_and_back(tiny_bundle, local_ort,
                                                                              triton_factory):
    """Every frame is answered: the frame in flight when the server dies is re-run locally; the switch
    is counted; with recovery on, the chain returns to the server once it serves again."""
    import time

    from vla_accel.core.engine import Engine
    from vla_accel.backends.selection import FallbackChain
    from vla_accel.core.types import Observation

    server, _ = triton_factory()
    switches = []
    options = {"triton": BackendOptions(extra={"url": server.grpc_url, "timeout_s": 2.0}),
               "onnxruntime": BackendOptions(threads=1, extra={"allow_spinning": False})}
    chain = FallbackChain(tiny_bundle, ["triton", "onnxruntime"], options, recover_interval_s=0.2, standby=True,
                          on_switch=lambda old, new, err: switches.append((old, new, getattr(err, "reason", ""))))
    engine = Engine(tiny_bundle, chain, max_batch=1)
    rng = np.random.default_rng(5)
    frames = [Observation(images={"primary": rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)},
                          instruction=f"task {i}", stamp_ns=i + 1, state=rng.standard_normal(8).astype(np.float32))
              for i in range(12)]
    reference = Engine(tiny_bundle, local_ort, max_batch=1)
    served_by = []
    try:
        assert chain.active_name == "triton"
        deadline = time.monotonic() + 30
        while chain._standby is None and time.monotonic() < deadline:  # noqa: SLF001 - the standby in waiting
            time.sleep(0.05)
        standby = chain._standby[1]  # noqa: SLF001
        assert standby.name == "onnxruntime" and standby.loaded
        regions = set(server._shm_regions)  # noqa: SLF001 - the Python backend's shared memory
        assert regions
        for i, obs in enumerate(frames[:8]):
            if i == 4:
                server.kill()  # mid-stream: the next frame's request fails
                assert not any(os.path.exists(r) for r in regions)  # nothing left behind in /dev/shm
            chunk = engine.infer_one(obs)
            served_by.append(chunk.backend)
            np.testing.assert_allclose(chunk.values, reference.infer_one(obs).values, atol=1e-5, rtol=0)
        assert served_by == ["triton"] * 4 + ["onnxruntime"] * 4  # frame 4 itself ran locally: no gap
        assert chain.active is standby  # the switch took the loaded standby, no load on the failing frame
        assert chain.switches == 1 and switches[0][:2] == ("triton", "onnxruntime")
        assert switches[0][2] in ("server_unreachable", "timeout", "server_error")
        assert engine.metrics.snapshot().frames_processed == 8
        # the server comes back on the same port: the chain switches back to it
        server, _ = triton_factory(server.grpc_port, server.http_port, server.metrics_port)
        deadline = time.monotonic() + 20
        while chain.active_name != "triton" and time.monotonic() < deadline:
            engine.infer_one(frames[8])
            time.sleep(0.1)
        assert chain.active_name == "triton" and switches[-1][:2] == ("onnxruntime", "triton")
        chunk = engine.infer_one(frames[9])
        assert chunk.backend == "triton"
        np.testing.assert_allclose(chunk.values, reference.infer_one(frames[9]).values, atol=1e-5, rtol=0)
    finally:
        chain.close()
        server.stop()


def test_chain_switches_back_when_the_preferred_backend_loads_again(tiny_bundle):
    """recover_interval_s > 0: after a mid-stream fallback the preferred backend is loaded again in the
    background and takes over at the next frame; 0 (the default) stays on the fallback."""
    import time

    from vla_accel.backends.selection import FallbackChain

    inputs = example_inputs(tiny_bundle.spec, 1, seed=2)
    for interval in (0.05, 0.0):
        options = {"onnxruntime": BackendOptions(threads=1, fault="onnxruntime:infer:after=2",
                                                 extra={"allow_spinning": False}),
                   "torch": BackendOptions(threads=1)}
        switched = []
        chain = FallbackChain(tiny_bundle, ["onnxruntime", "torch"], options, recover_interval_s=interval,
                              on_switch=lambda old, new, err: switched.append((old, new, getattr(err, "reason", ""))))
        try:
            chain.load()
            for _ in range(3):
                chain.infer(inputs)  # the third call fails on onnxruntime and runs on torch
            assert chain.active_name == "torch" and switched[0][:2] == ("onnxruntime", "torch")
            deadline = time.monotonic() + 10
            while chain.active_name == "torch" and time.monotonic() < deadline:
                chain.infer(inputs)
                time.sleep(0.02)
                if interval == 0.0 and time.monotonic() > deadline - 9.5:
                    break
            if interval:
                assert chain.active_name == "onnxruntime" and switched[-1] == ("torch", "onnxruntime", "recovered")
                assert chain.switches == 2
            else:
                assert chain.active_name == "torch" and chain.switches == 1
        finally:
            chain.close()


def test_missing_server_environment_is_a_clear_error(tmp_path, monkeypatch):
    from vla_accel.serve.server import VENV_ENV, ServerEnvironment, ServerError

    with pytest.raises(ServerError) as info:
        ServerEnvironment.find(tmp_path / "no-venv")
    assert info.value.reason == "server_env_missing" and "./run.sh setup" in str(info.value)
    monkeypatch.setenv(VENV_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(ServerError, match="elsewhere"):
        ServerEnvironment.find()


@pytest.mark.slow
def test_bench_remote_reports_both_paths_and_the_ratios(tmp_path, triton_server):
    import json

    from vla_accel.cli import main

    out = tmp_path / "remote.json"
    assert main(["bench", "remote", "--backends", "onnxruntime", "--remote-robots", "1,2", "--remote-rate-hz", "4",
                 "--remote-seconds", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["robots"] for row in report["rows"]] == [1, 2]
    for row in report["rows"]:
        assert row["remote"]["chunks"] > 0 and row["local"]["chunks"] > 0
        assert len(row["remote"]["per_robot_p50_ms"]) == row["robots"]
        assert sum(row["server_batches"].values()) > 0 and row["server_stage_ms"]["compute_infer"] > 0
    assert report["overhead"]["remote_p50_ms"] > 0 and report["dynamic_batching"]["throughput_gain"] > 0


def test_serve_command_over_tls_starts_answers_and_stops(tmp_path, triton_server, capsys):
    """`vla-accel serve --tls-cert/--tls-key --check`: repository, server, readiness, one request per model
    over TLS (the certificate as root; a plain-text server would fail the handshake), clean stop."""
    import shutil
    import subprocess

    from vla_accel.cli import main
    from vla_accel.serve.server import free_ports

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate: apt-get install openssl")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    ports = [str(port) for port in free_ports(3)]
    assert main(["serve", "--model", "tiny", "--max-batch", "2", "--threads", "1", "--host", "127.0.0.1",
                 "--port", ports[0], "--http-port", ports[1], "--metrics-port", ports[2],
                 "--tls-cert", str(cert), "--tls-key", str(key), "--check"]) == 0
    out = capsys.readouterr().out
    assert "ready" in out and "/metrics" in out and "tiny_graph" in out and "TLS" in out
    assert "check: graph model -> (1, 10, 7), policy model -> (10, 7)" in out and "stopped" in out
