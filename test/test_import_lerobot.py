"""`vla-accel import lerobot`: a LeRobot ACT checkpoint made offline (random weights, LeRobot's own
save format) is imported; parity LeRobot vs vla_accel on raw observations must be <= 1e-4 (fp32); the
imported bundle then loads through the loader the node uses and runs on onnxruntime and openvino and
through `vla-accel bench`, in the main venv, where LeRobot is not installed.

LeRobot lives in .venv-lerobot (made by ./run.sh setup via scripts/setup_lerobot.sh); these tests run
the import there, in a subprocess, and skip naming it when it is missing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The imports export real networks (ACT with its ResNet-18, SmolVLA's sampling loop): minutes on a
# loaded 2-core machine, more than the suite's default per-test limit.
pytestmark = pytest.mark.timeout(1800)
LEROBOT_VENV = Path(os.environ.get("VLA_ACCEL_LEROBOT_VENV", ROOT / ".venv-lerobot"))


def _lerobot_python() -> str | None:
    """A Python that can import LeRobot: this one, else the project's .venv-lerobot."""
    import importlib.util

    if importlib.util.find_spec("lerobot") is not None:
        return sys.executable
    candidate = LEROBOT_VENV / "bin" / "python"
    if candidate.is_file():
        probe = subprocess.run([str(candidate), "-c", "import lerobot"], capture_output=True, env=_env())
        if probe.returncode == 0:
            return str(candidate)
    return None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _run(cmd: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def lerobot_python() -> str:
    py = _lerobot_python()
    if py is None:
        pytest.skip(f"needs LeRobot 0.4.4: ./run.sh setup (scripts/setup_lerobot.sh makes {LEROBOT_VENV} with "
                    "pip install --no-deps -r requirements/lerobot/lerobot.txt)")
    return py


def _make_and_import(python: str, policy: str, base: Path, *extra: str) -> dict:
    """Make a checkpoint with LeRobot and import it with `vla-accel import lerobot`, in one process of
    the LeRobot Python (LeRobot's import alone takes tens of seconds): the command's own main()."""
    ckpt, out = base / "pretrained_model", base / "imported"
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'test')!r})\n"
        "import lerobot_checkpoints\n"
        f"lerobot_checkpoints.make_{policy}(__import__('pathlib').Path({str(ckpt)!r}))\n"
        "from vla_accel.cli import main\n"
        f"sys.exit(main(['import', 'lerobot', {str(ckpt)!r}, {str(out)!r}, *{list(extra)!r}]))\n"
    )
    result = _run([python, "-c", script], timeout=1700)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return {"ckpt": ckpt, "out": out, "stdout": result.stdout, "stderr": result.stderr}


@pytest.fixture(scope="module")
def act_import(lerobot_python, tmp_path_factory):
    return _make_and_import(lerobot_python, "act", tmp_path_factory.mktemp("lerobot_act"), "--tolerance", "1e-4",
                            "--pt2")


def test_import_without_lerobot_says_what_to_install(tmp_path):
    """In a Python without LeRobot the command fails clearly, naming the install step."""
    import importlib.util

    if importlib.util.find_spec("lerobot") is not None:
        pytest.skip("this Python has LeRobot: the missing-LeRobot message cannot show here")
    (tmp_path / "ckpt").mkdir()
    for name in ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"):
        (tmp_path / "ckpt" / name).write_text("{}")
    result = _run([sys.executable, "-m", "vla_accel.cli", "import", "lerobot", str(tmp_path / "ckpt"),
                   str(tmp_path / "out")], timeout=120)
    assert result.returncode == 1
    assert "setup_lerobot.sh" in result.stderr and "requirements/lerobot/lerobot.txt" in result.stderr
    assert not (tmp_path / "out").exists()


def test_import_rejects_a_folder_that_is_not_a_checkpoint(tmp_path):
    result = _run([sys.executable, "-m", "vla_accel.cli", "import", "lerobot", str(tmp_path), str(tmp_path / "o")],
                  timeout=120)
    assert result.returncode == 1 and "no config.json" in result.stderr


def test_act_import_parity_table_and_files(act_import):
    out = act_import["out"]
    assert (out / "spec.yaml").is_file() and (out / "model.onnx").is_file()
    report = json.loads((out / "parity.json").read_text())
    assert report["policy"] == "act" and report["fps"] == 30
    assert len(report["parity"]) >= 2 and all(row["ok"] for row in report["parity"])
    assert max(row["max_abs"] for row in report["parity"]) <= 1e-4
    assert "max |Δ|" in act_import["stdout"] and "FAIL" not in act_import["stdout"]
    # Progress went to stderr, stage by stage.
    assert "exporting model.onnx" in act_import["stderr"] and "checking parity" in act_import["stderr"]
    # ACT exported with a dynamic batch (a batch-2 example keeps it dynamic); the spec says so.
    assert report["export"]["batch"] == 0
    assert all(not isinstance(v, int) for v in report["export"]["input_batch_dims"].values())


def test_imported_act_as_a_torch_export_program(act_import):
    """--pt2: the same policy as a torch.export program, checked against the module on the CPU, with a
    spec the cuda backend runs; on a CUDA machine it runs there with parity against its CPU run."""
    import torch

    from vla_accel.core.spec import example_inputs
    from vla_accel.models import load_model
    from vla_accel.models.export_pt2 import load_program

    out = act_import["out"]
    report = json.loads((out / "parity.json").read_text())
    assert (out / "model.pt2").is_file() and report["pt2"]["max_abs_vs_module_cpu"] <= 1e-4
    bundle = load_model(out / "spec-pt2.yaml")
    assert bundle.spec.format == "pt2"
    inputs = example_inputs(bundle.spec, 2, seed=5)
    with torch.inference_mode():
        on_cpu = load_program(out / "model.pt2", "cpu")(*[torch.from_numpy(inputs[n]) for n in bundle.spec.input_names])
    on_cpu = (on_cpu[0] if isinstance(on_cpu, (tuple, list)) else on_cpu).numpy()
    assert on_cpu.shape == (2, bundle.spec.action.steps, bundle.spec.action.dims) and np.isfinite(on_cpu).all()
    from vla_accel.backends.base import BackendOptions
    from vla_accel.backends.cuda_backend import CudaBackend

    availability = CudaBackend.probe()
    if not availability.ok or not torch.cuda.is_available():
        pytest.skip(f"cuda missing for the GPU half: {', '.join(availability.missing) or 'no CUDA device'}")
    with CudaBackend(bundle, BackendOptions(precision="fp32", max_batch=2)) as backend:
        for _ in range(5):  # eager passes, then the CUDA graph over the program
            got = backend.infer(inputs)[bundle.spec.action.output]
        assert backend.device_info().detail["graphs_captured"] == [2]
    assert np.max(np.abs(got - on_cpu)) < 1e-4


def test_imported_act_spec_matches_the_checkpoint(act_import):
    from vla_accel.core.spec import ModelSpec

    spec = ModelSpec.from_yaml(act_import["out"] / "spec.yaml")
    config = json.loads((act_import["ckpt"] / "config.json").read_text())
    assert [c.name for c in spec.cameras] == ["top", "wrist"]
    assert all((c.height, c.width) == (96, 128) and c.normalize == "mean_std" for c in spec.cameras)
    assert not spec.instruction.enabled
    assert spec.state is not None and spec.state.dims == 6 and spec.state.normalization == "mean_std"
    assert spec.action.steps == config["chunk_size"] and spec.action.dims == 6
    assert spec.action.normalization == "mean_std" and spec.action.dt == pytest.approx(1 / 30)
    assert spec.program.kind == "single_pass" and spec.program.graphs[0].file == "model.onnx"


def _observations(spec, count: int, seed: int):
    from vla_accel.core.types import Observation

    rng = np.random.default_rng(seed)
    return [Observation(images={c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8)
                                for c in spec.cameras},
                        instruction="", stamp_ns=i + 1, state=rng.normal(size=spec.state.dims).astype(np.float32))
            for i in range(count)]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_imported_act_runs_through_the_node_model_loader(act_import, backend):
    """load_model (what the node calls) + the Engine on two backends; openvino at fp32 agrees with
    onnxruntime, and chunks carry the spec's dt."""
    from vla_accel.backends.base import BackendOptions
    from vla_accel.backends.registry import create_backend
    from vla_accel.core.engine import Engine
    from vla_accel.models import load_model

    bundle = load_model(act_import["out"] / "spec.yaml")
    obs = _observations(bundle.spec, 2, seed=3)
    results = {}
    for name in dict.fromkeys(["onnxruntime", backend]):
        try:
            be = create_backend(name, bundle, BackendOptions(max_batch=2, precision="fp32")).load()
        except Exception as exc:  # noqa: BLE001
            from vla_accel.errors import BackendUnavailableError

            if isinstance(exc, BackendUnavailableError):
                pytest.skip(f"{name} not available: {exc}")
            raise
        try:
            chunks = Engine(bundle, be, max_batch=2, memory="dynamic").infer(obs)
        finally:
            be.close()
        assert len(chunks) == 2 and all(np.isfinite(c.values).all() for c in chunks)
        assert chunks[0].values.shape == (bundle.spec.action.steps, bundle.spec.action.dims)
        assert chunks[0].dt == pytest.approx(1 / 30)
        results[name] = np.stack([c.values for c in chunks])
    np.testing.assert_allclose(results[backend], results["onnxruntime"], atol=1e-4)


def test_imported_act_runs_through_vla_accel_bench(act_import, tmp_path):
    out = tmp_path / "bench.json"
    result = _run([sys.executable, "-m", "vla_accel.cli", "bench", "--model", str(act_import["out"] / "spec.yaml"),
                   "--backends", "onnxruntime,openvino", "--batch", "1", "--seconds", "0.3", "--warmup", "1",
                   "--json", str(out)], timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    text = json.dumps(data)
    assert "onnxruntime" in text and "openvino" in text


def test_parity_check_catches_a_wrong_statistic(act_import, lerobot_python, tmp_path):
    """The same check the import runs, on a copy of the bundle whose action mean is off by 1e-3:
    LeRobot vs vla_accel now differ by ~1e-3 and the rows fail at 1e-4."""
    import shutil

    import yaml

    bad = tmp_path / "bad"
    shutil.copytree(act_import["out"], bad)
    spec = yaml.safe_load((bad / "spec.yaml").read_text())
    spec["action"]["mean"][0] += 1e-3
    (bad / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    script = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from vla_accel.importers.lerobot import load_checkpoint, check_parity\n"
        f"ckpt = load_checkpoint(Path({str(act_import['ckpt'])!r}))\n"
        f"rows = check_parity(ckpt, Path({str(bad / 'spec.yaml')!r}), tolerance=1e-4)\n"
        "print(json.dumps([[r.max_abs, r.ok] for r in rows]))\n"
    )
    result = _run([lerobot_python, "-c", script], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(not ok for _max, ok in rows)
    assert all(9e-4 < m < 2e-3 for m, _ok in rows)


def test_doctor_model_checks_an_imported_spec_and_names_what_is_wrong(act_import, tmp_path):
    """`vla-accel doctor --model SPEC`: the imported spec passes every check; a copy whose graph entry
    no longer lists 'state' (so the graph's input 'state' would go unfed) fails at load, naming it."""
    import shutil

    import yaml

    good = _run([sys.executable, "-m", "vla_accel.cli", "doctor", "--model", str(act_import["out"] / "spec.yaml"),
                 "--backends", "onnxruntime,openvino"], timeout=300)
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-2000:]
    assert "Model check" in good.stdout and "FAIL" not in good.stdout.split("Model check")[1]
    assert "backend onnxruntime: inference" in good.stdout

    bad = tmp_path / "bad"
    shutil.copytree(act_import["out"], bad)
    spec = yaml.safe_load((bad / "spec.yaml").read_text())
    spec.pop("state")
    spec["program"]["graphs"][0]["inputs"].remove("state")
    (bad / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = _run([sys.executable, "-m", "vla_accel.cli", "doctor", "--model", str(bad / "spec.yaml"),
                   "--backends", "onnxruntime"], timeout=300)
    assert result.returncode == 1
    section = result.stdout.split("Model check")[1]
    assert "FAIL backend onnxruntime: load + graph contract" in section and "'state'" in section


def test_letterbox_top_left_pads_above_like_lerobot_resize_with_pad():
    """LeRobot's SmolVLA resize_with_pad pads on the top and left: the spec's pad: top_left."""
    from vla_accel.core.preprocess import Preprocessor
    from vla_accel.core.spec import ModelSpec
    from vla_accel.core.types import Observation

    spec = ModelSpec.from_dict({
        "name": "t", "format": "onnx", "weights": "m.onnx", "instruction": None,
        "cameras": [{"name": "c", "input": "image_c", "height": 8, "width": 8, "resize": "letterbox",
                     "normalize": "zero_one", "pad": "top_left"}],
        "action": {"steps": 2, "dims": 2}})
    frame = np.full((4, 8, 3), 255, dtype=np.uint8)  # wide: an 8x4 region, 4 rows of padding above it
    image = Preprocessor(spec).prepare([Observation(images={"c": frame}, instruction=None, stamp_ns=1)]
                                       ).inputs["image_c"][0, 0]
    assert np.allclose(image[4:], 1.0) and np.allclose(image[:4], 0.0)


@pytest.fixture(scope="module")
def smolvla_import(lerobot_python, tmp_path_factory):
    return _make_and_import(lerobot_python, "smolvla", tmp_path_factory.mktemp("lerobot_smolvla"))


def test_smolvla_import_parity_language_and_padding(smolvla_import):
    """A reduced SmolVLA on a local backbone folder (no hub): the whole sampling loop exported with the
    noise as an input; parity <= 1e-4 with the same noise; the spec carries the tokenizer, the prompt
    template, int64 / bool token inputs, the top/left letterbox and the batch the exporter fixed."""
    from vla_accel.core.spec import ModelSpec

    out = smolvla_import["out"]
    report = json.loads((out / "parity.json").read_text())
    assert all(row["ok"] for row in report["parity"])
    assert max(row["max_abs"] for row in report["parity"]) <= 1e-4
    spec = ModelSpec.from_yaml(out / "spec.yaml")
    assert spec.instruction.enabled and spec.instruction.tokenizer == "tokenizer.json"
    assert (out / "tokenizer.json").is_file() and spec.instruction.prompt_template == "{instruction}\n"
    assert (spec.instruction.ids_dtype, spec.instruction.mask_dtype) == ("int64", "bool")
    cam = spec.cameras[0]
    assert (cam.height, cam.width, cam.resize, cam.pad, cam.normalize) == (64, 64, "letterbox", "top_left", "zero_one")
    graph = spec.program.graphs[0]
    assert "noise" in graph.inputs and spec.action.dt == pytest.approx(0.1)
    # The batch the exporter produced is what the spec declares (dynamo fixes SmolVLA's batch).
    exported = report["export"]["batch"]
    assert graph.batch == exported
    if exported:
        assert "the exporter fixed the batch" in smolvla_import["stderr"]


def test_imported_smolvla_runs_on_onnxruntime_and_openvino_with_any_batch(smolvla_import):
    """Through the node's loader and Engine: batches other than the exported one are split / padded;
    the runtime draws the noise (seeded), so the same call on two backends agrees."""
    from vla_accel.backends.base import BackendOptions
    from vla_accel.backends.registry import create_backend
    from vla_accel.core.engine import Engine
    from vla_accel.core.types import Observation
    from vla_accel.errors import BackendUnavailableError
    from vla_accel.models import load_model

    bundle = load_model(smolvla_import["out"] / "spec.yaml")
    spec = bundle.spec
    rng = np.random.default_rng(1)
    obs = [Observation(images={"top": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)},
                       instruction="pick up the red cube", stamp_ns=i + 1,
                       state=rng.normal(size=spec.state.dims).astype(np.float32)) for i in range(3)]
    results = {}
    for name in ("onnxruntime", "openvino"):
        try:
            be = create_backend(name, bundle, BackendOptions(max_batch=3, precision="fp32")).load()
        except BackendUnavailableError as exc:
            pytest.skip(f"{name} not available: {exc}")
        try:
            chunks = Engine(bundle, be, max_batch=3, memory="dynamic").infer(obs)
        finally:
            be.close()
        assert len(chunks) == 3 and all(c.values.shape == (spec.action.steps, spec.action.dims) for c in chunks)
        results[name] = np.stack([c.values for c in chunks])
        assert np.isfinite(results[name]).all()
    np.testing.assert_allclose(results["openvino"], results["onnxruntime"], atol=1e-4)


def test_export_declares_a_fixed_batch_and_moves_large_weights_to_external_data(tmp_path):
    """The exporter used by the import, on small torch modules (no LeRobot needed): a graph whose
    batch the exporter had to fix is reported with that batch, and weights over the threshold go to
    ONNX external data that onnxruntime loads."""
    import onnxruntime as ort
    import torch

    from vla_accel.importers.lerobot import export_onnx

    class Dynamic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x)

    class Fixed(Dynamic):
        def forward(self, x):
            return self.lin(x).reshape(2, 3)  # only batch 2 can pass: the exporter fixes it

    messages = []
    x = torch.randn(2, 4)
    dyn = export_onnx(Dynamic().eval(), ["x"], [x], ["y"], tmp_path / "dyn.onnx", messages.append,
                      external_data_bytes=0)
    assert dyn["batch"] == 0 and dyn["external_data"]
    assert any(p.name.startswith("dyn.onnx") and p.name != "dyn.onnx" for p in tmp_path.iterdir())
    out = ort.InferenceSession(str(tmp_path / "dyn.onnx")).run(None, {"x": np.ones((5, 4), np.float32)})[0]
    assert out.shape == (5, 3)
    try:
        fixed = export_onnx(Fixed().eval(), ["x"], [x], ["y"], tmp_path / "fixed.onnx", messages.append)
    except Exception as exc:  # noqa: BLE001  (torch refuses the dynamic batch outright: also not silent)
        assert "batch" in str(exc).lower() or "constraint" in str(exc).lower() or "specializ" in str(exc).lower()
        return
    assert fixed["batch"] == 2 and not fixed["external_data"]
    assert any("fixed the batch to [2]" in m for m in messages)


@pytest.mark.ros
def test_node_runs_the_imported_smolvla_on_a_ros_graph(smolvla_import, tmp_path):
    """The imported SmolVLA through the VLA node on a real ROS 2 graph: a synthetic camera (640x480,
    letterboxed to the policy's 64x64), an instruction and 6 joint states from their own process; the
    node publishes chunks of the spec's shape from the onnxruntime backend."""
    ros = pytest.importorskip("test_ros_node")  # skips there when the ROS messages are not built
    spec_path = smolvla_import["out"] / "spec.yaml"
    listener = ros.Listener()
    node = camera = None
    try:
        node = ros._start_node(["-p", "backend:=onnxruntime", "-p", f"model:={spec_path}",
                                "-p", "speedup_baseline:=none", "-p", "target_latency_ms:=20000.0",
                                "-p", "fallback:=[onnxruntime]"])
        ros._node_ready(listener, node)
        cmd = [sys.executable, "-m", "vla_accel.ros.synthetic_camera", "--rate", "10", "--width", "640",
               "--height", "480", "--seconds", "120", "--stamps-out", str(tmp_path / "stamps.txt"),
               "--instruction", "pick up the red cube", "--joints", "6"]
        camera = subprocess.Popen(cmd, env=ros._env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            listener.wait_for(lambda: len(listener.chunks) >= 2, 120, "2 action chunks of the imported SmolVLA")
        except AssertionError:
            camera.kill()
            node.kill()
            raise AssertionError(f"no chunks; node: {node.communicate()[0][-3000:]}") from None
        ros._stop_camera(camera)
        _, out = ros._sigint_and_wait(node)
        assert node.returncode == 0, out[-3000:]
    finally:
        ros._kill_leftovers(camera, node)
        listener.close()
    with listener.lock:
        chunk = listener.chunks[-1][1]
    assert (chunk.backend, chunk.steps, chunk.dims) == ("onnxruntime", 5, 6)
    assert np.isfinite(np.asarray(chunk.values)).all()
