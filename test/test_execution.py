"""Chunk execution without ROS: boundary metric, delay compensation, RTC, trajectories, URDF limits."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vla_accel.core.boundary import BoundaryMeter, jerk_series, summarize
from vla_accel.core.execution import (ChunkExecutor, DelayEstimator, ExecutionConfig, first_live_step,
                                      plan_trajectory, trajectory_joint_names)
from vla_accel.core.limits import JointLimiter, parse_urdf_limits
from vla_accel.core.metrics import InferenceMetrics
from vla_accel.core.rtc import RtcGuide, RtcPlan, align_previous, blend_chunk, guidance_weight, soft_mask
from vla_accel.core.spec import ActionSpec
from vla_accel.core.types import ActionChunk
from vla_accel.errors import ExecutionError, RobotDescriptionError

MS = 1_000_000
DT = 0.05


def _spec(space="joint_position", dims=2, steps=10):
    names = tuple(f"j{i}" for i in range(dims))
    return ActionSpec(output="actions", steps=steps, dims=dims, names=names, space=space, dt=DT,
                      low=(-1.0,) * dims, high=(1.0,) * dims)


def _chunk(stamp_ns, values, space="joint_position"):
    values = np.asarray(values, dtype=np.float32)
    return ActionChunk(stamp_ns=stamp_ns, dt=DT, names=tuple(f"j{i}" for i in range(values.shape[1])),
                       values=values, space=space)


# --- boundary metric ------------------------------------------------------------------------------
def test_jump_and_jerk_on_known_sequences():
    meter = BoundaryMeter(dims=2, period_s=0.1)
    meter.record_switch(np.array([0.0, 1.0]), np.array([0.5, 0.75]))
    assert meter.jump_max_per_dim() == pytest.approx([0.5, 0.25])
    # A constant-velocity ramp has zero jerk; one kink gives third differences of +-1 -> 1/0.1^3.
    for x in [0.0, 1.0, 2.0, 3.0, 4.0]:
        meter.record_output(np.array([x, 0.0]))
    assert meter.summary()["action_jerk_max"] == pytest.approx(0.0)
    meter.record_output(np.array([4.0, 0.0]))  # stops: second difference -1 -> third difference -1
    summary = meter.summary()
    assert summary["action_jerk_max"] == pytest.approx(1.0 / 0.1**3)
    assert summary["chunk_jump_max"] == pytest.approx(0.5)
    assert summary["chunk_switches"] == 1
    ramp = np.stack([np.arange(6.0), np.zeros(6)], axis=1)
    assert jerk_series(ramp, 0.1) == pytest.approx(np.zeros(3))
    assert summarize(np.zeros((0, 2)), np.zeros(0))["chunk_jump_max"] == 0.0


def test_metrics_snapshot_carries_the_boundary_summary():
    metrics = InferenceMetrics()
    meter = BoundaryMeter(dims=1, period_s=0.05)
    metrics.attach_boundary(meter)
    meter.record_switch(np.array([0.0]), np.array([0.3]))
    extra = metrics.snapshot().as_dict()
    assert extra["chunk_jump_max"] == pytest.approx(0.3) and extra["chunk_switches"] == 1


# --- delay compensation and async execution ---------------------------------------------------------
def test_first_live_step_and_delay_estimate():
    assert first_live_step(0, 0, DT) == 0
    assert first_live_step(0, 120 * MS, DT) == 3  # steps 0,1,2 (0, 50, 100 ms) are past
    assert first_live_step(0, 100 * MS, DT) == 2  # step 2 is exactly now: still live
    assert first_live_step(0, 100 * MS, DT, lead_s=0.01) == 3
    est = DelayEstimator(initial_s=0.2)
    assert est.estimate_s == 0.2
    for d in [0.1] * 9 + [0.3]:
        est.record(d)
    assert 0.1 < est.estimate_s <= 0.3


def test_executor_never_replays_stale_steps_and_switches_at_the_live_step():
    spec = _spec()
    ex = ChunkExecutor(spec, ExecutionConfig(mode="naive", threshold=0.5, control_period_s=DT))
    assert ex.should_start_inference(0)
    ex.inference_started(0)
    assert not ex.should_start_inference(10 * MS)  # one in flight
    first = np.stack([np.arange(10.0), np.zeros(10)], axis=1)
    ex.push(_chunk(0, first), now_ns=0)
    assert ex.sample(0).values[0] == pytest.approx(0.0)
    assert ex.sample(100 * MS).values[0] == pytest.approx(2.0)
    # Second chunk from a frame at 100 ms arriving 150 ms later (at 250 ms): its steps 0..2 are past.
    second = np.stack([100.0 + np.arange(10.0), np.zeros(10)], axis=1)
    assert ex.should_start_inference(250 * MS)  # half of the first chunk is left
    ex.inference_started(100 * MS)
    out = ex.push(_chunk(100 * MS, second), now_ns=250 * MS)
    assert out is not None and ex.stale_steps_skipped == 3
    sample = ex.sample(250 * MS)
    assert sample.values[0] == pytest.approx(103.0)  # step 3 of the new chunk, not step 0
    assert ex.meter.summary()["chunk_jump_max"] == pytest.approx(103.0 - 5.0)
    # A chunk whose whole span is past is discarded and counted.
    assert ex.push(_chunk(0, first), now_ns=2_000 * MS) is None and ex.chunks_late == 1


def test_executor_starts_early_when_the_threshold_would_leave_the_robot_idle():
    spec = _spec()
    ex = ChunkExecutor(spec, ExecutionConfig(mode="naive", threshold=0.1, control_period_s=DT))
    ex.push(_chunk(0, np.zeros((10, 2))), now_ns=300 * MS)  # measured delay 300 ms
    # 500 ms chunk: at 150 ms 350 ms are left: above the 10 % threshold but the delay would run it dry.
    assert ex.should_start_inference(150 * MS)
    assert ex.early_starts == 1


# --- RTC ----------------------------------------------------------------------------------------------
def test_soft_mask_schedules():
    w = soft_mask(10, 3, 4, "exp")
    assert w[:3] == pytest.approx([1, 1, 1]) and w[7:] == pytest.approx([0, 0, 0])
    assert np.all(np.diff(w[3:7]) < 0) and 0 < w[6] < w[3] < 1
    assert soft_mask(10, 3, 4, "linear")[3] == pytest.approx(4 / 5)
    assert soft_mask(10, 3, 4, "ones")[:7] == pytest.approx(np.ones(7))
    assert soft_mask(10, 3, 4, "zeros")[3:] == pytest.approx(np.zeros(7))
    with pytest.raises(ValueError):
        soft_mask(10, 3, 4, "cosine")
    assert guidance_weight(0.0, 5.0) == 5.0 and guidance_weight(0.5, 5.0) == pytest.approx(2.0)


def test_align_previous_puts_the_old_chunk_on_the_new_grid():
    prev = np.arange(10.0)[:, None]
    target, overlap = align_previous(prev, 0, DT, 150 * MS, 10)
    assert target[:, 0] == pytest.approx([3, 4, 5, 6, 7, 8, 9, 9, 9, 9])
    assert overlap == 7


def _gaussian_flow(mu, sigma):
    """The exact flow-matching velocity (x_tau = tau*a + (1-tau)*z, tau 0 -> 1) for data a ~ N(mu, sigma^2)."""

    def velocity(x, tau):
        gain = tau * sigma**2 / (tau**2 * sigma**2 + (1 - tau) ** 2)
        a_hat = mu + gain * (x - tau * mu)
        return (a_hat - x) / (1 - tau)

    return velocity


def _integrate(velocity, x0, steps, guide=None):
    x = x0.copy()
    times = np.linspace(0.0, 1.0, steps + 1)
    for t, t_next in zip(times[:-1], times[1:]):
        v = velocity(x, t)
        if guide is not None:
            v = guide.velocity(x, v, t)
        x = x + (t_next - t) * v
    return guide.finish(x) if guide is not None else x


def test_rtc_guidance_continues_the_previous_chunk_on_a_synthetic_flow():
    steps, dims = 16, 2
    mu = np.stack([np.linspace(0, 1, steps), np.linspace(1, 0, steps)], axis=1)
    velocity = _gaussian_flow(mu, sigma=0.5)
    previous = mu + 0.8  # the chunk being executed disagrees with this prediction by 0.8
    plan = RtcPlan.from_previous(previous, 0, DT, 0, steps, delay_s=4 * DT, schedule="exp")
    assert plan.frozen == 4 and plan.overlap == steps
    jumps_free, jumps_rtc, tails = [], [], []
    for seed in range(8):
        x0 = np.random.default_rng(seed).standard_normal((steps, dims))
        free = _integrate(velocity, x0, 10)
        guided = _integrate(velocity, x0, 10, plan.guide(0.0, 1.0, max_guidance=5.0))
        assert guided[:4] == pytest.approx(previous[:4])  # frozen prefix exactly
        jumps_free.append(np.abs(free[4] - previous[4]).max())
        jumps_rtc.append(np.abs(guided[4] - previous[4]).max())
        tails.append(np.abs(guided[-1] - free[-1]).max())
    assert np.mean(jumps_rtc) < np.mean(jumps_free) / 3
    # Past the overlap's guided region the sample stays the policy's own (weights are 0 at the end).
    assert np.mean(tails) < np.mean(jumps_free)


def test_rtc_guide_works_in_the_pi0_time_convention_and_on_batches():
    steps = 8
    mu = np.zeros((steps, 1))
    vel_tau = _gaussian_flow(mu, 1.0)
    # pi0 / SmolVLA: t from 1 (noise) to 0 (data), x <- x + (t_next - t) * v with v = noise - action.
    velocity = lambda x, t: -vel_tau(x, 1.0 - t)  # noqa: E731
    previous = np.full((steps, 1), 2.0)
    plan = RtcPlan.from_previous(previous, 0, DT, 0, steps, delay_s=2 * DT, schedule="linear")
    guide = plan.guide(1.0, 0.0)
    x = np.random.default_rng(1).standard_normal((3, steps, 1))  # a batch of 3
    times = np.linspace(1.0, 0.0, 11)
    x_free = x.copy()
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t) * guide.velocity(x, velocity(x, t), t)
        x_free = x_free + (t_next - t) * velocity(x_free, t)
    x = guide.finish(x)
    assert np.abs(x[:, 2] - 2.0).mean() < np.abs(x_free[:, 2] - 2.0).mean() / 2
    assert x[:, :2] == pytest.approx(np.full((3, 2, 1), 2.0))


def test_rtc_guide_on_torch_tensors():
    torch = pytest.importorskip("torch", reason="needs torch: pip install torch==2.13.0")
    plan = RtcPlan.from_previous(np.ones((4, 2)), 0, DT, 0, 4, delay_s=DT)
    guide = plan.guide(1.0, 0.0)
    x = torch.zeros(1, 4, 2)
    v = guide.velocity(x, torch.zeros(1, 4, 2), 0.5)
    assert isinstance(v, torch.Tensor) and v.dtype == torch.float32
    assert float(v[0, 0, 0]) < 0  # moves toward the target as t decreases
    assert torch.allclose(guide.finish(x)[0, 0], torch.ones(2))


def test_single_pass_rtc_blend_in_the_executor_removes_the_jump():
    spec = _spec(dims=1)
    jumps = {}
    for mode in ("naive", "rtc"):
        ex = ChunkExecutor(spec, ExecutionConfig(mode=mode, control_period_s=DT, rtc_schedule="linear"))
        ex.push(_chunk(0, np.zeros((10, 1))), now_ns=0)
        for t in range(0, 150, 50):
            ex.sample(t * MS)
        ex.push(_chunk(100 * MS, np.ones((10, 1))), now_ns=150 * MS)
        for t in range(150, 500, 50):
            ex.sample(t * MS)
        jumps[mode] = ex.meter.summary()["chunk_jump_max"]
    assert jumps["naive"] == pytest.approx(1.0)
    assert jumps["rtc"] <= jumps["naive"] / 3
    plan = RtcPlan.from_previous(np.zeros((4, 1)), 0, DT, 0, 4, delay_s=DT, schedule="zeros")
    assert blend_chunk(np.ones((4, 1)), plan)[:, 0] == pytest.approx([0, 1, 1, 1])


def test_rtc_guide_rejects_bad_settings():
    with pytest.raises(ValueError):
        RtcGuide(np.zeros((2, 1)), np.zeros(2), 0, t_start=1.0, t_end=1.0)
    with pytest.raises(ExecutionError):
        ExecutionConfig(mode="rtc", rtc_schedule="cosine").validate()
    with pytest.raises(ExecutionError):
        ExecutionConfig(mode="smooth").validate()


# --- trajectories ---------------------------------------------------------------------------------------
def test_plan_trajectory_points_are_all_in_the_future():
    chunk = _chunk(1_000 * MS, np.arange(20.0).reshape(10, 2))
    plan = plan_trajectory(chunk, ("a", "b"), now_ns=1_130 * MS, lead_s=0.0)
    assert plan.first_step == 3 and plan.points == 7
    assert plan.time_from_start_s == pytest.approx(np.arange(3, 10) * DT)
    absolute = plan.header_stamp_ns + plan.time_from_start_s * 1e9
    assert np.all(absolute >= 1_130 * MS) and np.all(np.diff(absolute) > 0)
    assert plan.positions[0] == pytest.approx([6.0, 7.0]) and plan.velocities is None
    assert plan_trajectory(chunk, ("a", "b"), now_ns=5_000 * MS) is None
    vel = plan_trajectory(_chunk(0, np.ones((10, 2)), "joint_velocity"), ("a", "b"), 0)
    assert vel.positions is None and vel.velocities.shape == (10, 2)
    delta = plan_trajectory(_chunk(0, np.ones((10, 2)), "joint_delta"), ("a", "b"), 0, joint_state=np.array([1.0, 2.0]))
    assert delta.positions[-1] == pytest.approx([11.0, 12.0])
    with pytest.raises(ExecutionError):
        plan_trajectory(_chunk(0, np.ones((10, 2)), "joint_delta"), ("a", "b"), 0)


def test_trajectory_joint_names_from_spec_or_mapping():
    assert trajectory_joint_names(_spec()) == ("j0", "j1")
    assert trajectory_joint_names(_spec(), ["shoulder", "elbow"]) == ("shoulder", "elbow")
    with pytest.raises(ExecutionError, match="2 dimensions"):
        trajectory_joint_names(_spec(), ["shoulder"])
    with pytest.raises(ExecutionError, match="TwistStamped"):
        trajectory_joint_names(_spec(space="eef_delta"))


# --- URDF limits ----------------------------------------------------------------------------------------
URDF = """<?xml version="1.0"?>
<robot name="arm">
  <link name="base"/><link name="l1"/><link name="l2"/><link name="l3"/>
  <joint name="j0" type="revolute"><parent link="base"/><child link="l1"/>
    <limit lower="-0.5" upper="0.5" velocity="1.0" effort="10"/></joint>
  <joint name="j1" type="continuous"><parent link="l1"/><child link="l2"/><limit velocity="2.0" effort="1"/></joint>
  <joint name="fixed" type="fixed"><parent link="l2"/><child link="l3"/></joint>
</robot>"""


def test_urdf_limits_parse_and_clip():
    limits = parse_urdf_limits(URDF)
    assert set(limits) == {"j0", "j1"}
    assert limits["j0"].lower == -0.5 and limits["j0"].velocity == 1.0 and math.isinf(limits["j1"].upper)
    limiter = JointLimiter(["j0", "j1"], limits)
    out = limiter.limit_positions(np.array([[0.0, 0.0], [0.9, 0.05], [0.9, 5.0]]), dt=0.1)
    assert out[:, 0] == pytest.approx([0.0, 0.1, 0.2])  # clipped to 0.5 then moved 0.1 per 0.1 s
    assert out[:, 1] == pytest.approx([0.0, 0.05, 0.25])
    assert limiter.position_clipped == 2 and limiter.velocity_limited == 3
    assert limiter.limit_velocities(np.array([[3.0, -3.0]]))[0] == pytest.approx([1.0, -2.0])
    assert limiter.counters()["limits_velocity_limited"] == 5


@pytest.mark.parametrize("text, match", [
    ("", "empty"),
    ("<robot><joint", "not valid XML"),
    ("<sdf/>", "root element"),
    ('<robot><joint name="a" type="revolute"/></robot>', "no <limit>"),
    ('<robot><joint name="a" type="revolute"><limit lower="x" upper="1" velocity="1"/></joint></robot>', "not a number"),
    ('<robot><joint name="a" type="prismatic"><limit lower="1" upper="0" velocity="1"/></joint></robot>', "lower"),
])
def test_malformed_urdf_is_a_clear_error(text, match):
    with pytest.raises(RobotDescriptionError, match=match):
        parse_urdf_limits(text)


def test_limiter_names_missing_joints():
    with pytest.raises(RobotDescriptionError, match="no commanded joint"):
        JointLimiter(["j0", "wrist"], parse_urdf_limits(URDF))
    assert JointLimiter(["j0", "gripper"], parse_urdf_limits(URDF)).velocity[1] == math.inf


# --- the execution replay's simulated clock (pure) ----------------------------------------------------------
def test_simulated_execution_skips_stale_steps_and_rtc_blend_reduces_the_jump():
    from vla_accel.bags.execution import jump_ratios, simulate
    from vla_accel.core.types import Observation

    spec = _spec(dims=1, steps=10)
    stamps = [i * 50 * MS for i in range(60)]
    frames = [Observation(images={}, instruction="", stamp_ns=s) for s in stamps]

    def infer(obs, plan):  # each frame predicts a constant that alternates: every switch disagrees by 1
        level = float((obs.stamp_ns // (50 * MS)) % 2)
        return _chunk(obs.stamp_ns, np.full((10, 1), level))

    jumps = {}
    for mode in ("naive", "blend", "rtc"):
        # threshold 0.8: the next inference starts with 8 steps left, so 5 steps blend after the 3 frozen
        config = ExecutionConfig(mode=mode, threshold=0.8, control_period_s=DT, initial_delay_s=3 * DT,
                                 rtc_schedule="linear")
        run = simulate(stamps, infer, lambda i: frames[i], spec, config, delay_s=3 * DT)
        assert run.figures["execution_stale_steps_skipped"] == 3 * run.figures["execution_chunks_executed"]
        assert run.figures["execution_chunks_late"] == 0
        jumps[mode] = run.figures["chunk_jump_max"]
    assert jumps["naive"] == pytest.approx(1.0)
    assert jumps["rtc"] < jumps["naive"] / 3
    ratios = jump_ratios([{"mode": "naive", "delay_periods": 3.0, "chunk_jump_max": 1.0},
                          {"mode": "rtc", "delay_periods": 3.0, "chunk_jump_max": 0.25}])
    assert ratios == {"rtc_vs_naive_at_3x": 0.25}


def test_rtc_guide_inside_the_program_runner_of_a_flow_matching_model():
    pytest.importorskip("torch", reason="needs torch: pip install torch==2.13.0")
    from vla_accel.backends.base import BackendOptions
    from vla_accel.core.spec import example_inputs
    from vla_accel.backends.registry import create_backend
    from vla_accel.core.postprocess import Postprocessor
    from vla_accel.core.program import call_noise
    from vla_accel.models import load_model

    bundle = load_model("tiny-flow")
    spec = bundle.spec
    if getattr(spec, "program", None) is None or spec.program.kind != "flow_matching":
        pytest.skip("needs the tiny-flow flow-matching reference program")
    backend = create_backend("torch", bundle, BackendOptions(threads=1))
    backend.load()
    try:
        runner = backend._runner
        post = Postprocessor(spec)
        inputs = dict(example_inputs(spec, 1, seed=0))
        inputs[spec.program.noise] = call_noise(spec.program.seed, 7, (1, spec.action.steps, spec.action.dims))
        free = backend.infer(inputs)[spec.action.output]
        previous = post.unnormalize(free, 1)[0] * 0.0 + 0.5 * (np.asarray(spec.action.clip_high, np.float32))
        plan = RtcPlan.from_previous(previous, 0, spec.action.dt, 0, spec.action.steps, delay_s=3 * spec.action.dt)
        runner.guide = plan.guide(spec.program.flow.t_start, spec.program.flow.t_end, 5.0,
                                  scale=post.scale, offset=post.offset)
        try:
            guided = backend.infer(inputs)[spec.action.output]
        finally:
            runner.guide = None
        target = (plan.target - post.offset) / post.scale
        assert guided[0, :3] == pytest.approx(target[:3], abs=1e-5)  # frozen prefix written exactly
        assert np.abs(guided[0, 3] - target[3]).max() < np.abs(free[0, 3] - target[3]).max()
        assert np.allclose(backend.infer(inputs)[spec.action.output], free)  # guide cleared: plain sample again
    finally:
        backend.close()


def test_bench_execution_reports_jump_and_jerk_at_the_measured_delay(tmp_path, capsys):
    pytest.importorskip("torch", reason="needs torch: pip install torch==2.13.0")
    import argparse
    import json

    from vla_accel.benchmarks import execution as bench_execution

    args = argparse.Namespace(model="tiny", backends=["torch"], threads=1, ex_modes="naive,rtc", ex_frames=12,
                              ex_threshold=0.5, json_path=tmp_path / "execution.json")
    assert bench_execution.run(args) == 0
    report = json.loads((tmp_path / "execution.json").read_text())
    rows = {r["execution_mode"]: r for r in report["rows"]}
    assert set(rows) == {"naive", "rtc"} and rows["naive"]["delay_ms"] > 0
    assert rows["naive"]["chunk_switches"] >= 1 and "action_jerk_p95" in rows["rtc"]
    assert "torch_rtc_vs_naive" in report["jump_vs_naive"]
    assert "jump max" in capsys.readouterr().out
