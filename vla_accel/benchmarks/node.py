"""``vla-accel bench node``: what the ROS node adds around inference, measured across real processes.

A synthetic camera process publishes 640x480 rgb8 frames at --node-rate Hz, the VLA node runs in a
second process, and this process receives the action chunks. Printed per transport setting:

* node overhead p50 / p99 (goal: p50 <= 1 ms): image callback entry -> chunk published, minus
  inference and minus waiting for the inference worker; that is message conversion, validation,
  preprocessing, postprocessing and publishing. Recorded by the node as the metrics stage
  ``node_overhead`` and read from its /diagnostics;
* inference p50 (the backend call) and total p50 (frame received by the node -> chunk ready);
* end-to-end p50 / p90 / p99: source frame stamp -> chunk received here (camera transport + node +
  inference + chunk transport; same machine, same clock);
* chunks per second received.

``--node-transports LARGE_DATA,default`` runs the graph once per FASTDDS_BUILTIN_TRANSPORTS setting,
side by side in one invocation, so their end-to-end figures compare on the same machine state.
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
    group.add_argument("--node-startup-timeout", type=float, default=120.0,
                       help="seconds to wait for the node's first chunk (default: 120)")


def run(args: argparse.Namespace) -> int:
    try:
        import rclpy  # noqa: F401

        import vla_accel.msg  # noqa: F401
    except ImportError as exc:
        raise VlaAccelError(f"bench node needs rclpy and the built vla_accel messages ({exc}): run ./run.sh setup "
                            "and source .ros_build/env.sh", reason="missing_ros") from exc
    backends = getattr(args, "backends", None) or ["torch"]
    backend = backends[0] if backends and backends[0] not in ("torch", "onnxruntime", "openvino") or \
        len(backends) == 1 else "torch"
    seconds = max(3.0, float(getattr(args, "seconds", 10.0) or 10.0))
    results = []
    for transport in [t.strip() for t in args.node_transports.split(",") if t.strip()]:
        results.append(measure(model=args.model, backend=backend, transport=transport, seconds=seconds,
                               rate=args.node_rate, width=args.node_width, height=args.node_height,
                               threads=int(getattr(args, "threads", 0) or 0),
                               startup_timeout=args.node_startup_timeout))
    print_table(results)
    json_path = getattr(args, "json_path", None)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"wrote {json_path}", file=sys.stderr)
    return 0 if all(r.get("chunks", 0) for r in results) else 1


def measure(*, model: str, backend: str, transport: str, seconds: float, rate: float, width: int, height: int,
            threads: int, startup_timeout: float) -> dict[str, Any]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile

    from vla_accel.msg import ActionChunk
    from vla_accel.ros.conversions import stamp_to_ns

    domain = 100 + (os.getpid() + len(transport)) % 100
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
    env.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
    if transport != "default":
        env["FASTDDS_BUILTIN_TRANSPORTS"] = transport
    node_cmd = [sys.executable, "-m", "vla_accel.ros.vla_node", "--ros-args", "-p", f"backend:={backend}",
                "-p", f"model:={model}", "-p", f"threads:={threads}", "-p", "speedup_baseline:=none",
                "-p", "stats_period_s:=0.5"]
    camera_cmd = [sys.executable, "-m", "vla_accel.ros.synthetic_camera", "--rate", str(rate), "--width", str(width),
                  "--height", str(height), "--seconds", str(seconds + startup_timeout + 10)]
    print(f"[bench node] {backend} / {model}, FASTDDS_BUILTIN_TRANSPORTS={transport}: starting node and camera",
          file=sys.stderr)
    # This process's participant reads FASTDDS_BUILTIN_TRANSPORTS at creation: match the graph's.
    saved = os.environ.get("FASTDDS_BUILTIN_TRANSPORTS")
    os.environ.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
    if transport != "default":
        os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = transport
    node_proc = subprocess.Popen(node_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    camera = subprocess.Popen(camera_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("vla_bench_node", context=context)
    lock = threading.Lock()
    e2e_ms: list[float] = []
    latest_diag: dict[str, str] = {}
    recording = threading.Event()

    def on_chunk(msg):
        now = time.time_ns()
        if recording.is_set():
            with lock:
                e2e_ms.append((now - stamp_to_ns(msg.header.stamp)) / 1e6)
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
    result: dict[str, Any] = {"backend": backend, "model": model, "transport": transport, "rate_hz": rate,
                              "image": f"{width}x{height} rgb8"}
    try:
        deadline = time.monotonic() + startup_timeout
        while not first_chunk.is_set():
            executor.spin_once(timeout_sec=0.1)
            if node_proc.poll() is not None:
                raise VlaAccelError(f"the node exited during start-up: {node_proc.stderr.read()[-2000:]}",
                                    reason="node_failed")
            if time.monotonic() > deadline:
                raise VlaAccelError(f"no action chunk within {startup_timeout:.0f} s", reason="node_timeout")
        time.sleep(0.5)  # let the first (warm-up affected) chunks pass
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
            "frames_superseded": int(diag.get("dropped: superseded", "0")),
        })
    finally:
        for proc in (camera, node_proc):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in (camera, node_proc):
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


def print_table(results: list[dict[str, Any]]) -> None:
    print("\nvla-accel bench node: node overhead and end-to-end latency (ms), same machine, one run")
    header = (f"{'transport':<12}{'backend':<12}{'chunks/s':>9}{'overhead p50':>14}{'overhead p99':>14}"
              f"{'infer p50':>11}{'total p50':>11}{'e2e p50':>10}{'e2e p90':>10}{'e2e p99':>10}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['transport']:<12}{r['backend']:<12}{r['chunks_per_s']:>9.1f}{r['node_overhead_p50_ms']:>14.3f}"
              f"{r['node_overhead_p99_ms']:>14.3f}{r['inference_p50_ms']:>11.2f}{r['total_p50_ms']:>11.2f}"
              f"{r['end_to_end_p50_ms']:>10.2f}{r['end_to_end_p90_ms']:>10.2f}{r['end_to_end_p99_ms']:>10.2f}")
    goal = all(r["node_overhead_p50_ms"] <= 1.0 for r in results)
    print(f"node overhead goal p50 <= 1 ms: {'met' if goal else 'NOT met'}"
          " (overhead = conversion + validation + preprocessing + postprocessing + publishing)")
