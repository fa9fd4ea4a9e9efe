#!/usr/bin/env python3
"""`vla-accel bench node` for this checkout and an earlier commit, side by side in one run.

    python scripts/bench_node_vs_commit.py --commit 7100247 --rounds 4 --backends torch,onnxruntime \\
        --json docs/measurements/cpu_node_overhead_vs_7100247.json

The earlier commit is checked out into a temporary git worktree (removed at the end) and its node
runs on the same Python environment and the same generated messages (its msg/ must be a subset of
this checkout's: fields only ever appended). Only the node process comes from the checkout under
test: the synthetic camera and the receiving side (vla_accel.benchmarks.node.measure) are this
checkout's, with the same node parameters, so the two runs differ in the node's code alone.

Rounds alternate which checkout goes first (old/new, new/old, ...) and run every backend of both
within the round, so load from other processes falls on both alike; the ratio new / old of the node
overhead p50 is reported per round and as the median over rounds, with the load average around
every run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vla_accel.benchmarks.node import measure  # noqa: E402
from vla_accel.core.machine import load_average_1min, machine_info  # noqa: E402
from vla_accel.errors import VlaAccelError  # noqa: E402

FIGURES = ("node_overhead_p50_ms", "node_overhead_p99_ms", "inference_p50_ms", "total_p50_ms",
           "end_to_end_p50_ms", "chunks_per_s")


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def msg_is_compatible(commit: str) -> str:
    """'' when the commit's messages are this checkout's or a prefix of them (fields appended only),
    else why not: its node would then need its own message build."""
    for path in git("ls-tree", "--name-only", commit, "msg/").split():
        old = git("show", f"{commit}:{path}").splitlines()
        new_file = ROOT / path
        if not new_file.exists():
            return f"{path} no longer exists here"
        new = new_file.read_text(encoding="utf-8").splitlines()
        if new[:len(old)] != old:
            return f"{path} changed other than by appended fields"
    return ""


def measure_in_child(source: Path, backend: str, args: argparse.Namespace) -> dict:
    """One node run in a child process of this script (a fresh ROS context each time), killed when
    it outlives the start-up timeout plus the window."""
    cmd = [sys.executable, __file__, "--one", str(source), "--backends", backend, "--model", args.model,
           "--seconds", str(args.seconds), "--rate", str(args.rate), "--threads", str(args.threads),
           "--transport", args.transport, "--speedup-baseline", args.speedup_baseline,
           "--startup-timeout", str(args.startup_timeout)]
    limit = args.startup_timeout + args.seconds + 90
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired as exc:
        raise VlaAccelError(f"the run did not finish within {limit:.0f} s", reason="node_timeout") from exc
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise VlaAccelError(f"the run failed (exit {done.returncode}): {done.stderr[-1500:]}", reason="node_failed")
    return json.loads(lines[-1])


def run_one(label: str, source: Path, backend: str, args: argparse.Namespace) -> dict:
    load_before = load_average_1min()
    t0 = time.monotonic()
    result = measure_in_child(source, backend, args)
    result.update(checkout=label, load_average_1min_before=load_before,
                  load_average_1min_after=load_average_1min(), wall_s=round(time.monotonic() - t0, 1))
    print(f"  {label:<4} {backend:<12} overhead p50 {result['node_overhead_p50_ms']:.2f} ms, "
          f"p99 {result['node_overhead_p99_ms']:.2f} ms, infer p50 {result['inference_p50_ms']:.2f} ms, "
          f"{result['chunks_per_s']:.1f} chunks/s, load {load_before:.2f} -> {result['load_average_1min_after']:.2f}",
          flush=True)
    return result


def summarise(runs: list[dict], backends: list[str], rounds: int) -> dict:
    summary = {}
    for backend in backends:
        per_round = []
        for r in range(rounds):
            pair = {x["checkout"]: x for x in runs if x["backend"] == backend and x["round"] == r}
            if {"old", "new"} <= pair.keys():
                old, new = pair["old"]["node_overhead_p50_ms"], pair["new"]["node_overhead_p50_ms"]
                per_round.append({"round": r, "old_ms": old, "new_ms": new,
                                  "ratio_new_over_old": new / old if old > 0 else None})
        olds = [p["old_ms"] for p in per_round]
        news = [p["new_ms"] for p in per_round]
        ratios = [p["ratio_new_over_old"] for p in per_round if p["ratio_new_over_old"] is not None]
        summary[backend] = {
            "rounds": per_round,
            "old_overhead_p50_ms_median": statistics.median(olds) if olds else None,
            "new_overhead_p50_ms_median": statistics.median(news) if news else None,
            "ratio_new_over_old_median": statistics.median(ratios) if ratios else None,
            "rounds_new_not_worse": sum(1 for x in ratios if x <= 1.0),
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commit", default="7100247", help="the earlier commit (default: 7100247)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="torch,onnxruntime")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per run (default: 10)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera frames per second (default: 30)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--transport", default="LARGE_DATA", help="FASTDDS_BUILTIN_TRANSPORTS (default: LARGE_DATA)")
    parser.add_argument("--speedup-baseline", default="measure", choices=("measure", "cache", "none"),
                        help="the nodes' speedup_baseline parameter (default: measure, as `bench node` runs it)")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--old-checkout", type=Path, default=None,
                        help="use this existing checkout of --commit instead of a temporary worktree")
    parser.add_argument("--json", dest="json_path", type=Path, default=None)
    parser.add_argument("--one", type=Path, default=None, help=argparse.SUPPRESS)  # one run, JSON on stdout
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.one is not None:
        result = measure(model=args.model, backend=backends[0], transport=args.transport, seconds=args.seconds,
                         rate=args.rate, width=640, height=480, threads=args.threads,
                         startup_timeout=args.startup_timeout, speedup_baseline=args.speedup_baseline,
                         node_source=str(args.one))
        print(json.dumps(result))
        return 0
    commit = git("rev-parse", args.commit)
    problem = msg_is_compatible(commit)
    if problem:
        print(f"{args.commit}: {problem}: its node needs its own message build", file=sys.stderr)
        return 2
    head = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    tmp = None
    old_source = args.old_checkout
    if old_source is None:
        tmp = tempfile.mkdtemp(prefix="vla_accel_old_")
        git("worktree", "add", "--detach", tmp, commit)
        old_source = Path(tmp)
    sources = {"old": old_source.resolve(), "new": ROOT}
    info = {"machine": machine_info(), "load_average_1min_start": load_average_1min(),
            "old_commit": commit, "new_commit": head, "new_has_uncommitted_changes": dirty,
            "model": args.model, "backends": backends, "rounds": args.rounds, "seconds": args.seconds,
            "rate_hz": args.rate, "transport": args.transport, "speedup_baseline": args.speedup_baseline,
            "image": "640x480 rgb8", "executor": "events",
            "method": "node overhead p50 read from each node's /diagnostics (vla-accel bench node's measure); "
                      "the node process runs the named checkout, camera and receiver are the current one; "
                      "rounds alternate old/new order"}
    runs: list[dict] = []
    try:
        for r in range(args.rounds):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            print(f"round {r + 1}/{args.rounds} ({' then '.join(order)})", flush=True)
            for backend in backends:
                for label in order:
                    try:
                        result = run_one(label, sources[label], backend, args)
                    except VlaAccelError as exc:
                        print(f"  {label} {backend}: failed: {exc}", file=sys.stderr)
                        continue
                    result["round"] = r
                    runs.append(result)
    finally:
        if tmp is not None:
            subprocess.run(["git", "worktree", "remove", "--force", tmp], cwd=ROOT, check=False)
    info["load_average_1min_end"] = load_average_1min()
    summary = summarise(runs, backends, args.rounds)
    print(f"\nnode overhead p50 (ms), {args.commit} (old) vs this checkout (new), median over rounds; "
          "ratio = new / old per round")
    print(f"{'backend':<13}{'old':>8}{'new':>8}{'ratio':>8}  per-round ratios")
    for backend, s in summary.items():
        ratios = ", ".join(f"{p['ratio_new_over_old']:.2f}" for p in s["rounds"] if p["ratio_new_over_old"])
        if s["old_overhead_p50_ms_median"] is None:
            print(f"{backend:<13} no complete round")
            continue
        print(f"{backend:<13}{s['old_overhead_p50_ms_median']:>8.2f}{s['new_overhead_p50_ms_median']:>8.2f}"
              f"{s['ratio_new_over_old_median']:>8.2f}  {ratios}")
    if args.json_path is not None:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        slim = [{k: r[k] for k in ("round", "checkout", "backend", *FIGURES, "frames_dropped",
                                   "load_average_1min_before", "load_average_1min_after", "wall_s") if k in r}
                for r in runs]
        args.json_path.write_text(json.dumps({**info, "summary": summary, "runs": slim}, indent=2) + "\n",
                                  encoding="utf-8")
        print(f"wrote {args.json_path}", file=sys.stderr)
    return 0 if runs and all(s["old_overhead_p50_ms_median"] is not None for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
