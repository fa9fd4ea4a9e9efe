"""``vla-accel bench pipeline``: serial vs pipelined InferenceLoop throughput, side by side.

Input: camera frames that cost real preprocessing (default: 1920x1080 JPEG, decoded and resized
every frame), one stream, saturating (a fresh frame is always waiting, so the loop never idles on
input). The serial loop runs preprocess -> infer -> postprocess back to back; the pipelined loop
runs them on three threads with one batch prepared ahead, so its throughput can approach
1 / max(stage) instead of 1 / sum(stages). Serial and pipelined runs alternate for ``--pipeline-rounds``
rounds of ``--seconds`` each, so load from other processes falls on both alike; the ratio of the
summed throughputs is the result (goal: >= 1.5x when preprocessing is a sizeable share).

Threads vs processes: the same decode + resize + normalise work is run for a fixed number of frames
by 1 thread, by 2 threads (each with its own Preprocessor) and by a pool of 2 processes (frames sent
as JPEG bytes, tensors returned by pickling). If 2 threads scale like 2 processes, the stages release
the GIL and threads (which share buffers without copies) are the right choice.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import threading
import time
from typing import Any

from vla_accel.benchmarks.common import (
    decode_report,
    jpeg_setting,
    INPUT_KINDS,
    ChunkLog,
    Feeder,
    FrameSource,
    backend_name,
    build_engine,
    format_rows,
    log,
    machine_info,
    run_loop,
    stage_table,
    threads_option,
    write_json,
)
from vla_accel.core import metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pipeline mode")
    group.add_argument("--pipeline-input", choices=sorted(INPUT_KINDS), default="jpeg1080",
                       help="camera frames fed to the loop (default: jpeg1080, decoded + resized per frame)")
    group.add_argument("--pipeline-rounds", type=int, default=2,
                       help="serial/pipelined alternations, --seconds each (default: 2)")
    group.add_argument("--pipeline-depth", type=int, default=1,
                       help="batches prepared ahead of the one inferring (default: 1)")
    group.add_argument("--pipeline-process-frames", type=int, default=40,
                       help="frames per worker in the threads-vs-processes check; 0 skips it (default: 40)")
    group.add_argument("--pipeline-node-rate", type=float, default=0.0,
                       help="also compare where the node decodes compressed frames: a camera at this rate "
                            "(Hz, above what the loop sustains) through the runtime's ObservationAssembler, "
                            "decoded on the receiving thread (before) vs in the prepare stage (now), pipelined "
                            "loop, alternating rounds (0 = skip; default: 0)")


def _loop_run(engine, source, pipelined: bool, seconds: float, depth: int) -> dict[str, Any]:
    from vla_accel.core.scheduling import InferenceLoop

    chunks = ChunkLog()
    loop = InferenceLoop(engine, pipeline=pipelined, queue_depth=depth, on_chunks=chunks.on_chunks,
                         on_error=chunks.on_error, name="pipelined" if pipelined else "serial")
    result = run_loop(loop, Feeder(loop, source), seconds)
    result["errors"] = [str(e) for e in chunks.errors]
    result["stages"] = stage_table(result["snapshot"])
    return result


def run(args: argparse.Namespace) -> int:
    backend = backend_name(args)
    threads = threads_option(args)
    seconds = float(args.seconds)
    rounds = max(1, int(args.pipeline_rounds))
    log(f"[pipeline] model {args.model} on {backend} ({threads} intra-op thread(s)), input "
        f"{args.pipeline_input}, {rounds} x {seconds:g}s per variant")
    engine = build_engine(args.model, backend, memory="pool", threads=threads,
                          pool_size=max(2, args.pipeline_depth + 1), jpeg_reduced_decode=jpeg_setting(args))
    source = FrameSource(engine.spec, args.pipeline_input)
    totals = {False: {"processed": 0, "seconds": 0.0, "runs": []}, True: {"processed": 0, "seconds": 0.0, "runs": []}}
    try:
        for r in range(rounds):
            for pipelined in (False, True):
                result = _loop_run(engine, source, pipelined, seconds, args.pipeline_depth)
                totals[pipelined]["processed"] += result["processed"]
                totals[pipelined]["seconds"] += result["seconds"]
                totals[pipelined]["runs"].append(result)
                rate = metrics.throughput(result["processed"], result["seconds"])
                log(f"[pipeline] round {r + 1} {'pipelined' if pipelined else 'serial   '}: {rate:6.1f} frames/s "
                    f"({result['processed']} in {result['seconds']:.1f}s, superseded {result['superseded']})")
    finally:
        engine.close()
    variants = {}
    for pipelined, label in ((False, "serial"), (True, "pipelined")):
        t = totals[pipelined]
        last = t["runs"][-1]
        snap = last["snapshot"]
        variants[label] = {
            "throughput_fps": metrics.throughput(t["processed"], t["seconds"]),
            "frames": t["processed"],
            "seconds": t["seconds"],
            "stages_last_round_ms": last["stages"],
            "total_latency_p50_ms": snap.stage("total")["p50"],
            "total_latency_p99_ms": snap.stage("total")["p99"],
            "errors": sum(len(run_["errors"]) for run_ in t["runs"]),
            "stopped_cleanly": all(run_["stopped_cleanly"] for run_ in t["runs"]),
        }
    stages = variants["serial"]["stages_last_round_ms"]
    stage_p50 = {k: stages.get(k, {}).get("p50", 0.0) for k in ("preprocess", "infer", "postprocess")}
    sum_ms, max_ms = sum(stage_p50.values()), max(stage_p50.values())
    ratio = metrics.speedup(1.0 / max(variants["serial"]["throughput_fps"], 1e-9),
                            1.0 / max(variants["pipelined"]["throughput_fps"], 1e-9))
    report: dict[str, Any] = {
        "benchmark": "pipeline",
        "model": args.model,
        "backend": backend,
        "threads": threads,
        "input": args.pipeline_input,
        "bytes_per_frame": source.bytes_per_frame,
        "machine": machine_info(),
        "variants": variants,
        "pipelined_over_serial": ratio,
        "goal": ">= 1.5x",
        "stage_p50_ms": stage_p50,
        "ideal_serial_fps": 1000.0 / sum_ms if sum_ms else 0.0,
        "ideal_pipelined_fps": 1000.0 / max_ms if max_ms else 0.0,
        "decode": decode_report(engine),
    }
    if args.pipeline_node_rate > 0:
        report["node_path"] = node_path(args.model, backend, threads, args.pipeline_input, seconds, rounds,
                                        args.pipeline_node_rate, args.pipeline_depth)
    if args.pipeline_process_frames > 0:
        report["threads_vs_processes"] = threads_vs_processes(args.model, args.pipeline_input,
                                                              args.pipeline_process_frames)
    print(format_report(report))
    write_json(args, report)
    return 0


def format_report(report: dict[str, Any]) -> str:
    rows = []
    for label, v in report["variants"].items():
        st = v["stages_last_round_ms"]
        rows.append((label, f"{v['throughput_fps']:.1f}", v["frames"], f"{v['seconds']:.1f}",
                     f"{st.get('preprocess', {}).get('p50', 0):.2f}", f"{st.get('infer', {}).get('p50', 0):.2f}",
                     f"{st.get('postprocess', {}).get('p50', 0):.2f}", f"{v['total_latency_p50_ms']:.1f}",
                     f"{v['total_latency_p99_ms']:.1f}"))
    lines = [
        f"pipeline: model {report['model']} on {report['backend']} ({report['threads']} thread(s)), input "
        f"{report['input']} ({report['bytes_per_frame'] / 1e3:.0f} kB/frame), "
        f"{report['machine']['cpu']} ({report['machine']['logical_cpus']} logical CPUs, load "
        f"{report['machine']['load_avg_1min_at_start']})",
        format_rows(("loop", "frames/s", "frames", "s", "pre p50", "infer p50", "post p50", "total p50",
                     "total p99"), rows),
        f"pipelined / serial throughput: {report['pipelined_over_serial']:.2f}x (goal {report['goal']}); "
        f"ideal from serial stage p50s: 1/sum = {report['ideal_serial_fps']:.1f} fps, "
        f"1/max = {report['ideal_pipelined_fps']:.1f} fps",
    ]
    tvp = report.get("threads_vs_processes")
    if tvp:
        lines.append(
            "threads vs processes (decode+resize+normalise, frames/s): "
            + ", ".join(f"{k} {v:.1f}" for k, v in tvp["fps"].items())
            + f"; 2 threads scale {tvp['thread_scaling']:.2f}x, 2 processes {tvp['process_scaling']:.2f}x "
            f"-> {tvp['choice']}"
        )
    return "\n".join(lines)


# --- threads vs processes ----------------------------------------------------------------------
_worker_state: dict[str, Any] = {}


def _process_init(model: str, kind: str) -> None:
    from vla_accel.core.preprocess import Preprocessor
    from vla_accel.models import load_model

    spec = load_model(model).spec
    _worker_state["pre"] = Preprocessor(spec, 1, memory="dynamic")
    _worker_state["source"] = FrameSource(spec, kind, variants=1)


def _process_prepare(_index: int) -> dict:
    batch = _worker_state["pre"].prepare([_worker_state["source"].observation()])
    return batch.inputs  # pickled back to the parent: the cost a process per stage would pay


def threads_vs_processes(model: str, kind: str, frames: int) -> dict[str, Any]:
    from vla_accel.core.preprocess import Preprocessor
    from vla_accel.models import load_model

    spec = load_model(model).spec
    source = FrameSource(spec, kind, variants=2)
    observations = [source.observation() for _ in range(2)]

    def work(count: int, index: int) -> None:
        pre = Preprocessor(spec, 1, memory="static")
        for _ in range(count):
            pre.prepare([observations[index % 2]])

    def timed_threads(n: int) -> float:
        work(2, 0)  # warm the resize plans
        workers = [threading.Thread(target=work, args=(frames, i)) for i in range(n)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return metrics.throughput(n * frames, time.perf_counter() - t0)

    fps = {"1 thread": timed_threads(1), "2 threads": timed_threads(2)}
    ctx = __import__("multiprocessing").get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx, initializer=_process_init,
                                                initargs=(model, kind)) as pool:
        list(pool.map(_process_prepare, range(4)))  # start and warm both workers
        t0 = time.perf_counter()
        list(pool.map(_process_prepare, range(2 * frames)))
        fps["2 processes"] = metrics.throughput(2 * frames, time.perf_counter() - t0)
    thread_scaling = fps["2 threads"] / fps["1 thread"] if fps["1 thread"] else 0.0
    process_scaling = fps["2 processes"] / fps["1 thread"] if fps["1 thread"] else 0.0
    choice = ("threads (they scale as well as processes without copying tensors between processes)"
              if thread_scaling >= 0.9 * process_scaling else
              "processes would scale better here than threads")
    return {"frames_per_worker": frames, "fps": fps, "thread_scaling": thread_scaling,
            "process_scaling": process_scaling, "choice": choice}


def _node_path_round(engine, source, decode_at_input: bool, seconds: float, rate_hz: float, depth: int) -> dict:
    """Frames at ``rate_hz`` from one thread (the node's executor) through the ObservationAssembler
    into a pipelined loop. ``decode_at_input``: the frame is decoded on that thread first (where the
    node decoded compressed frames before), else the assembler only checks it and prepare decodes."""
    from vla_accel.core.image import decode_image
    from vla_accel.core.metrics import InferenceMetrics
    from vla_accel.core.scheduling import InferenceLoop
    from vla_accel.runtime.wiring import build_assembler, camera_inputs

    spec = engine.spec
    chunks = ChunkLog()
    loop = InferenceLoop(engine, pipeline=True, queue_depth=depth, on_chunks=chunks.on_chunks,
                         on_error=chunks.on_error, name="node-path")
    cams = camera_inputs(spec, [f"/{c.name}" for c in spec.cameras], ["compressed"])
    assembler = build_assembler(spec, cams, InferenceMetrics(), instruction="pick up the block")
    if spec.state is not None:
        assembler.set_joint_state([], [0.0] * spec.state.dims)
    reduced = engine.preprocessor.jpeg_reduced_decode
    sizes = {c.name: (c.height, c.width) if reduced else None for c in spec.cameras}
    callback_ms: list[float] = []
    sent = decoded_at_input = 0
    engine.metrics.reset()
    before = engine.metrics.snapshot()
    loop.start()
    period = 1.0 / rate_hz
    started = next_t = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            frame = source.frames[sent % len(source.frames)]
            stamp = time.time_ns()
            t0 = time.perf_counter()
            observation = None
            for cam in reversed(spec.cameras):  # other cameras first: the primary completes the observation
                image = frame[cam.name]
                if decode_at_input:
                    image = decode_image(image, sizes[cam.name])
                    decoded_at_input += 1
                observation = assembler.on_frame(cam.name, image, stamp) or observation
            if observation is not None:
                loop.submit(observation)
            callback_ms.append((time.perf_counter() - t0) * 1e3)
            sent += 1
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        elapsed = time.monotonic() - started
        loop.stop(2.0)
    snap = engine.metrics.snapshot()
    processed = snap.frames_processed - before.frames_processed
    return {"sent": sent, "processed": processed, "seconds": elapsed,
            "superseded": snap.frames_superseded - before.frames_superseded,
            "decoded_on_receiving_thread": decoded_at_input,
            "callback_p50_ms": metrics.percentiles(callback_ms)["p50"],
            "callback_p99_ms": metrics.percentiles(callback_ms)["p99"],
            "errors": len(chunks.errors)}


def node_path(model: str, backend: str, threads: int, kind: str, seconds: float, rounds: int, rate_hz: float,
              depth: int) -> dict[str, Any]:
    """Decode on the receiving thread vs in the prepare stage, on the node's path, alternating rounds."""
    engine = build_engine(model, backend, memory="pool", threads=threads, pool_size=max(2, depth + 1))
    source = FrameSource(engine.spec, kind)
    totals = {label: {"sent": 0, "processed": 0, "seconds": 0.0, "superseded": 0, "decoded_on_receiving_thread": 0,
                      "callback_p50_ms": [], "callback_p99_ms": [], "errors": 0}
              for label in ("decode_on_receiving_thread", "decode_in_prepare")}
    try:
        for r in range(rounds):
            for label in totals:
                result = _node_path_round(engine, source, label == "decode_on_receiving_thread", seconds, rate_hz,
                                          depth)
                for key in ("sent", "processed", "seconds", "superseded", "decoded_on_receiving_thread", "errors"):
                    totals[label][key] += result[key]
                for key in ("callback_p50_ms", "callback_p99_ms"):
                    totals[label][key].append(result[key])
                log(f"[pipeline] node path round {r + 1} {label:27}: "
                    f"{metrics.throughput(result['processed'], result['seconds']):6.1f} frames/s, callback p50 "
                    f"{result['callback_p50_ms']:.2f} ms, superseded {result['superseded']}")
    finally:
        engine.close()
    out: dict[str, Any] = {"camera_rate_hz": rate_hz, "input": kind, "rounds": rounds, "seconds_per_round": seconds}
    for label, t in totals.items():
        out[label] = {"throughput_fps": metrics.throughput(t["processed"], t["seconds"]), "sent": t["sent"],
                      "processed": t["processed"], "superseded": t["superseded"],
                      "decoded_on_receiving_thread": t["decoded_on_receiving_thread"],
                      "callback_p50_ms": sorted(t["callback_p50_ms"])[len(t["callback_p50_ms"]) // 2],
                      "callback_p99_ms": max(t["callback_p99_ms"]), "errors": t["errors"]}
    out["throughput_prepare_over_receiving"] = metrics.speedup(
        1.0 / max(out["decode_on_receiving_thread"]["throughput_fps"], 1e-9),
        1.0 / max(out["decode_in_prepare"]["throughput_fps"], 1e-9))
    return out
