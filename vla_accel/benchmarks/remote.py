"""``vla-accel bench remote``: a fleet of simulated robots against one policy server, side by side
with each robot running the policy itself.

    vla-accel bench remote --model tiny --remote-robots 1,4,16 --remote-rate-hz 5 --seconds 4 --json out.json

One ``vla-accel serve`` server (real tritonserver on loopback, ``--backends`` first entry as its
backend, dynamic batching up to the largest robot count) and a pool of robot *processes*. Each robot
holds a 640x480 RGB camera frame, an instruction and a joint state, and sends raw frames at a fixed
rate (``--remote-rate-hz``; a late tick is sent at once and the schedule kept) to the server's policy
model, then runs the same observations through its own local Engine on the same backend, for
``--seconds`` each. Both paths include pre- and post-processing. Per robot count N: throughput (chunks/s
over all robots), per-robot p50 / p99 latency for both paths, and the batch sizes the server formed
(from Triton's statistics API, before/after deltas) with the mean time a request spent in each server
stage (queue = waiting for the dynamic batcher, compute_infer = pre/post-processing + the backend).

Two ratios close the report:
- round-trip overhead: remote p50 - local p50 with one robot (ms), what the network path adds;
- dynamic batching: throughput of N robots sending back-to-back (closed loop) over one client
  sending the same requests one after the other (16 sequential requests), both on the server.

On one machine the local robots share its cores (real robots each have their own computer), so the
N = 1 local row is the per-robot baseline; the server and every robot use ``--threads`` intra-op
threads (default 1) so both paths spend the same compute per inference.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from typing import Any

import numpy as np

from vla_accel.benchmarks.common import format_rows, log, machine_info, threads_option, write_json
from vla_accel.commands.bench import int_list
from vla_accel.core import metrics
from vla_accel.errors import BackendError

INSTRUCTION = "pick up the red cup"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("remote mode")
    group.add_argument("--remote-robots", type=int_list, default=[1, 4, 16], help="robot counts (default: 1,4,16)")
    group.add_argument("--remote-rate-hz", type=float, default=5.0, help="frames per second per robot (default: 5)")
    group.add_argument("--remote-delay-us", type=int, default=2000,
                       help="server dynamic batching: longest wait to fill a batch (default: 2000)")
    group.add_argument("--remote-seconds", type=float, default=0.0,
                       help="seconds per phase (default: --seconds, at least 2)")


# --- robot process -----------------------------------------------------------------------------------
def _robot(index: int, url: str, policy_model: str, model: str, backend: str, threads: int, conn) -> None:
    """One robot: a RemotePolicy and a local Engine; runs phases on command, returns latencies (ms)."""
    from vla_accel.backends.base import BackendOptions
    from vla_accel.backends.registry import create_backend
    from vla_accel.core.engine import Engine
    from vla_accel.core.types import Observation
    from vla_accel.models import load_model
    from vla_accel.serve.client import RemotePolicy

    bundle = load_model(model)
    extra = {"allow_spinning": False} if backend == "onnxruntime" else {}
    engine = Engine(bundle, create_backend(backend, bundle, BackendOptions(threads=threads, extra=extra)))
    engine.warmup(2)
    remote = RemotePolicy(url, policy_model, timeout_s=30)
    rng = np.random.default_rng(index)
    frames = {cam.name: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for cam in bundle.spec.cameras}
    state = rng.standard_normal(bundle.spec.state.dims).astype(np.float32) if bundle.spec.state else None
    remote.infer(frames, INSTRUCTION, state)
    conn.send("ready")
    while True:
        command = conn.recv()
        if command is None:
            break
        path, rate_hz, seconds, start_at = command
        latencies: list[float] = []
        late = 0
        time.sleep(max(0.0, start_at - time.time()))
        t_start = time.perf_counter()
        period = 1.0 / rate_hz if rate_hz > 0 else 0.0
        tick = 0
        while time.perf_counter() - t_start < seconds:
            if period:
                due = t_start + tick * period
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                elif wait < -period:
                    late += 1
                tick += 1
            t0 = time.perf_counter()
            if path == "remote":
                remote.infer(frames, INSTRUCTION, state)
            else:
                engine.infer_one(Observation(images=frames, instruction=INSTRUCTION, stamp_ns=tick, state=state))
            latencies.append((time.perf_counter() - t0) * 1e3)
        conn.send((latencies, time.perf_counter() - t_start, late))
    remote.close()
    engine.close()


class RobotPool:
    def __init__(self, count: int, url: str, policy_model: str, model: str, backend: str, threads: int):
        ctx = mp.get_context("spawn")  # no fork of a process holding gRPC channels or runtime threads
        self.conns, self.procs = [], []
        for i in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_robot, args=(i, url, policy_model, model, backend, threads, child), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            if not conn.poll(300):
                raise BackendError("a robot process did not start within 300 s", reason="robot_start_timeout")
            conn.recv()

    def run(self, n: int, path: str, rate_hz: float, seconds: float) -> list[tuple[list[float], float, int]]:
        start_at = time.time() + 0.3
        for conn in self.conns[:n]:
            conn.send((path, rate_hz, seconds, start_at))
        return [conn.recv() for conn in self.conns[:n]]

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()


def _summary(results, seconds_hint: float) -> dict[str, Any]:
    per_robot = [metrics.percentiles(lat) for lat, _, _ in results]
    total = sum(len(lat) for lat, _, _ in results)
    elapsed = max(el for _, el, _ in results) if results else seconds_hint
    every = np.concatenate([np.asarray(lat) for lat, _, _ in results]) if results else np.zeros(0)
    all_pct = metrics.percentiles(every)
    return {
        "chunks": total,
        "throughput_fps": round(metrics.throughput(total, elapsed), 2),
        "p50_ms": round(all_pct["p50"], 3),
        "p99_ms": round(all_pct["p99"], 3),
        "per_robot_p50_ms": [round(p["p50"], 3) for p in per_robot],
        "per_robot_p99_ms": [round(p["p99"], 3) for p in per_robot],
        "late_ticks": sum(late for _, _, late in results),
    }


def _batch_delta(before: dict[int, int], after: dict[int, int]) -> dict[str, int]:
    return {str(k): after.get(k, 0) - before.get(k, 0) for k in sorted(after) if after.get(k, 0) - before.get(k, 0)}


def _mean_batch(delta: dict[str, int]) -> float:
    runs = sum(delta.values())
    return round(sum(int(k) * v for k, v in delta.items()) / runs, 2) if runs else 0.0


def run(args: argparse.Namespace) -> int:
    from vla_accel.serve.client import RemotePolicy, batch_counts, stage_means_ms, stage_totals
    from vla_accel.serve.launch import start_policy_server
    from vla_accel.serve.repository import ServeConfig
    from vla_accel.serve.server import free_ports

    backend = (getattr(args, "backends", None) or ["onnxruntime"])[0]
    if backend == "torch" and len(getattr(args, "backends", [])) > 1:
        backend = args.backends[1]  # the bench default list starts with the torch baseline
    threads = threads_option(args, default=1)
    counts = sorted(set(args.remote_robots))
    seconds = args.remote_seconds or max(2.0, float(args.seconds))
    rate = float(args.remote_rate_hz)
    config = ServeConfig(model=args.model, backend=backend, max_batch=max(counts), max_queue_delay_us=args.remote_delay_us,
                         backend_options={"threads": threads})
    log(f"bench remote: starting the server ({args.model} on {backend}, max batch {max(counts)})")
    grpc_port, http_port, metrics_port = free_ports(3)
    server, names = start_policy_server(config, grpc_port=grpc_port, http_port=http_port,
                                        metrics_port=metrics_port, host="127.0.0.1")
    stats_client = RemotePolicy(server.grpc_url, names["policy"])
    report: dict[str, Any] = {
        "mode": "remote", "model": args.model, "backend": backend, "threads": threads, "rate_hz": rate,
        "seconds_per_phase": seconds, "frame": "640x480 rgb8", "max_queue_delay_us": args.remote_delay_us,
        "server": {"triton": "2.51 (nvidia-pytriton 0.7.0)", "max_batch": max(counts), "instances": 1},
        "machine": machine_info(), "rows": [],
    }
    pool = None
    try:
        log(f"bench remote: starting {max(counts)} robot processes")
        pool = RobotPool(max(counts), server.grpc_url, names["policy"], args.model, backend, threads)
        for n in counts:
            first = stats_client.statistics()
            remote = _summary(pool.run(n, "remote", rate, seconds), seconds)
            second = stats_client.statistics()
            delta = _batch_delta(batch_counts(first), batch_counts(second))
            local = _summary(pool.run(n, "local", rate, seconds), seconds)
            row = {"robots": n, "remote": remote, "local": local, "server_batches": delta,
                   "server_mean_batch": _mean_batch(delta),
                   "server_stage_ms": stage_means_ms(stage_totals(first), stage_totals(second))}
            report["rows"].append(row)
            log(f"  {n:>2} robots: remote {remote['throughput_fps']} chunks/s p50 {remote['p50_ms']} ms | local "
                f"{local['throughput_fps']} chunks/s p50 {local['p50_ms']} ms | server mean batch {row['server_mean_batch']}")
        n = max(counts)
        s0 = stats_client.statistics()
        sequential = _summary(pool.run(1, "remote", 0.0, seconds), seconds)
        s1 = stats_client.statistics()
        concurrent = _summary(pool.run(n, "remote", 0.0, seconds), seconds)
        s2 = stats_client.statistics()
        before, mid, after = batch_counts(s0), batch_counts(s1), batch_counts(s2)
        sequential["server_stage_ms"] = stage_means_ms(stage_totals(s0), stage_totals(s1))
        concurrent["server_stage_ms"] = stage_means_ms(stage_totals(s1), stage_totals(s2))
        one = report["rows"][0]
        report["overhead"] = {
            "robots": one["robots"],
            "remote_p50_ms": one["remote"]["p50_ms"], "local_p50_ms": one["local"]["p50_ms"],
            "round_trip_overhead_p50_ms": round(one["remote"]["p50_ms"] - one["local"]["p50_ms"], 3),
            "remote_over_local_p50": round(one["remote"]["p50_ms"] / one["local"]["p50_ms"], 3),
        }
        report["dynamic_batching"] = {
            "robots": n,
            "sequential": {**sequential, "server_batches": _batch_delta(before, mid)},
            "concurrent": {**concurrent, "server_batches": _batch_delta(mid, after),
                           "server_mean_batch": _mean_batch(_batch_delta(mid, after))},
            "throughput_gain": round(concurrent["throughput_fps"] / max(sequential["throughput_fps"], 1e-9), 3),
        }
    finally:
        if pool is not None:
            pool.close()
        stats_client.close()
        server.cleanup()
    rows = [[r["robots"], r["remote"]["throughput_fps"], r["local"]["throughput_fps"], r["remote"]["p50_ms"],
             r["remote"]["p99_ms"], r["local"]["p50_ms"], r["local"]["p99_ms"], r["server_mean_batch"],
             r["server_batches"]] for r in report["rows"]]
    print(format_rows(["robots", "remote/s", "local/s", "remote p50", "remote p99", "local p50", "local p99",
                       "mean batch", "batches formed"], rows))
    o, d = report["overhead"], report["dynamic_batching"]
    print(f"round-trip overhead (1 robot, p50): {o['remote_p50_ms']} - {o['local_p50_ms']} = "
          f"{o['round_trip_overhead_p50_ms']} ms ({o['remote_over_local_p50']}x)")
    print(f"dynamic batching: {d['robots']} robots back-to-back {d['concurrent']['throughput_fps']}/s vs sequential "
          f"{d['sequential']['throughput_fps']}/s = {d['throughput_gain']}x (mean batch "
          f"{d['concurrent']['server_mean_batch']})")
    write_json(args, report)
    return 0
