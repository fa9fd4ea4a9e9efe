"""ActionStreamer: replayed chunk sequences sampled at control rate (no threads, no clocks)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vla_accel.core.spec import ActionSpec
from vla_accel.core.streaming import ActionStreamer, default_hold
from vla_accel.core.types import ActionChunk
from vla_accel.errors import InputError

DT = 0.1
STEPS = 8
SPEC = ActionSpec(steps=STEPS, dims=2, names=("shoulder", "elbow"), space="joint_position", dt=DT)
NS = 1_000_000_000


def make_chunk(stamp_s: float, values: np.ndarray, stream: str = "default", names=None) -> ActionChunk:
    return ActionChunk(
        stamp_ns=int(round(stamp_s * NS)), dt=DT, names=tuple(names or SPEC.names),
        values=values.astype(np.float32), space=SPEC.space, stream=stream,
    )


def replayed_sequence(period_s=0.2, latency_s=0.15, count=25, seed=3):
    """Chunks predicted every ``period_s`` from a smooth trajectory plus a per-chunk error, arriving
    ``latency_s`` after their source stamp: [(arrival_ns, chunk)]."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        stamp = 1.0 + k * period_s
        times = stamp + DT * np.arange(STEPS)
        truth = np.stack([np.sin(times), 0.5 * np.cos(2 * times)], axis=1)
        error = rng.uniform(-0.3, 0.3, size=(1, 2))
        out.append((int(round((stamp + latency_s) * NS)), make_chunk(stamp, truth + error)))
    return out


def run_replay(streamer: ActionStreamer, sequence, rate_hz: float, stop_s: float | None = None):
    """Sample at ``rate_hz`` from the first arrival; push chunks as their arrival time comes."""
    period_ns = int(round(NS / rate_hz))
    t = sequence[0][0]
    end = sequence[-1][0] + int(0.3 * NS) if stop_s is None else int(stop_s * NS)
    pending = list(sequence)
    samples = []
    while t <= end:
        while pending and pending[0][0] <= t:
            arrival, chunk = pending.pop(0)
            streamer.push(chunk, now_ns=arrival)
        samples.append(streamer.sample_detail(t))
        t += period_ns
    return samples


def chunk_slope_and_spread(sequence):
    values = np.stack([c.values.astype(np.float64) for _, c in sequence])  # (chunks, steps, dims)
    slope = np.abs(np.diff(values, axis=1)).max(axis=(0, 1)) / DT  # per second, per dim
    spread = values.max(axis=(0, 1)) - values.min(axis=(0, 1))
    return slope, spread


def max_jump(samples, skip_until_ns: int = 0):
    values = np.stack([s.values for s in samples if s.t_ns >= skip_until_ns]).astype(np.float64)
    return np.abs(np.diff(values, axis=0)).max(axis=0)


@pytest.mark.parametrize("rate_hz", [30.0, 100.0])
@pytest.mark.parametrize("mode", ["latest", "ensemble", "blend"])
def test_no_gaps_at_control_rate(mode, rate_hz):
    sequence = replayed_sequence()
    samples = run_replay(ActionStreamer(SPEC, mode, hold="last"), sequence, rate_hz)
    assert samples and all(s is not None for s in samples)
    assert all(np.all(np.isfinite(s.values)) and s.values.shape == (2,) for s in samples)
    # Chunks (0.8 s long) arrive every 0.2 s: nothing runs out until the stream stops.
    last_end = sequence[-1][1].time_of_step(STEPS)
    assert not any(s.holding for s in samples if s.t_ns < last_end)
    consecutive = np.diff([s.t_ns for s in samples])
    assert np.all(consecutive == consecutive[0])


@pytest.mark.parametrize("rate_hz", [30.0, 100.0])
def test_blend_jumps_stay_within_the_crossfade_bound(rate_hz):
    blend_time_s = 0.4  # longer than the chunk period: fades get frozen mid-way, the bound still holds
    sequence = replayed_sequence()
    period_s = 1.0 / rate_hz
    slope, spread = chunk_slope_and_spread(sequence)
    bound = slope * period_s + spread * period_s / blend_time_s
    blended = run_replay(ActionStreamer(SPEC, "blend", blend_time_s=blend_time_s, hold="last"), sequence, rate_hz)
    latest = run_replay(ActionStreamer(SPEC, "latest", hold="last"), sequence, rate_hz)
    assert np.all(max_jump(blended) <= bound + 1e-6), (max_jump(blended), bound)
    # The bound is not vacuous: switching to the newest chunk outright breaks it.
    assert np.any(max_jump(latest) > bound)


def prediction_disagreement(sequence, period_steps: int):
    """Largest difference between two chunks' predictions for the same instant (grid points and
    their interpolation neighbours; linear interpolation cannot exceed them)."""
    worst = np.zeros(2)
    chunks = [c.values.astype(np.float64) for _, c in sequence]
    for i, older in enumerate(chunks):
        for j in range(i + 1, len(chunks)):
            offset = (j - i) * period_steps
            for s in range(offset, STEPS):
                for k in (s - offset, min(s - offset + 1, STEPS - 1)):
                    worst = np.maximum(worst, np.abs(older[s] - chunks[j][k]))
    return worst


def test_ensemble_jumps_stay_within_the_weight_bound():
    decay = 0.01
    period_s, latency_s, rate_hz = 0.2, 0.15, 50.0
    sequence = replayed_sequence(period_s=period_s, latency_s=latency_s)
    slope, _ = chunk_slope_and_spread(sequence)
    disagreement = prediction_disagreement(sequence, int(round(period_s / DT)))
    # After warm-up at least n chunks cover every instant (0.8 s chunks every 0.2 s, 0.15 s late).
    n = int(math.floor((STEPS * DT - latency_s) / period_s))
    weights = [math.exp(-decay * j * period_s / DT) for j in range(n)]
    largest_share = max(weights) / sum(weights)
    # Entries (stamp + 0.15 s) and exits (stamp + 0.8 s) are 50 ms apart, never in one 20 ms period,
    # so each step changes by the slope plus at most one chunk's share of the disagreement.
    bound = slope / rate_hz + largest_share * disagreement
    samples = run_replay(ActionStreamer(SPEC, "ensemble", ensemble_decay=decay, hold="last"), sequence, rate_hz)
    latest = run_replay(ActionStreamer(SPEC, "latest", hold="last"), sequence, rate_hz)
    warm = sequence[0][0] + int(STEPS * DT * NS)
    assert np.all(max_jump(samples, skip_until_ns=warm) <= bound + 1e-6), (max_jump(samples, warm), bound)
    assert np.any(max_jump(latest, skip_until_ns=warm) > bound)  # averaging is what keeps it small
    assert max(s.chunks_used for s in samples) >= n


def test_ensemble_is_the_act_weighted_average():
    streamer = ActionStreamer(SPEC, "ensemble", ensemble_decay=0.5, hold="last")
    a = make_chunk(1.0, np.zeros((STEPS, 2)))
    b = make_chunk(1.1, np.ones((STEPS, 2)))  # one step later: ACT index 1
    streamer.push(a, now_ns=int(1.1 * NS))
    streamer.push(b, now_ns=int(1.1 * NS))
    out = streamer.sample(int(1.2 * NS))
    expected = math.exp(-0.5) / (1 + math.exp(-0.5))
    np.testing.assert_allclose(out, [expected, expected], rtol=1e-6)


def test_interpolates_between_steps_on_the_source_clock():
    values = np.stack([np.arange(STEPS), -np.arange(STEPS)], axis=1).astype(np.float64)
    streamer = ActionStreamer(SPEC, "latest", hold="last")
    assert streamer.sample(int(0.5 * NS)) is None  # nothing pushed yet
    streamer.push(make_chunk(2.0, values))
    np.testing.assert_allclose(streamer.sample(int(2.25 * NS)), [2.5, -2.5], rtol=1e-6)
    np.testing.assert_allclose(streamer.sample(int(2.75 * NS)), [7.0, -7.0])  # last step holds its slot
    stepped = ActionStreamer(SPEC, "latest", hold="last", interpolate=False)
    stepped.push(make_chunk(2.0, values))
    np.testing.assert_allclose(stepped.sample(int(2.25 * NS)), [2.0, -2.0])


@pytest.mark.parametrize("mode", ["latest", "ensemble", "blend"])
@pytest.mark.parametrize("hold", ["last", "zero"])
def test_holds_when_the_chunk_runs_out_and_reports_it(mode, hold):
    streamer = ActionStreamer(SPEC, mode, hold=hold, blend_time_s=0.1)
    values = np.full((STEPS, 2), 0.7)
    streamer.push(make_chunk(1.0, values), now_ns=int(1.05 * NS))
    before = streamer.sample_detail(int(1.5 * NS))
    assert not before.holding and not streamer.holding
    held = [streamer.sample_detail(int((1.8 + 0.02 * i) * NS)) for i in range(10)]
    assert all(s.holding for s in held) and streamer.holding
    expected = [0.7, 0.7] if hold == "last" else [0.0, 0.0]
    for s in held:
        np.testing.assert_allclose(s.values, expected, rtol=1e-6)
    assert streamer.hold_samples == 10 and streamer.holds_started == 1
    # A new chunk ends the hold.
    streamer.push(make_chunk(2.5, values * 2), now_ns=int(2.6 * NS))
    resumed = streamer.sample_detail(int(2.62 * NS))
    assert not resumed.holding
    if mode == "blend":
        # The cross-fade starts from what the robot was actually given during the hold.
        assert np.all(np.abs(resumed.values - np.array(expected)) <= 1.4 * 0.02 / 0.1 + 1e-6)


def test_zero_hold_keeps_the_gripper_command():
    spec = ActionSpec(steps=STEPS, dims=2, names=("vx", "gripper"), space="eef_velocity", dt=DT)
    streamer = ActionStreamer(spec, "latest")  # eef_velocity: zero hold by default
    values = np.tile(np.array([[0.4, 1.0]]), (STEPS, 1))
    streamer.push(make_chunk(1.0, values, names=spec.names), now_ns=int(1.05 * NS))
    streamer.sample(int(1.5 * NS))
    held = streamer.sample_detail(int(1.9 * NS))
    assert held.holding
    np.testing.assert_allclose(held.values, [0.0, 1.0])  # motion stops, the gripper stays closed


def test_default_hold_is_zero_for_velocity_and_delta_spaces():
    assert default_hold("joint_velocity") == "zero" and default_hold("eef_delta") == "zero"
    assert default_hold("joint_position") == "last"
    streamer = ActionStreamer(ActionSpec(steps=2, dims=1, names=("v",), space="eef_velocity", dt=0.1))
    assert streamer.hold == "zero"


def test_stale_chunks_are_discarded_and_counted():
    streamer = ActionStreamer(SPEC, "latest", hold="last")
    assert streamer.push(make_chunk(2.0, np.ones((STEPS, 2))))
    assert not streamer.push(make_chunk(1.5, np.zeros((STEPS, 2))))  # older than the one in use
    np.testing.assert_allclose(streamer.sample(int(2.1 * NS)), [1.0, 1.0])
    assert streamer.chunks_stale == 1 and streamer.chunks_pushed == 2


def test_bad_chunks_raise_input_errors():
    streamer = ActionStreamer(SPEC, "blend")
    with pytest.raises(InputError, match="shape"):
        streamer.push(make_chunk(1.0, np.zeros((STEPS, 3))))
    bad = np.zeros((STEPS, 2))
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        streamer.push(make_chunk(1.0, bad))
    with pytest.raises(ValueError, match="mode"):
        ActionStreamer(SPEC, "average")
    streamer.push(make_chunk(1.0, np.zeros((STEPS, 2)), stream="/left_arm"))
    with pytest.raises(InputError) as err:
        streamer.push(make_chunk(1.1, np.zeros((STEPS, 2)), stream="/right_arm"))
    assert err.value.reason == "wrong_stream"


def test_max_step_change_limits_every_sample():
    streamer = ActionStreamer(SPEC, "latest", hold="last", max_step_change=0.05)
    streamer.push(make_chunk(1.0, np.zeros((STEPS, 2))), now_ns=int(1.0 * NS))
    streamer.sample(int(1.0 * NS))
    streamer.push(make_chunk(1.2, np.ones((STEPS, 2))), now_ns=int(1.2 * NS))
    outs = [streamer.sample_detail(int((1.2 + 0.01 * i) * NS)) for i in range(30)]
    jumps = np.abs(np.diff(np.stack([np.zeros(2)] + [o.values for o in outs]), axis=0))
    assert jumps.max() <= 0.05 + 1e-6
    assert outs[0].rate_limited and streamer.rate_limited_samples >= 19
    np.testing.assert_allclose(outs[-1].values, [1.0, 1.0], rtol=1e-6)


def test_deterministic_given_chunks_and_times():
    sequence = replayed_sequence(seed=11)
    runs = [run_replay(ActionStreamer(SPEC, "blend", blend_time_s=0.15), sequence, 60.0) for _ in range(2)]
    assert [s.values.tobytes() for s in runs[0]] == [s.values.tobytes() for s in runs[1]]


def test_blend_layers_stay_bounded_when_chunks_arrive_faster_than_the_fade():
    streamer = ActionStreamer(SPEC, "blend", blend_time_s=5.0, hold="last")
    for k in range(200):
        stamp = 1.0 + 0.01 * k
        streamer.push(make_chunk(stamp, np.full((STEPS, 2), float(k % 7))), now_ns=int(stamp * NS))
        assert streamer.sample_detail(int(stamp * NS)) is not None
    assert len(streamer._layers) <= ActionStreamer.MAX_BLEND_LAYERS  # noqa: SLF001 (bounded memory)
