"""Replaying a bag through asynchronous chunk execution: naive / ensemble / blend / RTC side by side.

``vla-accel replay BAG --execution`` runs the model on the bag's frames and executes the chunks at the
control rate on a simulated clock, once per execution mode and simulated inference delay:

* the control loop ticks every ``control_period_s`` (default: the spec's dt) from the first frame on;
* at a tick where ``ChunkExecutor.should_start_inference`` says so, the newest frame whose stamp is not
  after the tick is inferred (a real inference through the shared Engine, or the program runner
  with the RTC plan for flow-matching programs); its chunk becomes ready ``delay`` later
  (``delay_periods`` x the control period: the simulated inference delay), exactly as on a robot
  whose accelerator needs that long;
* every tick samples the executor: the action executed at that instant. A frame is inferred at most
  once (a robot's node infers new frames); the run ends at the last frame.

The delay is simulated, not measured, so the comparison is about execution, not speed: the same
chunks (single-pass programs are deterministic per frame, so each frame is inferred once and reused by
every mode) meet the same timeline in every mode. Jump, jerk and step change come from
core.boundary through the executor's meter, the same code as /vla/stats. ``lag`` is how far the
executed action is from the newest chunk as the model predicted it (what smoothing costs).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from vla_accel.core.execution import EXECUTION_MODES, ChunkExecutor, ExecutionConfig, chunk_value_at
from vla_accel.core.rtc import RtcPlan
from vla_accel.core.types import ActionChunk, Observation
from vla_accel.errors import VlaAccelError

log = logging.getLogger(__name__)

InferFn = Callable[[Observation, "RtcPlan | None"], ActionChunk]


@dataclass
class ExecutionReplayOptions:
    model: str = "tiny"
    backend: str = "torch"
    modes: tuple[str, ...] = EXECUTION_MODES
    delay_periods: tuple[float, ...] = (0.0, 1.0, 3.0)
    threshold: float = 0.5
    control_period_s: float = 0.0  # 0 = the spec's dt
    blend_time_s: float = 0.2
    ensemble_decay: float = 0.01
    rtc_schedule: str = "exp"
    rtc_blend_steps: int = 0
    rtc_max_guidance: float = 5.0
    threads: int = 0
    camera_topics: tuple[str, ...] = ()
    instruction_topic: str | None = None
    state_topic: str | None = None


@dataclass
class ExecutionRun:
    mode: str
    delay_periods: float
    delay_ms: float
    figures: dict[str, float] = field(default_factory=dict)
    times_s: list[float] = field(default_factory=list)
    executed: list[list[float]] = field(default_factory=list)


def simulate(stamps: list[int], infer: InferFn, frame_at: Callable[[int], Observation], action_spec,
             config: ExecutionConfig, delay_s: float, guided: bool = False, end_ns: int | None = None) -> ExecutionRun:
    """One execution of the frames stamped ``stamps`` (ascending) on a simulated clock (see the
    module docstring). ``frame_at(i)`` returns the i-th observation."""
    executor = ChunkExecutor(action_spec, config, guided=guided)
    period_ns = int(round(config.control_period_s * 1e9))
    delay_ns = int(round(delay_s * 1e9))
    t = stamps[0]
    end = stamps[-1] if end_ns is None else end_ns
    newest = -1
    used = -1  # a frame is inferred once: the next inference waits for a newer frame, as on the robot
    pending: tuple[int, ActionChunk] | None = None
    raw_newest: ActionChunk | None = None  # the newest chunk as the model predicted it
    run = ExecutionRun(config.mode, round(delay_s / config.control_period_s, 6), delay_s * 1e3)
    lag = []
    while t <= end:
        while newest + 1 < len(stamps) and stamps[newest + 1] <= t:
            newest += 1
        if pending is not None and pending[0] <= t:
            executor.push(pending[1], pending[0])
            raw_newest = pending[1]
            pending = None
        if newest > used and executor.should_start_inference(t):
            used = newest
            obs = frame_at(newest)
            executor.inference_started(t)
            plan = executor.rtc_plan(obs.stamp_ns) if guided else None
            chunk = infer(obs, plan)
            ready = t + delay_ns
            if ready <= t:
                executor.push(chunk, t)
                raw_newest = chunk
            else:
                pending = (ready, chunk)
        sample = executor.sample(t)
        if sample is not None:
            run.times_s.append((t - stamps[0]) / 1e9)
            run.executed.append([float(v) for v in sample.values])
            if raw_newest is not None and not sample.holding:
                model = chunk_value_at(raw_newest.values, raw_newest.stamp_ns, raw_newest.dt, t)
                lag.append(float(np.abs(sample.values - model).max()))
        t += period_ns
    figures: dict[str, Any] = dict(executor.meter.summary())
    figures["chunk_jump_max_per_dim"] = [float(v) for v in executor.meter.jump_max_per_dim()]
    figures.update(executor.counters())
    figures["lag_mean"] = float(np.mean(lag)) if lag else 0.0
    figures["samples"] = float(len(run.executed))
    run.figures = figures
    return run


def _observations(bag: Path, bundle, options: ExecutionReplayOptions, metrics) -> Iterator[Observation]:
    from vla_accel.bags.observations import ObservationBuilder, RateMode
    from vla_accel.bags.reader import BagSource

    with BagSource(bag) as source:
        selection = source.select_topics(bundle.spec, options.camera_topics, options.instruction_topic,
                                         options.state_topic)
        builder = ObservationBuilder(bundle.spec, selection, RateMode("every"), metrics)
        for timed in builder.observations(source.events(selection)):
            yield timed.observation


def _frame_inference(bag: Path, bundle, backend, engine, options: ExecutionReplayOptions):
    """(infer(obs, plan) -> chunk, frame stamps, guided). Frames are preprocessed once and kept as
    input tensors. Single-pass programs: one inference per frame, reused by every mode. Flow-matching
    programs run by the ProgramRunner: the noise of a frame is fixed (seeded by the frame's index), so
    every mode sees the same sample for it, and an RTC plan becomes the runner's guide for that call."""
    from vla_accel.core.program import call_noise

    spec = bundle.spec
    program = getattr(spec, "program", None)
    runner = getattr(backend, "_runner", None)
    guided = bool(program is not None and program.kind == "flow_matching" and runner is not None
                  and hasattr(runner, "guide"))
    frames: dict[int, tuple[int, dict[str, np.ndarray], Observation]] = {}
    for obs in _observations(bag, bundle, options, engine.metrics):
        batch = engine.prepare([obs])
        try:
            if batch.size:
                inputs = {k: np.array(v, copy=True) for k, v in batch.inputs.items()}
                frames[obs.stamp_ns] = (len(frames), inputs, Observation(images={}, instruction="", stamp_ns=obs.stamp_ns,
                                                                          frame_id=obs.frame_id))
        finally:
            batch.release()
    cache: dict[int, ActionChunk] = {}
    post = engine.postprocessor

    def run(stamp: int, plan: RtcPlan | None) -> ActionChunk:
        index, inputs, obs = frames[stamp]
        feeds = dict(inputs)
        if program is not None and program.kind != "single_pass":
            feeds[program.noise] = call_noise(program.seed, index, (1, spec.action.steps, spec.action.dims))
        if guided:
            runner.guide = None if plan is None else plan.guide(
                program.flow.t_start, program.flow.t_end, options.rtc_max_guidance, scale=post.scale, offset=post.offset)
        try:
            outputs = backend.infer(feeds)
        finally:
            if guided:
                runner.guide = None
        values = post.unnormalize(outputs[spec.action.output], 1)
        return post.to_chunks(values, [obs], spec.name, info_name)[0]

    info_name = backend.device_info().backend

    def infer(obs: Observation, plan: RtcPlan | None) -> ActionChunk:
        if plan is not None:
            return run(obs.stamp_ns, plan)
        if obs.stamp_ns not in cache:
            cache[obs.stamp_ns] = run(obs.stamp_ns, None)
        return cache[obs.stamp_ns]

    return infer, sorted(frames), guided


def run_execution_replay(bag: str | Path, options: ExecutionReplayOptions, out_dir: str | Path) -> dict[str, Any]:
    """Every mode x delay on ``bag``; writes execution.json, execution.md and execution.png into
    ``out_dir`` and returns the JSON document."""
    from vla_accel.backends.base import BackendOptions
    from vla_accel.backends.registry import create_backend
    from vla_accel.core.engine import Engine
    from vla_accel.models import load_model

    bag, out = Path(bag), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bundle = load_model(options.model)
    spec = bundle.spec
    period = options.control_period_s or spec.action.dt
    backend = create_backend(options.backend, bundle, BackendOptions(threads=options.threads))
    backend.load()
    try:
        info = backend.device_info()
        engine = Engine(bundle, backend)
        infer, stamps, guided = _frame_inference(bag, bundle, backend, engine, options)
        if len(stamps) < 2:
            raise VlaAccelError(f"{bag}: fewer than 2 usable frames for the model {spec.name}", reason="bad_bag")
        observations = {s: Observation(images={}, instruction="", stamp_ns=s) for s in stamps}
        runs = []
        for delay in options.delay_periods:
            for mode in options.modes:
                config = ExecutionConfig(mode=mode, threshold=options.threshold, control_period_s=period,
                                         initial_delay_s=delay * period, blend_time_s=options.blend_time_s,
                                         ensemble_decay=options.ensemble_decay, rtc_schedule=options.rtc_schedule,
                                         rtc_blend_steps=options.rtc_blend_steps,
                                         rtc_max_guidance=options.rtc_max_guidance)
                runs.append(simulate(stamps, infer, lambda i: observations[stamps[i]], spec.action, config,
                                     delay * period, guided=guided and mode == "rtc", end_ns=stamps[-1]))
    finally:
        backend.close()
    program = getattr(getattr(spec, "program", None), "kind", "single_pass")
    doc = {
        "what": "chunk execution on a simulated clock: jump at chunk switches and jerk of the executed actions "
                "per execution mode and simulated inference delay (vla_accel.bags.execution)",
        "bag": bag.name,
        "model": spec.name,
        "program": program,
        "rtc_kind": "guided denoising (RTC inside the flow-matching loop)" if guided
                    else "prefix freezing plus blending (single-pass program)",
        "backend": info.backend,
        "device": info.device,
        "frames": len(stamps),
        "action_space": spec.action.space,
        "action_names": list(spec.action.names),
        "chunk_steps": spec.action.steps,
        "dt_s": spec.action.dt,
        "control_period_s": period,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
        "units": "jump and step in action units; jerk in action units / s^3; lag: mean max-dim |executed - newest "
                 "prediction|",
        "runs": [{"mode": r.mode, "delay_periods": r.delay_periods, "delay_ms": r.delay_ms, **r.figures} for r in runs],
    }
    doc["ratios"] = jump_ratios(doc["runs"])
    (out / "execution.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (out / "execution.md").write_text(markdown_table(doc), encoding="utf-8")
    try:
        plot(runs, out / "execution.png", spec.action.names)
    except ImportError as exc:  # matplotlib absent: the table and JSON still stand
        log.warning("no execution plot: %s", exc)
    return doc


def jump_ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per delay: each mode's chunk_jump_max / the naive switch's (``<mode>_vs_naive_at_<delay>x``)."""
    out = {}
    naive = {r["delay_periods"]: r["chunk_jump_max"] for r in rows if r["mode"] == "naive"}
    for r in rows:
        base = naive.get(r["delay_periods"])
        if r["mode"] != "naive" and base:
            out[f"{r['mode']}_vs_naive_at_{r['delay_periods']:g}x"] = r["chunk_jump_max"] / base
    return out


def markdown_table(doc: dict[str, Any]) -> str:
    lines = [f"# Chunk execution: {doc['model']} ({doc['program']}), {doc['frames']} frames of {doc['bag']}",
             "", f"Control period {doc['control_period_s'] * 1e3:g} ms, chunk {doc['chunk_steps']} steps x "
             f"{doc['dt_s'] * 1e3:g} ms, RTC: {doc['rtc_kind']}. {doc['units']}.", "",
             "| delay | mode | switches | jump max | jump p50 | jerk p95 | jerk max | step max | lag mean | "
             "late chunks | stale steps skipped | hold samples |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        lines.append(
            f"| {r['delay_periods']:g}x ({r['delay_ms']:.0f} ms) | {r['mode']} | {r['chunk_switches']:.0f} | "
            f"{r['chunk_jump_max']:.4g} | {r['chunk_jump_p50']:.4g} | {r['action_jerk_p95']:.4g} | "
            f"{r['action_jerk_max']:.4g} | {r['action_step_max']:.4g} | {r['lag_mean']:.4g} | "
            f"{r['execution_chunks_late']:.0f} | {r['execution_stale_steps_skipped']:.0f} | "
            f"{r['execution_hold_samples']:.0f} |")
    lines += ["", "Jump max relative to the naive switch: "
              + ", ".join(f"{k} {v:.2f}" for k, v in doc["ratios"].items()), ""]
    return "\n".join(lines)


def plot(runs: list[ExecutionRun], path: Path, names) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    delays = sorted({r.delay_periods for r in runs})
    modes = list(dict.fromkeys(r.mode for r in runs))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    worst = max(delays)
    # Show the dimension where the naive switch jumps most (where the modes differ most).
    naive = [r for r in runs if r.mode == "naive" and r.delay_periods == worst]
    dim = int(np.argmax(naive[0].figures["chunk_jump_max_per_dim"])) if naive else 0
    for r in runs:
        if r.delay_periods == worst and r.executed:
            values = np.asarray(r.executed)
            axes[0].plot(r.times_s, values[:, dim], label=r.mode, linewidth=1.2)
    axes[0].set_title(f"executed '{names[dim]}' at {worst:g}x the control period of delay")
    axes[0].set_xlabel("time (s)")
    axes[0].legend()
    width = 0.8 / max(len(modes), 1)
    for k, mode in enumerate(modes):
        heights = [next((r.figures["chunk_jump_max"] for r in runs if r.mode == mode and r.delay_periods == d), 0.0)
                   for d in delays]
        axes[1].bar(np.arange(len(delays)) + k * width, heights, width, label=mode)
    axes[1].set_xticks(np.arange(len(delays)) + width * (len(modes) - 1) / 2, [f"{d:g}x" for d in delays])
    axes[1].set_title("max jump at a chunk switch (action units)")
    axes[1].set_xlabel("simulated inference delay (control periods)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
