#!/usr/bin/env python3
"""Start `vla-accel demo` N times in a row, each on a fresh ROS_DOMAIN_ID, and print per run how many
action chunks arrived within 15 s of the graph being up (the first-run experience, repeated).

The window opens when the demo reports the node ready ("[demo] node ready after X s": model loaded,
backend warmed up, CPU baseline measured, subscriptions made) and the camera starts; the node's start-up
time before it is printed separately, since it depends on the machine (torch import, warm-up, baseline).

    .venv/bin/python scripts/demo_first_start.py            # 5 runs
    .venv/bin/python scripts/demo_first_start.py -n 3 --seconds 5

Run it where `vla-accel demo` runs (after ./run.sh setup, with .ros_build/env.sh sourced). Exit code 0
when every run had a chunk within the window. The count is read from the demo's own lines: "[chunk] #N"
(printed about once a second) and "[demo] first action chunk X s after start".
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

CHUNK_LINE = re.compile(r"^\[chunk\] #(\d+) ")
FIRST_LINE = re.compile(r"^\[demo\] first action chunk ([0-9.]+) s after start \(([0-9.]+) s after the camera")
READY_LINE = re.compile(r"^\[demo\] node ready after ([0-9.]+) s")


def one_run(domain_id: int, seconds: float, window_s: float, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "vla_accel.cli", "demo", "--seconds", str(seconds), "--domain-id", str(domain_id),
           *extra]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    in_window, first_s, ready_s, ready_at, tail = 0, None, None, None, []
    for line in proc.stdout:
        now = time.monotonic()
        tail = (tail + [line.rstrip()])[-15:]
        match = READY_LINE.match(line)
        if match:
            ready_s, ready_at = float(match.group(1)), now
        match = CHUNK_LINE.match(line)
        if match and ready_at is not None and now - ready_at <= window_s:
            in_window = max(in_window, int(match.group(1)))
        match = FIRST_LINE.match(line)
        if match:
            first_s = float(match.group(2))
    rc = proc.wait()
    return {"domain_id": domain_id, "rc": rc, "node_ready_s": ready_s, "first_chunk_s": first_s,
            "chunks_within_window": in_window, "wall_s": time.monotonic() - t0, "tail": tail}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="demo --seconds of each run (default: 5)")
    parser.add_argument("--window", type=float, default=15.0,
                        help="count chunks this long after the node is ready (default: 15)")
    parser.add_argument("--first-domain", type=int, default=None,
                        help="ROS_DOMAIN_ID of the first run (default: from the process id); +1 per run")
    parser.add_argument("demo_args", nargs="*", help="extra `vla-accel demo` arguments (after --)")
    args = parser.parse_args(argv)
    first = args.first_domain if args.first_domain is not None else 20 + os.getpid() % 150
    failures = 0
    for i in range(args.runs):
        result = one_run(first + i, args.seconds, args.window, args.demo_args)
        ok = result["rc"] == 0 and result["chunks_within_window"] > 0
        failures += not ok
        first_s = f"{result['first_chunk_s']:.1f} s" if result["first_chunk_s"] is not None else "never"
        ready_s = f"{result['node_ready_s']:.1f} s" if result["node_ready_s"] is not None else "never"
        print(f"run {i + 1}/{args.runs}: ROS_DOMAIN_ID={result['domain_id']} node ready {ready_s}, "
              f"first chunk {first_s} after the camera started, "
              f"{result['chunks_within_window']} chunks within {args.window:g} s, exit {result['rc']} "
              f"({'ok' if ok else 'FAILED'})", flush=True)
        if not ok:
            print("  " + "\n  ".join(result["tail"]), flush=True)
    print(f"{args.runs - failures} of {args.runs} runs had chunks within {args.window:g} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
