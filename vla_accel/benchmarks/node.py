"""``vla-accel bench node``: what the ROS node adds around inference, measured across real processes.

A synthetic camera process publishes 640x480 rgb8 frames at --node-rate Hz, the VLA node runs in a
second process, and this process receives the action chunks. Printed per transport setting:

* node overhead p50 / p99 (goal: p50 <= 1 ms): image callback entry -> chunk (and first action)
  published, minus the backend's inference call, and minus only the time a frame queued behind earlier
  batches while the worker was busy (scheduling.QUEUED: their inference; 0 when the worker was idle).
  So it holds message conversion, validation, the hand-off to the inference worker thread and its
  wake-up, preprocessing, postprocessing, building and publishing the messages. Recorded by the node
  as the metrics stage ``node_overhead`` and read from its /diagnostics (the diagnostics snapshot taken
  at the end of the window);
* inference p50 (the backend call) and total p50 (frame received by the node -> chunk ready);
* end-to-end p50 / p90 / p99: source frame stamp -> chunk received here (camera transport + node +
  inference + chunk transport; same machine, same clock);
* chunks per second received.

``--node-transports LARGE_DATA,default`` runs the graph once per FASTDDS_BUILTIN_TRANSPORTS setting,
and ``--backends torch,onnxruntime`` once per backend (the node runs one backend each time), one after
the other in one invocation, so their figures compare on the same machine state. ``--node-executors
events,single_threaded`` compares the node's rclpy executors the same way.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from vla_accel.core.metrics import percentiles
from vla_accel.errors import VlaAccelError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("node mode (vla-accel bench node)")
    group.add_argument("--node-rate", type=float, default=30.0, help="camera frames per second (default: 30)")
    group.add_argument("--node-width", type=int, default=640)
    group.add_argument("--node-height", type=int, default=480)
    group.add_argument("--node-transports", default="LARGE_DATA",
                       help="comma-separated FASTDDS_BUILTIN_TRANSPORTS settings to compare; 'default' = unset "
                            "(default: LARGE_DATA)")
    group.add_argument("--node-qos", default="sensor_data", choices=("sensor_data", "reliable"),
                       help="image QoS of camera and node (default: sensor_data, best effort)")
    group.add_argument("--node-executors", default="events",
                       help="comma-separated node `executor` parameter values to compare (events, single_threaded; "
                            "default: events)")
    group.add_argument("--node-startup-timeout", type=float, default=300.0,
                       help="seconds to wait for the node's first chunk: model load, warm-up and the CPU baseline "
                            "timed side by side come first (default: 300)")


def run(args: argparse.Namespace) -> int:
    try:
        import rclpy  # noqa: F401

        import vla_accel.msg  # noqa: F401
    except ImportError as exc:
        raise VlaAccelError(f"bench node needs rclpy and the built vla_accel messages ({exc}): run ./run.sh setup "
                            "and source .ros_build/env.sh", reason="missing_ros") from exc
    backends = list(getattr(args, "backends", None) or ["torch"])  # one node run per backend (+ its fallbacks)
    seconds = max(3.0, float(getattr(args, "seconds", 10.0) or 10.0))
    executors = [e.strip() for e in str(getattr(args, "node_executors", "events")).split(",") if e.strip()]
    results = []
    for backend in backends:
        for executor in executors:
            for transport in [t.strip() for t in args.node_transports.split(",") if t.strip()]:
                results.append(measure(model=args.model, backend=backend, transport=transport, seconds=seconds,
                                       rate=args.node_rate, width=args.node_width, height=args.node_height,
                                       threads=int(getattr(args, "threads", 0) or 0), qos=args.node_qos,
                                       startup_timeout=args.node_startup_timeout, node_executor=executor))
    print_table(results)
    compare_speedups(results, args.model, int(getattr(args, "threads", 0) or 0))
    breakdown = in_process_breakdown(args.model, args.node_width, args.node_height)
    print("in-process breakdown of the node's own work, p50 over 300 calls (no graph, no threads): "
          + ", ".join(f"{k} {v:.3f} ms" for k, v in breakdown.items()))
    for r in results:
        r["in_process_breakdown_ms"] = breakdown
    json_path = getattr(args, "json_path", None)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"wrote {json_path}", file=sys.stderr)
    return 0 if all(r.get("chunks", 0) for r in results) else 1


def node_source_env(env: dict[str, str], source_dir: str) -> dict[str, str]:
    """``env`` with ``source_dir`` (a checkout of this package) first on PYTHONPATH and every other
    full source tree removed from it, so a node started with it runs that checkout's code and nothing
    of another tree slips in for a module the checkout lacks. The generated messages (a copy of the
    package holding only ``msg``) stay."""
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
            if p and not os.path.isdir(os.path.join(p, "vla_accel", "core"))]
    return dict(env, PYTHONPATH=os.pathsep.join([str(source_dir), *kept]))


def measure(*, model: str, backend: str, transport: str, seconds: float, rate: float, width: int, height: int,
            threads: int, startup_timeout: float, qos: str = "sensor_data",
            node_executor: str = "events", speedup_baseline: str = "measure",
            node_source: str | None = None) -> dict[str, Any]:
    """One node run; ``node_source``: run the node from that checkout of the package (the camera and
    this receiver stay on the current one), e.g. to compare with an earlier commit side by side."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile

    from vla_accel.msg import ActionChunk
    from vla_accel.runtime.conversions import stamp_to_ns

    domain = 100 + (os.getpid() + len(transport)) % 100
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
    env.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
    if transport != "default":
        env["FASTDDS_BUILTIN_TRANSPORTS"] = transport
    node_cmd = [sys.executable, "-m", "vla_accel.ros.vla_node", "--ros-args", "-p", f"backend:={backend}",
                "-p", f"model:={model}", "-p", f"threads:={threads}", "-p", f"speedup_baseline:={speedup_baseline}",
                "-p", "stats_period_s:=0.5", "-p", f"input_qos:={qos}", "-p", f"executor:={node_executor}"]
    camera_cmd = [sys.executable, "-m", "vla_accel.ros.synthetic_camera", "--rate", str(rate), "--width", str(width),
                  "--height", str(height), "--seconds", str(seconds + startup_timeout + 10)]
    if qos == "reliable":
        camera_cmd.append("--reliable")
    print(f"[bench node] {backend} / {model}, executor {node_executor}, FASTDDS_BUILTIN_TRANSPORTS={transport}: "
          "starting node and camera",
          file=sys.stderr)
    # This process's participant reads FASTDDS_BUILTIN_TRANSPORTS at creation: match the graph's.
    saved = os.environ.get("FASTDDS_BUILTIN_TRANSPORTS")
    os.environ.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
    if transport != "default":
        os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = transport
    node_env = node_source_env(env, node_source) if node_source else env
    node_proc = subprocess.Popen(node_cmd, env=node_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    camera = None  # started once the node subscribes: its CPU baseline is timed on a quiet graph
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("vla_bench_node", context=context)
    lock = threading.Lock()
    e2e_ms: list[float] = []
    latest_diag: dict[str, str] = {}
    recording = threading.Event()

    window_start_ns = [0]

    def on_chunk(msg):
        now = time.time_ns()
        stamp = stamp_to_ns(msg.header.stamp)
        # only frames captured inside the window: chunks of start-up frames arriving late are not steady state
        if recording.is_set() and stamp >= window_start_ns[0]:
            with lock:
                e2e_ms.append((now - stamp) / 1e6)
        first_chunk.set()

    def on_diag(msg):
        for status in msg.status:
            if status.name == "vla_accel: inference":
                with lock:
                    latest_diag.clear()
                    latest_diag.update({kv.key: kv.value for kv in status.values})

    first_chunk = threading.Event()
    node.create_subscription(ActionChunk, "/vla/action_chunk", on_chunk, QoSProfile(depth=50))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, QoSProfile(depth=10))
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    result: dict[str, Any] = {"backend": backend, "model": model, "transport": transport, "qos": qos, "rate_hz": rate,
                              "executor": node_executor,
                              "image": f"{width}x{height} rgb8"}
    try:
        deadline = time.monotonic() + startup_timeout
        while not first_chunk.is_set():
            executor.spin_once(timeout_sec=0.1)
            if camera is None and node.count_subscribers("/camera/image_raw") > 0:
                camera = subprocess.Popen(camera_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if node_proc.poll() is not None:
                raise VlaAccelError(f"the node exited during start-up: {node_proc.stderr.read()[-2000:]}",
                                    reason="node_failed")
            if time.monotonic() > deadline:
                raise VlaAccelError(f"no action chunk within {startup_timeout:.0f} s", reason="node_timeout")
        time.sleep(1.0)  # let the first (warm-up affected) chunks pass
        window_start_ns[0] = time.time_ns()
        recording.set()
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            executor.spin_once(timeout_sec=0.1)
        recording.clear()
        with lock:
            samples, diag = list(e2e_ms), dict(latest_diag)
        stats = percentiles(samples)
        result.update({
            "chunks": len(samples),
            "chunks_per_s": len(samples) / seconds,
            "end_to_end_p50_ms": stats["p50"], "end_to_end_p90_ms": stats["p90"],
            "end_to_end_p99_ms": stats["p99"],
            "node_overhead_p50_ms": float(diag.get("node overhead p50 (ms)", "nan")),
            "node_overhead_p99_ms": float(diag.get("node overhead p99 (ms)", "nan")),
            "inference_p50_ms": float(diag.get("latency p50 (ms)", "nan")),
            "total_p50_ms": float(diag.get("total latency p50 (ms)", "nan")),
            "frames_dropped": int(diag.get("frames dropped", "0")),
            "diagnostics_speedup_live": _number(diag.get("speedup over CPU")),
            "diagnostics_speedup_startup": _number(diag.get("speedup at start-up (side by side)")),
            "frames_superseded": int(diag.get("dropped: superseded", "0")),
        })
    finally:
        procs = [p for p in (camera, node_proc) if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.shutdown(context=context)
        os.environ.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
        if saved is not None:
            os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = saved
    return result


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:  # "n/a (...)"
        return None


SPEEDUP_AGREEMENT = 0.15


def isolated_speedup(model: str, backend: str, threads: int, iterations: int = 30) -> float:
    """torch CPU vs ``backend``, timed alternately in this process with no graph running (what
    `vla-accel bench` measures): the reference the node's diagnostics are compared with."""
    from vla_accel.backends.base import BackendOptions
    from vla_accel.backends.registry import create_backend
    from vla_accel.models import load_model
    from vla_accel.runtime.session import measure_baseline_ms

    bundle = load_model(model)
    side: dict = {}
    with create_backend(backend, bundle, BackendOptions(threads=threads, max_batch=1)) as other:
        other.warmup(1, iterations=5)
        measure_baseline_ms(bundle, 1, threads, against=other, iterations=iterations, side_by_side=side)
    return float(side.get("startup_speedup", 0.0))


def compare_speedups(results: list[dict[str, Any]], model: str, threads: int) -> None:
    """Print the node's two diagnostics speedups next to the isolated one, measured after the graph stopped."""
    print("\nspeedup over torch CPU, batch 1: isolated (this process, no graph, timed alternately) vs the node's "
          "/diagnostics (side by side at start-up; live = start-up baseline / live inference p50)")
    for r in results:
        try:
            r["bench_speedup_isolated"] = isolated_speedup(model, r["backend"], threads)
        except VlaAccelError as exc:
            print(f"  {r['backend']}: isolated speedup not measured: {exc}")
            continue
        iso = r["bench_speedup_isolated"]
        parts = [f"  {r['backend']:<13} isolated {iso:.2f}"]
        for key, label in (("diagnostics_speedup_startup", "start-up side by side"),
                           ("diagnostics_speedup_live", "live")):
            value = r.get(key)
            if value is None or iso <= 0:
                parts.append(f"{label} n/a")
                continue
            diff = value / iso - 1.0
            r[key + "_vs_isolated"] = diff
            verdict = "agrees" if abs(diff) <= SPEEDUP_AGREEMENT else "DIFFERS"
            parts.append(f"{label} {value:.2f} ({diff:+.0%}, {verdict} within {SPEEDUP_AGREEMENT:.0%})")
        print(", ".join(parts))


def in_process_breakdown(model: str, width: int, height: int, calls: int = 300) -> dict[str, float]:
    """p50 of each step the node does per frame, timed in this process on real messages: what the
    graph figures above add on top is thread hand-off, GIL contention with inference and DDS."""
    import array

    import numpy as np
    from geometry_msgs.msg import TwistStamped
    from sensor_msgs.msg import Image

    from vla_accel.core.metrics import InferenceMetrics
    from vla_accel.core.preprocess import Preprocessor
    from vla_accel.core.types import ActionChunk
    from vla_accel.models import load_model
    from vla_accel.msg import ActionChunk as ActionChunkMsg
    from vla_accel.ros import conversions
    from vla_accel.runtime.conversions import image_msg_to_raw
    from vla_accel.runtime.wiring import build_assembler, camera_inputs

    spec = load_model(model).spec
    msg = Image()
    msg.height, msg.width, msg.step, msg.encoding = height, width, width * 3, "rgb8"
    data = array.array("B")
    data.frombytes(np.random.default_rng(0).integers(0, 256, width * height * 3, dtype=np.uint8).tobytes())
    msg.data = data
    cams = camera_inputs(spec, [f"/{c.name}" for c in spec.cameras], ["raw"])
    assembler = build_assembler(spec, cams, InferenceMetrics(), instruction_topic="/vla/instruction",
                                instruction="pick up the block")
    if spec.state is not None:
        assembler.set_joint_state([], np.zeros(spec.state.dims))
    preprocessor = Preprocessor(spec, 1)
    chunk = ActionChunk(1, spec.action.dt, spec.action.names,
                        np.zeros((spec.action.steps, spec.action.dims), np.float32), spec.action.space)

    def on_frame():
        obs = None
        for cam in reversed(spec.cameras):  # secondary frames are stored, then the primary builds the observation
            obs = assembler.on_frame(cam.name, image_msg_to_raw(msg), 1) or obs
        return obs

    obs = on_frame()

    def prepare():
        preprocessor.prepare([obs]).release()

    steps = {
        "image callback (view + validate + assemble)": on_frame,
        "preprocess (resize + normalise + tokenise)": prepare,
        "ActionChunk message": lambda: conversions.fill_chunk_msg(ActionChunkMsg(), chunk),
        "first-action TwistStamped": lambda: conversions.fill_twist(TwistStamped(), chunk.values[0], chunk.names,
                                                                    chunk.space, chunk.dt, 1, ""),
    }
    out = {}
    for name, step in steps.items():
        step()
        samples = []
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            step()
            samples.append((time.perf_counter_ns() - t0) / 1e6)
        out[name] = percentiles(samples)["p50"]
    return out


def print_table(results: list[dict[str, Any]]) -> None:
    print("\nvla-accel bench node: node overhead and end-to-end latency (ms), same machine, one run")
    header = (f"{'transport':<12}{'qos':<13}{'backend':<13}{'executor':<17}{'chunks/s':>9}"
              f"{'overhead p50':>14}{'overhead p99':>14}"
              f"{'infer p50':>11}{'total p50':>11}{'e2e p50':>10}{'e2e p90':>10}{'e2e p99':>10}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['transport']:<12}{r['qos']:<13}{r['backend']:<13}{r.get('executor', ''):<17}{r['chunks_per_s']:>9.1f}"
              f"{r['node_overhead_p50_ms']:>14.3f}"
              f"{r['node_overhead_p99_ms']:>14.3f}{r['inference_p50_ms']:>11.2f}{r['total_p50_ms']:>11.2f}"
              f"{r['end_to_end_p50_ms']:>10.2f}{r['end_to_end_p90_ms']:>10.2f}{r['end_to_end_p99_ms']:>10.2f}")
    goal = all(r["node_overhead_p50_ms"] <= 1.0 for r in results)
    print(f"node overhead goal p50 <= 1 ms: {'met' if goal else 'NOT met'}"
          " (overhead = callback entry -> published, minus inference and minus queueing behind a busy worker:"
          " conversion, validation, worker hand-off, preprocessing, postprocessing, messages, publishing)")
