"""``vla-accel replay``: replay a rosbag2 bag through backends, write an output bag and a report.

Examples::

    vla-accel replay --make-sample /tmp/sample_bag
    vla-accel replay /tmp/sample_bag --model tiny --backends torch,onnxruntime --out /tmp/replay
    vla-accel replay /tmp/sample_bag --golden /tmp/replay/actions --tolerance-profile fp32
    vla-accel replay /tmp/sample_bag --live --out /tmp/live     # player + real node + recorder
    vla-accel replay --make-sample /tmp/bag20 --sample-frames 200 --sample-rate 20
    vla-accel replay /tmp/bag20 --execution --delays 0,1,3 --out /tmp/exec   # naive/ensemble/blend/rtc

Exit status: 0 success; 1 an error (bad bag, no backend could run, ...); 3 a regression or live
comparison failed (drift beyond tolerance, missing or extra chunks).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vla_accel.errors import VlaAccelError

EXIT_DRIFT = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", nargs="?", help="rosbag2 bag: a directory with metadata.yaml, or a .mcap / .db3 file")
    parser.add_argument("--make-sample", metavar="PATH", help="write the synthetic sample bag to PATH and exit")
    parser.add_argument("--sample-frames", type=int, default=24, help="frames in the sample bag (default 24)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="storage of the sample bag")
    parser.add_argument("--sample-primary", choices=("raw", "jpeg"), default="raw",
                        help="primary camera of the sample bag: raw sensor_msgs/Image (default) or a JPEG "
                             "CompressedImage on /camera/image_raw/compressed")
    parser.add_argument("--sample-size", default="640x480", metavar="WxH",
                        help="size of the sample bag's JPEG primary camera (default 640x480)")
    parser.add_argument("--model", default="tiny", help="built-in model name or spec YAML (default tiny)")
    parser.add_argument("--backends", default="torch", help="comma-separated backends, each optionally NAME:PRECISION (e.g. torch,onnxruntime,cuda:fp16); "
                        "default torch; torch is the speedup baseline")
    parser.add_argument("--camera-topic", action="append", default=[], metavar="[CAMERA=]TOPIC",
                        help="camera topic, in the model's camera order or as CAMERA=TOPIC (repeatable); default: found by type")
    parser.add_argument("--instruction-topic", help="std_msgs/String instruction topic (default: found by type)")
    parser.add_argument("--state-topic", help="sensor_msgs/JointState topic for the model's state (default: found by type)")
    parser.add_argument("--rate-mode", default="every", help="every | rate:HZ | live (default every)")
    parser.add_argument("--live-speed", type=float, default=1.0, help="live mode: playback speed factor (default 1.0)")
    parser.add_argument("--precision", default="fp32", help="backend precision (default fp32)")
    parser.add_argument("--threads", type=int, default=0, help="backend intra-op threads (0 = runtime default)")
    parser.add_argument("--batch-size", type=int, default=1, help="observations per inference (default 1)")
    parser.add_argument("--jpeg-reduced-decode", choices=("on", "off", "both"), default=None,
                        help="decode JPEG frames at a reduced DCT scale (1/2, 1/4, 1/8) that still covers the model "
                             "input, instead of at full size: faster, pixels differ slightly (docs/bags.md); "
                             "both: replay every backend once per setting, side by side; default: the "
                             "node's default (off)")
    parser.add_argument("--bare-iterations", type=int, default=30, help="iterations of the bare backend benchmark")
    parser.add_argument("--read-ahead", type=int, default=4, metavar="N",
                        help="assemble observations and decode their JPEG frames N frames ahead on a reader thread "
                             "while the backend runs (offline rate modes; 0: in turn on one thread; default: 4)")
    parser.add_argument("--timing-rounds", type=int, default=3,
                        help="replay passes timed against interleaved bare calls; the median is reported (default: 3)")
    parser.add_argument("--out", help="output folder (default: ./replay_reports/<bag>_<time>)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--tolerance-profile", choices=("fp32", "fp16", "int8"), help="regression tolerance (default fp32)")
    group.add_argument("--atol", type=float, help="regression tolerance as an absolute value")
    parser.add_argument("--golden", help="golden output bag: compare this replay's chunks with it (exit 3 on drift)")
    parser.add_argument("--golden-topic", help="ActionChunk topic of the golden bag to compare with (default: the one "
                        "from the same backend, else the first)")
    parser.add_argument("--live", action="store_true",
                        help="also drive the real ROS node with the bag (player + node + recorder) and compare with the offline replay")
    parser.add_argument("--live-node-speed", type=float, default=0.5,
                        help="--live: bag playback speed for the node (default 0.5, so a CPU node keeps up)")
    parser.add_argument("--live-min-gap-ms", type=float, default=20.0,
                        help="--live: least time between two published messages, so the node handles them in "
                        "recorded order (default 20)")
    parser.add_argument("--live-backend", default=None, help="backend for the live node (default: the first of --backends)")
    parser.add_argument("--sample-rate", type=float, default=10.0, help="camera rate of the sample bag in Hz (default 10)")
    execution = parser.add_argument_group("chunk execution (--execution)")
    execution.add_argument("--execution", action="store_true",
                           help="execute the chunks at the control rate on a simulated clock, per execution mode and "
                                "simulated inference delay: jump and jerk in execution.json/.md/.png")
    execution.add_argument("--execution-modes", default="naive,ensemble,blend,rtc", help="modes to compare")
    execution.add_argument("--delays", default="0,1,3", help="simulated inference delays in control periods")
    execution.add_argument("--threshold", type=float, default=0.5,
                           help="start the next inference when this share of the chunk is left (default 0.5)")
    execution.add_argument("--control-period", type=float, default=0.0, help="control period in s (0 = the spec's dt)")
    execution.add_argument("--rtc-schedule", default="exp", help="RTC weight schedule: exp | linear | ones | zeros")
    execution.add_argument("--blend-time", type=float, default=0.2, help="blend mode cross-fade time in s")


def _make_sample(args) -> int:
    from vla_accel.bags.sample import make_sample_bag

    try:
        width, height = (int(v) for v in args.sample_size.lower().split("x"))
    except ValueError:
        raise VlaAccelError(f"--sample-size must be WIDTHxHEIGHT, e.g. 640x480; got {args.sample_size!r}",
                            reason="bad_argument") from None
    manifest = make_sample_bag(args.make_sample, frames=args.sample_frames, storage=args.storage,
                               rate_hz=args.sample_rate, primary=args.sample_primary, primary_size=(width, height))
    print(f"sample bag written: {manifest.path} ({args.storage})")
    for topic, count in sorted(manifest.counts.items()):
        print(f"  {topic}: {count} messages")
    broken = {**manifest.broken_frames, **manifest.broken_messages}
    if broken:
        print("  broken on purpose: " + ", ".join(f"{k} {v}" for k, v in sorted(broken.items())))
    return 0


def _run_execution(args) -> int:
    from vla_accel.bags.execution import ExecutionReplayOptions, run_execution_replay

    try:
        delays = tuple(float(d) for d in args.delays.split(",") if d.strip())
    except ValueError:
        raise VlaAccelError(f"--delays must be numbers of control periods, got {args.delays!r}",
                            reason="bad_argument") from None
    modes = tuple(m.strip() for m in args.execution_modes.split(",") if m.strip())
    options = ExecutionReplayOptions(
        model=args.model, backend=args.backends.split(",")[0].strip(), modes=modes, delay_periods=delays,
        threshold=args.threshold, control_period_s=args.control_period, blend_time_s=args.blend_time,
        rtc_schedule=args.rtc_schedule, threads=args.threads, camera_topics=tuple(args.camera_topic),
        instruction_topic=args.instruction_topic, state_topic=args.state_topic)
    out_dir = _out_dir(args)
    run_execution_replay(args.bag, options, out_dir)
    print((out_dir / "execution.md").read_text(encoding="utf-8"))
    print(f"report: {out_dir / 'execution.json'} (also execution.md, execution.png)")
    return 0


def _out_dir(args) -> Path:
    if args.out:
        return Path(args.out)
    stem = Path(args.bag).name or "bag"
    return Path("replay_reports") / f"{stem}_{time.strftime('%Y%m%d_%H%M%S', time.gmtime())}"


def _require_rosbags() -> None:
    from vla_accel.core.optional import module_available

    if not module_available("rosbags"):
        raise VlaAccelError(
            "bag replay needs the rosbags package: pip install -r requirements/bags.txt (or pip install rosbags)",
            reason="missing_dependency",
        )


def run(args) -> int:
    _require_rosbags()
    if args.make_sample:
        return _make_sample(args)
    if not args.bag:
        raise VlaAccelError("give a BAG to replay (or --make-sample PATH to write the sample bag)", reason="bad_argument")
    if args.batch_size < 1:
        raise VlaAccelError(f"--batch-size must be >= 1, got {args.batch_size}", reason="bad_argument")
    if args.read_ahead < 0:
        raise VlaAccelError(f"--read-ahead must be >= 0, got {args.read_ahead}", reason="bad_argument")
    if args.execution:
        return _run_execution(args)

    from vla_accel.bags import compare
    from vla_accel.bags.observations import RateMode
    from vla_accel.bags.replay import ReplayOptions, deviations, replay_runtime, run_replay
    from vla_accel.bags.report import write_report

    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    if not backends:
        raise VlaAccelError("--backends needs at least one backend name", reason="bad_argument")
    try:
        tolerance = compare.tolerance_for(args.tolerance_profile, args.atol)
    except ValueError as exc:
        raise VlaAccelError(str(exc), reason="bad_argument") from exc
    options = ReplayOptions(
        runtime=replay_runtime(model=args.model, precision=args.precision, threads=args.threads,
                               batch_size=args.batch_size),
        backends=backends,
        rate=RateMode.parse(args.rate_mode),
        camera_topics=tuple(args.camera_topic),
        instruction_topic=args.instruction_topic,
        state_topic=args.state_topic,
        bare_iterations=args.bare_iterations,
        timing_rounds=args.timing_rounds,
        read_ahead=args.read_ahead,
        live_speed=args.live_speed,
        progress=not args.no_progress,
        jpeg_reduced_decode={None: (None,), "on": (True,), "off": (False,), "both": (False, True)}[
            args.jpeg_reduced_decode],
    )
    out_dir = _out_dir(args)
    result = run_replay(args.bag, options, out_dir)
    devs = deviations(result)

    regressions = []
    golden_chunks: list = []
    if args.golden:
        from vla_accel.bags.writer import read_action_chunks

        golden = read_action_chunks(args.golden)
        if not any(golden.values()):
            raise VlaAccelError(f"golden bag {args.golden} holds no vla_accel/msg/ActionChunk messages", reason="bad_golden")
        for run_ in result.runs:
            if not run_.ok:
                continue
            topic = args.golden_topic or compare.pick_golden_topic(golden, run_.label)
            if topic not in golden:
                raise VlaAccelError(
                    f"golden bag {args.golden} has no ActionChunk topic {topic!r}; topics: {sorted(golden)}",
                    reason="bad_golden",
                )
            dev = compare.compare_chunks(run_.chunks, golden[topic], result.action_names)
            golden_chunks = golden_chunks or list(golden[topic])
            regressions.append(compare.RegressionResult(run_.label, topic, tolerance, dev))

    live_outcome = None
    if args.live:
        from vla_accel.bags.live import run_live_comparison

        live_outcome = run_live_comparison(args.bag, result, options, out_dir, backend=args.live_backend,
                                            tolerance=tolerance, speed=args.live_node_speed,
                                            min_gap_s=args.live_min_gap_ms / 1000.0)
        print(f"live node: published {sum(live_outcome.published.values())} bag messages, recorded "
              f"{live_outcome.recorded} into {live_outcome.recorded_bag} (node log {live_outcome.node_log})")
        regressions.append(live_outcome.regression)

    for topic in result.selection.unused_images:
        print(f"note: image topic {topic} of the bag feeds no camera of {result.model} (used: "
              + ", ".join(f"{cam} <- {t}" for cam, t in result.selection.cameras.items())
              + "); choose with --camera-topic CAMERA=TOPIC", file=sys.stderr)
    paths = write_report(result, out_dir, devs, regressions, plots=not args.no_plots, golden=golden_chunks)
    print((out_dir / "report.md").read_text(encoding="utf-8"))
    print(f"report: {paths['markdown']} (also {paths['html'].name}, {paths['json'].name}); output bag: {result.output_bag}")

    failed_backends = [r for r in result.runs if not r.ok]
    for run_ in failed_backends:
        print(f"backend {run_.requested} did not run: {run_.error}", file=sys.stderr)
    empty = [r for r in result.runs if r.ok and not r.chunks]
    for run_ in empty:
        print(f"backend {run_.label} produced no action chunk: {no_chunk_reason(result, run_)}", file=sys.stderr)
    drift = [r for r in regressions if not r.passed]
    for reg in drift:
        print(reg.describe(), file=sys.stderr)
    if drift:
        return EXIT_DRIFT
    if failed_backends or empty:
        return 1
    return 0


def no_chunk_reason(result, run_) -> str:
    """Why a replay pass produced nothing, from what was skipped and dropped (the top reasons first)."""
    parts = []
    skipped = {**result.skipped, **{f"dropped: {k}": v for k, v in run_.dropped.items()}}
    if skipped:
        parts.append(", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items(), key=lambda kv: -kv[1])))
    if not result.primary_frames:
        parts.append("no frame of the primary camera topic was read")
    reasons = " ".join(skipped)
    if "state" in reasons:
        parts.append(f"the model {result.model} needs a robot state: give --state-topic with sensor_msgs/JointState "
                     "or choose a model without one (tiny-vision)")
    elif "instruction" in reasons:
        parts.append("no instruction: give --instruction-topic or an instruction")
    return "; ".join(parts) or f"{run_.observations} observations reached the engine and none completed"
