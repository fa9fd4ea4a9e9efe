"""Policy programs: the loop arithmetic, spec validation, the load-time graph contract on every file
backend (onnxruntime, openvino, tflite), fixed-batch graphs, and the reference programs run end to end
with parity between torch, onnxruntime and openvino under the same seeded noise."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from vla_accel.backends.base import BackendOptions, example_inputs, module_available
from vla_accel.backends.registry import create_backend
from vla_accel.core import program as prog
from vla_accel.core.spec import ModelSpec
from vla_accel.errors import BackendError, GraphContractError, ModelFileError, SpecError
from vla_accel.models import ModelBundle, load_model

HAVE_ORT = module_available("onnxruntime")
HAVE_OV = module_available("openvino")
HAVE_ONNX = module_available("onnx")
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="needs onnx: pip install onnx")


# --- loop arithmetic ------------------------------------------------------------------------------
def test_flow_grid_and_euler_follow_the_spec_convention():
    grid = prog.flow_times(prog.FlowSpec(), 10)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and len(grid) == 11
    x = np.ones(3, dtype=np.float32)
    v = np.full(3, 2.0, dtype=np.float32)
    # pi0: x_{t - dt} = x_t - dt * v
    np.testing.assert_allclose(prog.euler_step(x, v, grid[0], grid[1]), x - 0.1 * v, rtol=1e-6)
    # a constant velocity field integrates exactly: x(0) = x(1) - v
    for i in range(10):
        x = prog.euler_step(x, v, grid[i], grid[i + 1])
    np.testing.assert_allclose(x, 1.0 - 2.0, atol=1e-6)


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_diffusion_step_with_the_true_noise_recovers_the_clean_sample(scheduler):
    spec = prog.DiffusionSpec(scheduler=scheduler, train_steps=100, beta_schedule="linear")
    steps = prog.diffusion_steps(spec, 10)
    assert [s.timestep for s in steps] == list(range(90, -1, -10))
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal(5), rng.standard_normal(5)
    alpha_bar = np.cumprod(1 - prog.betas(spec))
    last = steps[-1]  # t = 0 -> the clean sample (alpha_bar_prev = 1)
    x = math.sqrt(alpha_bar[0]) * x0 + math.sqrt(1 - alpha_bar[0]) * eps
    np.testing.assert_allclose(prog.diffusion_update(x, eps, last, spec), x0, atol=1e-9)
    first = steps[0]
    x = math.sqrt(alpha_bar[90]) * x0 + math.sqrt(1 - alpha_bar[90]) * eps
    out = prog.diffusion_update(x, eps, first, spec)
    if scheduler == "ddim":  # deterministic: the same x0 and eps at the previous noise level
        expected = math.sqrt(alpha_bar[80]) * x0 + math.sqrt(1 - alpha_bar[80]) * eps
        np.testing.assert_allclose(out, expected, atol=1e-9)
    else:  # DDPM posterior mean, plus sigma * z with fresh noise
        assert first.sigma > 0
        z = rng.standard_normal(5)
        np.testing.assert_allclose(prog.diffusion_update(x, eps, first, spec, z) - out, first.sigma * z, atol=1e-9)


def test_tokens_map_to_bin_centres_like_openvla():
    spec = prog.TokenSpec(bins=256, low=-1, high=1, token_offset=31999, reverse=True)
    centres = spec.centres()
    assert len(centres) == 255
    values = prog.tokens_to_values(np.array([31999, 31998, 31999 - 254, 0]), spec)
    np.testing.assert_allclose(values, [centres[0], centres[1], centres[254], centres[254]])


def test_noise_is_seeded_per_call_and_history_stacks_oldest_first():
    a = prog.call_noise(3, 0, (2, 4))
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, prog.call_noise(3, 0, (2, 4)))
    assert not np.array_equal(a, prog.call_noise(3, 1, (2, 4)))
    stack = prog.HistoryStack(3)
    first = stack.push("cam", np.array([1.0]))
    np.testing.assert_array_equal(first[:, 0], [1, 1, 1])
    stack.push("cam", np.array([2.0]))
    np.testing.assert_array_equal(stack.push("cam", np.array([3.0]))[:, 0], [1, 2, 3])


# --- spec -------------------------------------------------------------------------------------------
def _spec_dict(**over):
    d = {
        "name": "user",
        "format": "onnx",
        "weights": "model.onnx",
        "cameras": [{"name": "primary", "input": "image_primary", "height": 8, "width": 8}],
        "instruction": None,
        "state": {"input": "state", "dims": 8},
        "action": {"output": "actions", "steps": 4, "dims": 7},
    }
    d.update(over)
    return d


def test_every_builtin_spec_still_loads_and_old_specs_keep_their_shape():
    for name in ("tiny", "tiny-2cam", "base"):
        spec = load_model(name).spec
        assert spec.program.kind == "single_pass"
        assert "program" not in spec.to_dict()  # content hashes of older specs do not move
        assert "enabled" not in spec.to_dict()["instruction"]
    for name in ("tiny-flow", "tiny-diffusion", "tiny-ar", "base-flow"):
        spec = load_model(name).spec
        assert spec.program.kind != "single_pass"
        assert ModelSpec.from_dict(spec.to_dict()).program == spec.program


def test_spec_without_language_names_or_with_min_max():
    spec = ModelSpec.from_dict(_spec_dict(action={"output": "actions", "steps": 4, "dims": 7,
                                                  "normalization": "min_max", "low": [0] * 7, "high": [2] * 7}))
    assert spec.input_names == ("image_primary", "state")
    assert spec.action_names == tuple(f"a{i}" for i in range(7))
    from vla_accel.core.postprocess import Postprocessor

    out = Postprocessor(spec).unnormalize(np.full((1, 4, 7), -1.0, dtype=np.float32))
    np.testing.assert_allclose(out, 0.0)


def test_a_program_graph_reading_an_unfed_tensor_is_rejected():
    graphs = [{"name": "prefix", "inputs": ["image_primary"], "outputs": ["kv"]},
              {"name": "step", "inputs": ["x_t", "t", "kv", "observation_history"], "outputs": ["v"]}]
    with pytest.raises(SpecError, match="observation_history"):
        ModelSpec.from_dict(_spec_dict(program={"kind": "flow_matching", "prediction": "v", "graphs": graphs}))
    with pytest.raises(SpecError, match="kind"):
        ModelSpec.from_dict(_spec_dict(program={"kind": "beam_search"}))


def test_letterbox_pads_bottom_right_like_resize_with_pad():
    from vla_accel.core.preprocess import Preprocessor
    from vla_accel.core.types import Observation

    base = _spec_dict(format="safetensors", weights="")
    base["cameras"] = [{"name": "primary", "input": "image_primary", "height": 8, "width": 8,
                        "resize": "letterbox", "normalize": "zero_one"}]
    frame = np.full((4, 8, 3), 255, dtype=np.uint8)  # wide: 8x4 region, 4 rows of padding
    for pad, rows in (("center", slice(2, 6)), ("bottom_right", slice(0, 4))):
        base["cameras"][0]["pad"] = pad
        spec = ModelSpec.from_dict(base)
        batch = Preprocessor(spec).prepare([Observation(images={"primary": frame}, instruction=None, stamp_ns=1, state=np.zeros(8))])
        image = batch.inputs["image_primary"][0, 0]
        assert np.allclose(image[rows], 1.0) and np.isclose(image.sum(), 32.0), pad


# --- user ONNX graphs and the load-time contract ----------------------------------------------------
def _user_onnx(path: Path, *, tokens_dtype=None, extra_noise=True, external=False, batch="B") -> Path:
    """A small hand-built ONNX policy: actions = noise + mean(image) + mean(state) [+ mean(mask*tokens)],
    with a second output 'aux' listed first (so reading output 0 would be wrong)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inputs = [helper.make_tensor_value_info("image_primary", TensorProto.FLOAT, [batch, 3, 8, 8]),
              helper.make_tensor_value_info("state", TensorProto.FLOAT, [batch, 8])]
    nodes = [helper.make_node("ReduceMean", ["image_primary", "axes123"], ["m_img"], keepdims=1),
             helper.make_node("Reshape", ["m_img", "shape_b11"], ["img3"]),
             helper.make_node("MatMul", ["state", "w_state"], ["s7"]),
             helper.make_node("Unsqueeze", ["s7", "axes1"], ["s17"]),
             helper.make_node("Add", ["img3", "s17"], ["base"]),
             helper.make_node("Identity", ["state"], ["aux"])]
    weight = np.linspace(-1, 1, 56, dtype=np.float32).reshape(8, 7)
    inits = [numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes123"),
             numpy_helper.from_array(np.array([-1, 1, 1], dtype=np.int64), "shape_b11"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axes1"),
             numpy_helper.from_array(weight, "w_state")]
    last = "base"
    if tokens_dtype is not None:
        inputs += [helper.make_tensor_value_info("tokens", tokens_dtype, ["B", 6]),
                   helper.make_tensor_value_info("token_mask", TensorProto.BOOL, ["B", 6])]
        nodes += [helper.make_node("Cast", ["tokens"], ["tf"], to=TensorProto.FLOAT),
                  helper.make_node("Cast", ["token_mask"], ["mf"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["tf", "mf"], ["tm"]),
                  helper.make_node("ReduceMean", ["tm", "axes1"], ["tmean"], keepdims=1),
                  helper.make_node("Unsqueeze", ["tmean", "axes1"], ["t11"]),
                  helper.make_node("Mul", ["t11", "scale"], ["t11s"]),
                  helper.make_node("Add", [last, "t11s"], ["with_tokens"])]
        inits.append(numpy_helper.from_array(np.array(0.01, dtype=np.float32), "scale"))
        last = "with_tokens"
    if extra_noise:
        inputs.append(helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["B", 4, 7]))
        nodes.append(helper.make_node("Add", [last, "noise"], ["actions"]))
    else:
        nodes.append(helper.make_node("Expand", [last, "shape_b47"], ["actions"]))
        inits.append(numpy_helper.from_array(np.array([1, 4, 7], dtype=np.int64), "shape_b47"))
    if batch != "B":
        inits[1] = numpy_helper.from_array(np.array([batch, 1, 1], dtype=np.int64), "shape_b11")
    outputs = [helper.make_tensor_value_info("aux", TensorProto.FLOAT, [batch, 8]),
               helper.make_tensor_value_info("actions", TensorProto.FLOAT, [batch, 4, 7])]
    graph = helper.make_graph(nodes, "user_policy", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))
    return path


def _user_bundle(tmp_path: Path, name: str, **over) -> ModelBundle:
    spec_path = tmp_path / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump(_spec_dict(**over)))
    return ModelBundle(ModelSpec.from_yaml(spec_path), cache_dir=tmp_path / "cache")


FILE_BACKENDS = [pytest.param("onnxruntime", marks=pytest.mark.skipif(not HAVE_ORT, reason="needs onnxruntime")),
                 pytest.param("openvino", marks=pytest.mark.skipif(not HAVE_OV, reason="needs openvino: pip install openvino"))]


@needs_onnx
@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_unfed_input_wrong_dtype_and_missing_output_fail_at_load(tmp_path, backend):
    from onnx import TensorProto

    _user_onnx(tmp_path / "model.onnx")  # reads 'noise', which a plain single-pass spec does not feed
    with pytest.raises(GraphContractError, match="noise"):
        create_backend(backend, _user_bundle(tmp_path, "unfed")).load()
    _user_onnx(tmp_path / "tokens.onnx", tokens_dtype=TensorProto.INT64, extra_noise=False)
    ins = {"max_tokens": 6, "input": "tokens", "mask_input": "token_mask"}  # int32 ids, float mask: wrong
    with pytest.raises(GraphContractError, match="tokens"):
        create_backend(backend, _user_bundle(tmp_path, "dtype", weights="tokens.onnx", instruction=ins)).load()
    with pytest.raises(GraphContractError, match="velocity"):
        create_backend(backend, _user_bundle(tmp_path, "out", weights="tokens.onnx",
                                             instruction={**ins, "ids_dtype": "int64", "mask_dtype": "bool"},
                                             action={"output": "velocity", "steps": 4, "dims": 7})).load()
    # declared right: int64 ids and a bool mask, outputs read by name (actions is output 1, not 0)
    bundle = _user_bundle(tmp_path, "ok", weights="tokens.onnx",
                          instruction={**ins, "ids_dtype": "int64", "mask_dtype": "bool"})
    with create_backend(backend, bundle) as runner:
        inputs = example_inputs(bundle.spec, 2, seed=0)
        assert inputs["tokens"].dtype == np.int64 and inputs["token_mask"].dtype == bool
        actions = runner.infer(inputs)["actions"]
    assert actions.shape == (2, 4, 7)
    expected = inputs["image_primary"].mean(axis=(1, 2, 3))[:, None, None] + (
        inputs["state"] @ np.linspace(-1, 1, 56, dtype=np.float32).reshape(8, 7))[:, None, :]
    token_term = 0.01 * (inputs["tokens"] * inputs["token_mask"]).mean(axis=1)[:, None, None]
    np.testing.assert_allclose(actions, np.broadcast_to(expected + token_term, actions.shape), atol=1e-5)


@needs_onnx
@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_unrolled_graph_reads_seeded_noise_and_fixed_batch_is_split_and_padded(tmp_path, backend):
    _user_onnx(tmp_path / "model.onnx")
    program = {"graphs": [{"name": "model", "inputs": ["image_primary", "state", "noise"],
                           "outputs": ["aux", "actions"], "batch": 2}], "seed": 7}
    bundle = _user_bundle(tmp_path, "unrolled", program=program)
    assert bundle.spec.fixed_batch == 2
    inputs = example_inputs(bundle.spec, 3, seed=1)
    noise = prog.call_noise(1, 0, (3, 4, 7))
    with create_backend(backend, bundle) as runner:
        a = runner.infer({**inputs, "noise": noise})["actions"]  # batch 3 on a batch-2 graph: split + padded
        generated = runner.infer(inputs)["actions"]  # noise drawn from (seed 7, call 1)
    base = inputs["image_primary"].mean(axis=(1, 2, 3))[:, None, None] + (
        inputs["state"] @ np.linspace(-1, 1, 56, dtype=np.float32).reshape(8, 7))[:, None, :]
    np.testing.assert_allclose(a, base + noise, atol=1e-5)
    assert a.shape == (3, 4, 7)
    # each fixed-batch piece is one program call: calls 1 and 2 after the two of the first infer
    np.testing.assert_allclose(generated[:2], base[:2] + prog.call_noise(7, 2, (2, 4, 7)), atol=1e-5)


@needs_onnx
@pytest.mark.skipif(not HAVE_OV, reason="needs openvino: pip install openvino")
def test_changing_external_weights_invalidates_the_openvino_cache(tmp_path):
    _user_onnx(tmp_path / "model.onnx", extra_noise=False, external=True)
    bundle = _user_bundle(tmp_path, "ext")
    first = bundle.export("openvino")
    import onnx
    from onnx import numpy_helper

    data = tmp_path / "model.onnx.data"
    before = data.read_bytes()
    model = onnx.load(str(tmp_path / "model.onnx"))  # loads the external weights
    for init in model.graph.initializer:
        if init.name == "w_state":
            init.CopyFrom(numpy_helper.from_array(2.0 * numpy_helper.to_array(init), "w_state"))
    data.unlink()
    onnx.save_model(model, str(tmp_path / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    assert data.read_bytes() != before and len(data.read_bytes()) == len(before)
    again = ModelBundle(bundle.spec, cache_dir=tmp_path / "cache")
    assert again.content_hash() != bundle.content_hash()
    assert again.export("openvino") != first
    data.unlink()
    with pytest.raises(ModelFileError, match="external data"):
        ModelBundle(bundle.spec, cache_dir=tmp_path / "cache").content_hash()


def test_opencl_says_it_runs_single_pass_programs_only():
    with pytest.raises(BackendError, match="single_pass") as info:
        create_backend("opencl", load_model("tiny-flow")).load()
    assert info.value.reason == "program_unsupported"


# --- tflite ---------------------------------------------------------------------------------------------
def _tflite_model(path: Path, with_noise: bool, outputs: tuple[str, ...]) -> Path:
    import torch

    try:
        import litert_torch
    except ImportError:
        pytest.skip("tflite converter missing: litert-torch; install with pip install -r requirements/litert.txt")

    class Policy(torch.nn.Module):
        def forward(self, image_primary, state, noise=None):
            base = image_primary.mean(dim=(1, 2, 3)).reshape(-1, 1, 1) + state[:, :7].reshape(-1, 1, 7)
            actions = base.expand(-1, 4, 7) + (noise if noise is not None else 0.0)
            return {name: actions for name in outputs}

    sample = {"image_primary": torch.zeros(1, 3, 8, 8), "state": torch.zeros(1, 8)}
    if with_noise:
        sample["noise"] = torch.zeros(1, 4, 7)
    litert_torch.convert(Policy().eval(), sample_kwargs=sample).export(str(path))
    return path


@pytest.mark.skipif(not (module_available("ai_edge_litert") or module_available("tflite_runtime")),
                    reason="needs LiteRT: pip install ai-edge-litert")
def test_tflite_unfed_input_and_missing_output_fail_at_load(tmp_path):
    _tflite_model(tmp_path / "noise.tflite", True, ("actions",))
    with pytest.raises(ModelFileError, match="noise"):
        create_backend("tflite", _user_bundle(tmp_path, "unfed", format="tflite", weights="noise.tflite")).load()
    _tflite_model(tmp_path / "two.tflite", False, ("actions", "aux"))
    with pytest.raises(ModelFileError, match="velocity"):
        create_backend("tflite", _user_bundle(tmp_path, "out", format="tflite", weights="two.tflite",
                                              action={"output": "velocity", "steps": 4, "dims": 7})).load()
    # wrong dtype: the spec feeds int32 token ids to a float input of the same name
    _tflite_model(tmp_path / "ok.tflite", False, ("actions",))
    bundle = _user_bundle(tmp_path, "ok", format="tflite", weights="ok.tflite")
    with create_backend("tflite", bundle) as runner:
        assert runner.infer(example_inputs(bundle.spec, 1))["actions"].shape == (1, 4, 7)
    from vla_accel.backends.program import GraphSignature, TensorInfo, check_graph

    with pytest.raises(GraphContractError, match="int32"):
        sig = create_backend("tflite", bundle).load().graph_signatures()
        (name, signature), = sig.items()
        check_graph("tflite", name, "ok.tflite", signature,
                    {"image_primary": TensorInfo("int32", None), "state": TensorInfo("float32", (8,))}, ("actions",))
    assert isinstance(signature, GraphSignature)


# --- reference programs ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny-flow", "tiny-diffusion", "tiny-ar"])
def test_reference_programs_match_their_committed_torch_reference(name):
    from vla_accel.models.reference import load_program_reference

    bundle = load_model(name)
    case = load_program_reference(bundle)
    with create_backend("torch", bundle) as runner:
        actions = runner.infer(case.inputs)["actions"]
        assert set(runner.last_stage_ms) >= {"prefix", "step", "program_total"}
    assert np.abs(actions - case.actions).max() <= case.tolerance("fp32")


@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_tiny_flow_split_graphs_match_torch_with_the_same_noise(backend):
    from vla_accel.models.reference import load_program_reference

    bundle = load_model("tiny-flow")
    case = load_program_reference(bundle)
    with create_backend(backend, bundle) as runner:
        actions = runner.infer(case.inputs)["actions"]
        stages = runner.last_stage_ms
    assert np.abs(actions - case.actions).max() <= 1e-4
    assert stages["steps"] == 10 and stages["prefix"] > 0 and stages["step"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-diffusion", "tiny-ar"])
@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_diffusion_and_autoregressive_graphs_match_torch(name, backend):
    from vla_accel.models.reference import load_program_reference

    bundle = load_model(name)
    case = load_program_reference(bundle)
    with create_backend(backend, bundle) as runner:
        actions = runner.infer(case.inputs)["actions"]
    assert np.abs(actions - case.actions).max() <= 1e-4


def test_base_flow_builds_and_runs_on_cpu_at_batch_1():
    bundle = load_model("base-flow")
    with create_backend("torch", bundle) as runner:
        inputs = example_inputs(bundle.spec, 1, seed=0)
        actions = runner.infer(inputs)["actions"]
    assert actions.shape == (1, 50, 32) and np.isfinite(actions).all()


# --- end to end: replay and the node's session ---------------------------------------------------------
@pytest.mark.skipif(not HAVE_ORT, reason="needs onnxruntime")
def test_replay_runs_a_flow_program_and_reports_its_stages(tmp_path):
    pytest.importorskip("rosbags", reason="needs rosbags: pip install rosbags")
    import json

    from vla_accel.bags.sample import make_sample_bag
    from vla_accel.cli import main as cli_main

    sample = make_sample_bag(tmp_path / "sample", frames=4, broken=False)
    out = tmp_path / "out"
    code = cli_main(["replay", str(sample.path), "--model", "tiny-flow", "--backends", "onnxruntime",
                     "--out", str(out), "--bare-iterations", "2", "--no-progress"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    rows = [r for r in report["backends"] if "error" not in r]
    assert len(rows) == 1 and rows[0]["chunks"] >= 3
    for row in rows:
        stages = row["program_stages_ms"]
        assert stages["steps"] == 10 and 0 < stages["prefix_p50"] < stages["program_p50"]
    assert "Policy program stages" in (out / "report.md").read_text()


def test_session_runs_tiny_flow_with_stage_metrics():
    from vla_accel.core.engine import Engine
    from vla_accel.core.types import Observation

    bundle = load_model("tiny-flow")
    backend = create_backend("onnxruntime" if HAVE_ORT else "torch", bundle).load()
    engine = Engine(bundle, backend)
    frame = np.zeros((96, 128, 3), dtype=np.uint8)
    chunk = engine.infer_one(Observation(images={"primary": frame}, instruction="pick", stamp_ns=1,
                                         state=np.zeros(8)))
    assert chunk.values.shape == (16, 7) and chunk.names[0] == "x"
    snap = engine.metrics.snapshot()
    assert snap.stage("prefix")["count"] == 1 and snap.stage("step")["p50"] > 0
    assert snap.extra["program_steps"] == 10
    from vla_accel.ros.diagnostics import fill_stats_msg

    class Stats:  # the message's fields (the built message is tested in the ROS tests)
        class header:
            class stamp:
                sec = nanosec = 0
        prefix_p50_ms = 0.0

    msg = fill_stats_msg(Stats(), snap, 1)
    assert msg.program_steps == 10 and msg.prefix_p50_ms > 0
    engine.close()


def test_the_worked_specs_of_docs_policies_load():
    folder = Path(__file__).resolve().parents[1] / "docs" / "policies"
    specs = {p.stem: ModelSpec.from_yaml(p) for p in sorted(folder.glob("*.yaml"))}
    kinds = {s.program.kind for s in specs.values()}
    assert kinds == {"single_pass", "flow_matching", "diffusion", "autoregressive"}
    assert specs["act_single_pass"].fixed_batch == 1 and not specs["act_single_pass"].instruction.enabled
    assert specs["pi0_flow"].cameras[0].pad == "bottom_right"
    assert specs["groot_flow"].program.flow.time_dtype == "int64"
    tokens = specs["openvla_autoregressive"].program.tokens
    assert prog.tokens_to_values(np.array([31999]), tokens)[0] == tokens.centres()[0]


@needs_onnx
@pytest.mark.skipif(not HAVE_ORT, reason="needs onnxruntime")
def test_bench_skips_a_batch_the_model_cannot_take_and_keeps_the_others(tmp_path):
    from vla_accel.commands.bench import run_backends

    _user_onnx(tmp_path / "model.onnx", extra_noise=False, batch=1)  # exported with a fixed batch of 1
    _user_bundle(tmp_path, "fixed")
    report = run_backends(model=str(tmp_path / "fixed.yaml"), backends=["onnxruntime"], batches=[1, 2],
                          warmup=1, iters=2, openvino_default=False, onnxruntime_int8=False, log=lambda m: None)
    rows = {r["batch"]: r for r in report["results"]}
    assert rows[1]["iterations"] == 2 and "error" not in rows[1]
    assert "batch 2" in rows[2]["error"]


@pytest.mark.slow
def test_bench_reports_program_stages_and_the_prefix_cache():
    from vla_accel.commands.bench import format_table, run_backends

    report = run_backends(model="tiny-diffusion", backends=["torch"], batches=[1], warmup=1, iters=3,
                          openvino_default=False, onnxruntime_int8=False, log=lambda m: None)
    (row,) = report["results"]
    assert row["stages_ms"]["steps"] == 10 and row["chunk_rate_hz"] > 0
    assert report["prefix_cache"]["per_backend"]["torch"]["speedup"] > 0
    assert "prefix once speedup" in format_table(report)


@pytest.mark.slow
@pytest.mark.skipif(not (module_available("ai_edge_litert") and module_available("litert_torch")),
                    reason="needs LiteRT and its converter: pip install -r requirements/litert.txt")
def test_tiny_flow_runs_on_tflite_like_torch():
    from vla_accel.models.reference import load_program_reference

    bundle = load_model("tiny-flow")
    case = load_program_reference(bundle)
    with create_backend("tflite", bundle) as runner:
        actions = runner.infer(case.inputs)["actions"]
    assert np.abs(actions - case.actions).max() <= 1e-4
    with pytest.raises(BackendError, match="single_pass, flow_matching, diffusion"):
        create_backend("tflite", load_model("tiny-ar")).load()


def test_runner_stacks_observation_history_oldest_first():
    from vla_accel.backends.program import ProgramRunner

    spec = ModelSpec.from_dict(_spec_dict(program={
        "graphs": [{"name": "model", "inputs": ["image_primary", "state"], "outputs": ["actions"]}],
        "history": [{"input": "state", "frames": 3}]}))

    class StateHistoryPolicy:  # actions[b, k, 0] = state of frame k (oldest first), dimension 0
        def run(self, feeds):
            hist = feeds["state"]
            assert hist.shape == (2, 3, 8)
            out = np.zeros((2, 4, 7), dtype=np.float32)
            out[:, :3, 0] = hist[:, :, 0]
            return {"actions": out}

    runner = ProgramRunner(spec, {"model": StateHistoryPolicy()})
    inputs = example_inputs(spec, 2, seed=0)
    seen = []
    for value in (1.0, 2.0, 3.0, 4.0):
        inputs["state"][:, 0] = value
        actions, _ = runner.run(inputs, 0)
        seen.append(actions[0, :3, 0].tolist())
    assert seen == [[1, 1, 1], [1, 1, 2], [1, 2, 3], [2, 3, 4]]
