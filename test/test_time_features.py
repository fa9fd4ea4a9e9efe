"""Time features computed by the runtime (``program.flow.time_features``): the spec's validation, the
one numpy definition against the reference network's in-graph torch embedding, what every runner feeds
the step graph (ProgramRunner, example feeds, the load-time contract) and that specs without them keep
their content hash."""
from __future__ import annotations

import numpy as np
import pytest

from vla_accel.core import program as prog
from vla_accel.errors import GraphContractError, SpecError

FEATURES = {"kind": "sinusoidal", "dim": 128, "scale": 1000.0}


@pytest.mark.parametrize("value, message", [
    ({"kind": "fourier", "dim": 8}, "kind must be one of sinusoidal"),
    ({"dim": 7}, "even integer"),
    ({"dim": 0}, "even integer"),
    ({"dim": True}, "even integer"),
    ({"scale": 2.0}, "needs 'dim'"),
    ({"dim": 8, "scale": 0}, "scale must be > 0"),
    ({"dim": 8, "scale": float("nan")}, "finite number"),
    ({"dim": 8, "period": 5}, r"unknown flow time_features keys \['period'\]"),
    ("sinusoidal", "must be a mapping"),
])
def test_bad_time_features_are_refused_with_the_reason(value, message):
    data = {"kind": "flow_matching", "prediction": "v", "flow": {"time_features": value},
            "graphs": [{"name": "step", "inputs": ["x_t", "t"], "outputs": ["v"]}]}
    with pytest.raises(SpecError, match=message):
        prog.program_from_dict(data).validate(["image"], "actions")


def test_diffusion_section_takes_them_too_and_the_loop_kind_picks_its_own():
    spec = prog.program_from_dict({"kind": "diffusion", "prediction": "eps",
                                   "diffusion": {"time_features": {"dim": 4}},
                                   "graphs": [{"name": "step", "inputs": ["x_t", "t"], "outputs": ["eps"]}]})
    spec.validate([], "actions")
    assert spec.step_time_features == prog.TimeFeaturesSpec("sinusoidal", 4, 1.0)
    feed = spec.time_feed(30, 3)
    assert feed.shape == (3, 4) and feed.dtype == np.float32
    raw = prog.program_from_dict({"kind": "diffusion", "prediction": "eps",
                                  "graphs": [{"name": "step", "inputs": ["x_t", "t"], "outputs": ["eps"]}]})
    assert raw.step_time_features is None
    assert raw.time_feed(30, 3).tolist() == [30, 30, 30] and raw.time_feed(30, 3).dtype == np.int64


def test_features_are_sin_cos_of_the_scaled_time_in_float64_angles():
    spec = prog.TimeFeaturesSpec("sinusoidal", 8, 1000.0)
    t = np.array([0.0, 0.37, 1.0])
    out = prog.time_features(t, spec)
    assert out.shape == (3, 8) and out.dtype == np.float32
    freqs = 10000.0 ** (-np.arange(4) / 4.0)
    angles = t[:, None] * 1000.0 * freqs[None, :]
    # the ideal frequencies, up to their float32 rounding (6e-8 relative; 1000 rad: 6e-5)
    np.testing.assert_allclose(out, np.concatenate([np.sin(angles), np.cos(angles)], axis=1), atol=1e-4)
    angles = t[:, None] * 1000.0 * prog.sinusoidal_frequencies(8).astype(np.float64)[None, :]
    np.testing.assert_allclose(out, np.concatenate([np.sin(angles), np.cos(angles)], axis=1), atol=1e-7)
    assert np.abs(out).max() <= 1.0
    np.testing.assert_array_equal(out[0], [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(prog.time_features(0.37, spec), out[1:2])


def test_torch_embedding_of_raw_t_agrees_with_the_numpy_features():
    torch = pytest.importorskip("torch")
    from vla_accel.models.policy_network import time_embedding

    for dim, scale, t in ((128, 1000.0, np.linspace(0.0, 1.0, 11)), (64, 1.0, np.arange(0, 100, 9))):
        spec = prog.TimeFeaturesSpec("sinusoidal", dim, scale)
        expected = prog.time_features(t, spec)
        actual = time_embedding(torch.tensor(t, dtype=torch.float32), dim, scale).numpy()
        # the same frequencies; torch forms the angles in float32 (1000 rad: ulp 6e-5)
        np.testing.assert_allclose(actual, expected, atol=3e-4)
        torch_freqs = torch.exp(torch.from_numpy(prog.sinusoidal_exponents(dim))).numpy()
        np.testing.assert_allclose(torch_freqs, prog.sinusoidal_frequencies(dim), rtol=3e-7)


class _Recording:
    def __init__(self, inner, store):
        self.inner, self.store = inner, store

    def run(self, feeds):
        self.store.append({k: np.array(v.numpy() if hasattr(v, "numpy") else v) for k, v in feeds.items()})
        return self.inner.run(feeds)

    def signature(self):
        return self.inner.signature()


def test_runner_feeds_each_step_the_features_of_its_time_and_the_graphs_take_them():
    from vla_accel.backends.program import ProgramRunner
    from vla_accel.backends.registry import create_backend
    from vla_accel.core.spec import example_inputs, program_example_feeds
    from vla_accel.models import load_model

    bundle = load_model("tiny-flow")
    program = bundle.spec.program
    features = program.flow.time_features
    assert features == prog.TimeFeaturesSpec("sinusoidal", 128, 1000.0)
    assert program_example_feeds(bundle.spec, 2)[program.time].shape == (2, 128)
    with create_backend("torch", bundle) as backend:
        runner = backend._runner
        store: list = []
        sessions = {name: _Recording(s, store) for name, s in runner.sessions.items()}
        recording = ProgramRunner(bundle.spec, sessions, runner.ops)
        inputs = example_inputs(bundle.spec, 2)
        actions, _ = recording.run(inputs, 0)
        np.testing.assert_array_equal(actions, backend.infer(inputs)[bundle.spec.action.output])
    steps = [feeds for feeds in store if program.time in feeds]
    grid = prog.flow_times(program.flow, program.steps)
    assert len(steps) == program.steps
    for i, feeds in enumerate(steps):
        fed = feeds[program.time]
        assert fed.shape == (2, 128) and fed.dtype == np.float32
        np.testing.assert_array_equal(fed, np.repeat(prog.time_features(grid[i], features), 2, axis=0))


def test_contract_check_wants_the_features_shape_at_the_time_input():
    from vla_accel.backends.program import GraphSignature, TensorInfo, check_graph, expected_feeds
    from vla_accel.models import load_model

    spec = load_model("tiny-flow").spec
    step = spec.program.step
    produced = {"prefix_keys": TensorInfo("float32", None), "prefix_values": TensorInfo("float32", None),
                "prefix_bias": TensorInfo("float32", None)}
    expected = expected_feeds(spec, step.inputs, produced)
    assert expected[spec.program.time] == TensorInfo("float32", (128,))
    inputs = {name: TensorInfo(info.dtype, None if info.shape is None else (None, *info.shape))
              for name, info in expected.items()}
    check_graph("test", "step", "step.onnx", GraphSignature(inputs, {"velocity": TensorInfo("float32", None)}),
                expected, ("velocity",))
    raw_t = {**inputs, spec.program.time: TensorInfo("float32", (None,))}  # a graph taking the raw time
    with pytest.raises(GraphContractError, match="input 't' has rank 1 in the graph, the spec feeds rank 2"):
        check_graph("test", "step", "step.onnx", GraphSignature(raw_t, {"velocity": TensorInfo("float32", None)}),
                    expected, ("velocity",))


def test_specs_without_time_features_keep_their_dict_and_round_trip():
    from vla_accel.core.spec import ModelSpec
    from vla_accel.models import load_model

    for name in ("tiny-diffusion", "base-flow", "tiny-flow"):
        spec = load_model(name).spec
        d = spec.to_dict()
        declared = spec.program.step_time_features is not None
        section = d["program"]["flow" if spec.program.kind == "flow_matching" else "diffusion"]
        assert ("time_features" in section) == declared
        assert "time_features" not in d["program"]["diffusion" if spec.program.kind == "flow_matching" else "flow"]
        again = ModelSpec.from_dict(d)
        assert again.program == spec.program and again.to_dict() == d
