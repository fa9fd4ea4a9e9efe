"""``vla-accel demo``: the VLA node on the embedded default (tiny model, CPU backend) in a real ROS graph.

Three processes, as on a robot: a synthetic camera (a moving scene, 640x480 rgb8 at 30 Hz, plus an
instruction and joint states), the VLA node, and this one, which subscribes like a user's tool
would and prints action chunks and the /diagnostics statuses (as rqt_robot_monitor lists them)
for --seconds, then stops the node with SIGINT (it publishes its hold action) and the camera.

``--no-ros`` runs the same InferenceSession in this process over the same synthetic stream, for
machines without rclpy or the built messages.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

SETUP_HINT = ("run ./run.sh setup (it installs the ROS 2 wheels and builds vla_accel's messages), then "
              "`source .ros_build/env.sh` or use ./run.sh demo; or pass --no-ros to run without ROS")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to stream (default: 20)")
    parser.add_argument("--backend", default="torch", help="backend (default: torch, the CPU baseline)")
    parser.add_argument("--fallback", default="", help="comma-separated fallback backends")
    parser.add_argument("--model", default="tiny", help="model name or spec YAML (default: tiny)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera frames per second (default: 30)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--compressed", action="store_true", help="send JPEG (sensor_msgs/CompressedImage)")
    parser.add_argument("--params-file", default="", help="node parameters YAML (e.g. config/cpu.yaml)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="extra node parameter (repeatable), e.g. --param target_latency_ms:=50")
    parser.add_argument("--no-ros", action="store_true", help="run the engine in-process, without ROS")
    parser.add_argument("--domain-id", type=int, default=None,
                        help="ROS_DOMAIN_ID for the demo graph (default: one derived from the process id, "
                             "so parallel demos do not talk to each other)")
    parser.add_argument("--no-large-data", action="store_true",
                        help="do not set FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA (large images are slower)")


def run(args: argparse.Namespace) -> int:
    if args.no_ros:
        return run_without_ros(args)
    missing = ros_missing()
    if missing:
        print(f"vla-accel demo: {missing} is not importable: {SETUP_HINT}", file=sys.stderr)
        return 1
    return run_with_ros(args)


def ros_missing() -> str:
    """The first missing ROS piece ('' when everything imports)."""
    try:
        import rclpy  # noqa: F401
    except ImportError:
        return "rclpy (the ROS 2 Kilted wheels)"
    try:
        import vla_accel.msg  # noqa: F401
    except ImportError:
        return "vla_accel.msg (the package's built messages)"
    return ""


def demo_environment(domain_id: int | None, large_data: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else 100 + os.getpid() % 100)
    if large_data:
        # 640x480 rgb8 across processes: ~13.6 ms with the default transports, ~3 ms with LARGE_DATA
        # (measured on this machine; `vla-accel bench node` prints the end-to-end latency).
        env.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def node_command(args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "vla_accel.ros.vla_node", "--ros-args"]
    if args.params_file:
        cmd += ["--params-file", args.params_file]
    overrides = {"backend": args.backend, "model": args.model, "stale_image_timeout_s": "2.0"}
    if args.fallback:
        overrides["fallback"] = "[" + args.fallback + "]"
    if args.compressed:
        overrides["camera_transports"] = "[compressed]"
    for item in args.param:
        name, sep, value = item.partition(":=")
        if not sep:
            raise SystemExit(f"--param expects NAME:=VALUE, got {item!r}")
        overrides[name] = value
    for name, value in overrides.items():
        cmd += ["-p", f"{name}:={value}"]
    return cmd


def run_with_ros(args: argparse.Namespace) -> int:
    env = demo_environment(args.domain_id, not args.no_large_data)
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "FASTDDS_BUILTIN_TRANSPORTS") if k in env})
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile

    from vla_accel.msg import ActionChunk, InferenceStats
    from vla_accel.ros.conversions import chunk_values_from_msg, stamp_to_ns

    camera_cmd = [sys.executable, "-m", "vla_accel.ros.synthetic_camera", "--rate", str(args.rate),
                  "--width", str(args.width), "--height", str(args.height), "--seconds", str(args.seconds + 120)]
    if args.compressed:
        camera_cmd.append("--compressed")
    print(f"[demo] ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} FASTDDS_BUILTIN_TRANSPORTS="
          f"{env.get('FASTDDS_BUILTIN_TRANSPORTS', '(default)')}")
    print("[demo] camera: " + " ".join(camera_cmd[1:]))
    print("[demo] node:   " + " ".join(node_command(args)[1:]))
    camera = subprocess.Popen(camera_cmd, env=env)
    node_proc = subprocess.Popen(node_command(args), env=env)
    rclpy.init(args=[])
    viewer = rclpy.create_node("vla_demo_viewer")
    state: dict[str, Any] = {"chunks": 0, "last_chunk": None, "stats": None, "diag": None, "first_at": None}
    lock = threading.Lock()

    def on_chunk(msg):
        with lock:
            state["chunks"] += 1
            state["last_chunk"] = msg
            if state["first_at"] is None:
                state["first_at"] = time.monotonic()

    def on_stats(msg):
        with lock:
            state["stats"] = msg

    def on_diag(msg):
        if any(s.name.startswith("vla_accel") for s in msg.status):
            with lock:
                state["diag"] = msg

    viewer.create_subscription(ActionChunk, "/vla/action_chunk", on_chunk, QoSProfile(depth=10))
    viewer.create_subscription(InferenceStats, "/vla/stats", on_stats, QoSProfile(depth=10))
    viewer.create_subscription(DiagnosticArray, "/diagnostics", on_diag, QoSProfile(depth=10))
    executor = SingleThreadedExecutor()
    executor.add_node(viewer)
    rc = 0
    try:
        started = time.monotonic()
        last_print = 0.0
        last_diag_print = 0.0
        while True:
            executor.spin_once(timeout_sec=0.05)
            now = time.monotonic()
            if node_proc.poll() is not None:
                print(f"[demo] the node exited early with code {node_proc.returncode}", file=sys.stderr)
                rc = 1
                break
            with lock:
                first_at, chunk, stats, diag = state["first_at"], state["last_chunk"], state["stats"], state["diag"]
            if first_at is None:
                if now - started > 120:
                    print("[demo] no action chunk within 120 s of start: giving up", file=sys.stderr)
                    rc = 1
                    break
                continue
            if now - first_at >= args.seconds:
                break
            if chunk is not None and now - last_print >= 1.0:
                last_print = now
                values = chunk_values_from_msg(chunk)
                first = " ".join(f"{n}={v:+.3f}" for n, v in zip(chunk.names, values[0]))
                age_ms = (time.time_ns() - stamp_to_ns(chunk.header.stamp)) / 1e6
                line = (f"[chunk] #{state['chunks']} stamp={stamp_to_ns(chunk.header.stamp) / 1e9:.3f} "
                        f"{chunk.backend}@{chunk.device} {chunk.steps}x{chunk.dims} {chunk.action_space} "
                        f"infer {chunk.inference_latency_ms:.1f} ms total {chunk.total_latency_ms:.1f} ms "
                        f"(frame->here {age_ms:.1f} ms) | step0: {first}")
                if stats is not None:
                    line += (f" | {stats.throughput_hz:.1f} Hz, speedup x{stats.speedup:.2f}, "
                             f"dropped {stats.frames_dropped} (superseded {stats.frames_superseded})")
                print(line, flush=True)
            if diag is not None and now - last_diag_print >= 5.0:
                last_diag_print = now
                print_diagnostics(diag)
    except KeyboardInterrupt:
        print("[demo] interrupted")
    finally:
        with lock:
            diag, stats, n_chunks = state["diag"], state["stats"], state["chunks"]
        rc = max(rc, stop_process(node_proc, "node"))
        stop_process(camera, "camera")
        executor.shutdown(timeout_sec=1.0)
        viewer.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    if diag is not None:
        print_diagnostics(diag)
    print(f"[demo] received {n_chunks} action chunks"
          + (f"; final stats: {stats.frames_received} frames in, {stats.frames_processed} processed, "
             f"{stats.frames_dropped} dropped, latency p50 {stats.latency_p50_ms:.1f} ms, "
             f"speedup over CPU x{stats.speedup:.2f}" if stats is not None else ""))
    return rc if n_chunks else 1


def print_diagnostics(diag) -> None:
    levels = {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}
    print("[diagnostics] /diagnostics (as rqt_robot_monitor shows it):")
    keys = ("latency p50 (ms)", "latency p99 (ms)", "throughput (Hz)", "speedup over CPU", "CPU baseline latency (ms)",
            "speedup at start-up (side by side)", "input rate (Hz)",
            "frames received", "frames processed", "frames dropped", "rate (Hz)", "instruction")
    for status in diag.status:
        level = levels.get(status.level[0] if isinstance(status.level, bytes) else status.level, "?")
        print(f"  [{level:5}] {status.name} ({status.hardware_id}): {status.message}")
        for kv in status.values:
            if kv.key in keys or kv.key.startswith("dropped:"):
                print(f"            {kv.key}: {kv.value}")


def stop_process(proc: subprocess.Popen, what: str, timeout: float = 10.0) -> int:
    """SIGINT (the node publishes its stop action), then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"[demo] {what} did not stop within {timeout:.0f} s of SIGINT: killing it", file=sys.stderr)
            proc.kill()
            proc.wait(5)
            return 1
    code = proc.returncode
    return 0 if code in (0, -signal.SIGINT, 130) else 1


def run_without_ros(args: argparse.Namespace) -> int:
    """The same engine, scheduler and diagnostics in-process over the synthetic stream."""
    from vla_accel.core.types import Observation, RawImage
    from vla_accel.ros import diagnostics
    from vla_accel.ros.inputs import ObservationAssembler
    from vla_accel.ros.params import load_params_file, node_parameters
    from vla_accel.ros.session import InferenceSession
    from vla_accel.ros.synthetic_camera import SyntheticScene, encode_jpeg

    overrides: dict[str, Any] = load_params_file(args.params_file) if args.params_file else {}
    overrides.update({"backend": args.backend, "model": args.model})
    if args.fallback:
        overrides["fallback"] = [n.strip() for n in args.fallback.split(",") if n.strip()]
    values = node_parameters(overrides)
    chunks_seen = {"n": 0, "last": None}
    lock = threading.Lock()

    def on_chunks(chunks):
        session.metrics.record_published(chunks)
        with lock:
            chunks_seen["n"] += len(chunks)
            chunks_seen["last"] = chunks[-1]

    session = InferenceSession(values, on_chunks=on_chunks)
    print(f"[demo --no-ros] loading {args.model} on {args.backend} ...", flush=True)
    session.load_model()
    cams = [diagnostics.CameraInput(c.name, "synthetic", "compressed" if args.compressed else "raw")
            for c in session.spec.cameras]
    assembler = ObservationAssembler(session.spec, cams, session.metrics, "synthetic",
                                     "pick up the red block")
    if session.spec.state is not None:
        assembler.set_joint_state([], np.zeros(session.spec.state.dims))
    session.load()
    session.start()
    scenes = [SyntheticScene(args.width, args.height) for _ in session.spec.cameras]
    config = diagnostics.DiagnosticsConfig(target_latency_ms=values["target_latency_ms"])
    start = time.monotonic()
    next_t, last_print = start, 0.0
    try:
        while time.monotonic() - start < args.seconds:
            t = time.monotonic() - start
            stamp = time.time_ns()
            obs: Observation | None = None
            for cam, scene in zip(session.spec.cameras, scenes):
                rgb = scene.render(t)
                if args.compressed:
                    raw = RawImage(data=encode_jpeg(rgb), encoding="jpeg")
                else:
                    raw = RawImage(data=rgb.tobytes(), encoding="rgb8", height=args.height, width=args.width,
                                   step=args.width * 3)
                obs = assembler.on_frame(cam.name, raw, stamp) or obs
            if obs is not None:
                session.submit(obs)
            now = time.monotonic()
            with lock:
                last, n = chunks_seen["last"], chunks_seen["n"]
            if last is not None and now - last_print >= 1.0:
                last_print = now
                first = " ".join(f"{name}={v:+.3f}" for name, v in zip(last.names, last.values[0]))
                print(f"[chunk] #{n} {last.backend} infer {last.timings_ms.get('infer', 0):.1f} ms "
                      f"total {last.timings_ms.get('total', 0):.1f} ms | step0: {first}", flush=True)
            next_t += 1.0 / args.rate
            time.sleep(max(0.0, next_t - time.monotonic()))
    except KeyboardInterrupt:
        print("[demo --no-ros] interrupted")
    finally:
        session.stop()
    reports = diagnostics.build_reports(session.metrics.snapshot(), session.state, [c.view() for c in cams],
                                        assembler.instruction_view(), config)
    print(diagnostics.format_reports(reports, ("latency p50 (ms)", "latency p99 (ms)", "throughput (Hz)",
                                               "speedup over CPU", "frames received", "frames processed",
                                               "frames dropped", "prefix p50 (ms)", "step p50 (ms)",
                                               "program p50 (ms)", "steps per chunk")))
    return 0 if chunks_seen["n"] else 1


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="vla-accel demo")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
