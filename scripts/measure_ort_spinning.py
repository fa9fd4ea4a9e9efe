#!/usr/bin/env python
"""Replay cost with ONNX Runtime's intra-op threads spinning or sleeping between runs, side by side.

    python scripts/measure_ort_spinning.py --out docs/measurements/cpu_replay_ort_spinning [--reps 3]

Writes a JPEG-primary (640x480) and the raw sample bag, then replays each with `onnxruntime` at its
default threads, alternating ``allow_spinning`` True / False / "during_run" (threads spin inside a run and sleep once
it returns; the order reversed every repetition), each
replay with its interleaved bare calls (docs/bags.md). Between two inferences a replay decodes and
preprocesses the next frame on the same cores; idle intra-op threads that busy-wait for the next run
take those cycles. OUT.json holds every replay's median round and the load average around it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix (.json)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--frames", type=int, default=120)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from vla_accel.bags.replay import ReplayOptions, replay_runtime, run_replay
    from vla_accel.bags.sample import make_sample_bag
    from vla_accel.core.machine import machine_description

    work = Path(tempfile.mkdtemp(prefix="ort_spinning_"))
    bags = {"jpeg": make_sample_bag(work / "jpeg", frames=args.frames, primary="jpeg", primary_size=(640, 480)).path,
            "raw": make_sample_bag(work / "raw", frames=args.frames).path}
    rows = []
    for rep in range(args.reps):
        order = (True, False, "during_run") if rep % 2 == 0 else ("during_run", False, True)
        for bag, path in bags.items():
            for spin in order:
                runtime = dataclasses.replace(replay_runtime(model="tiny"), backend_extra={"allow_spinning": spin})
                options = ReplayOptions(runtime=runtime, backends=("onnxruntime",), progress=False)
                load = os.getloadavg()[0]
                run = run_replay(path, options).runs[0]
                if not run.ok:
                    raise SystemExit(f"replay failed: {run.error}")
                median = run.median_round
                rows.append({"rep": rep, "bag": bag, "allow_spinning": spin, "bare_ms": median.bare_ms,
                             "replay_ms": median.replay_ms, "overhead_pct": run.overhead_pct,
                             "rounds_pct": [r.overhead_pct for r in run.rounds],
                             "load_avg_1min": [load, os.getloadavg()[0]]})
                print(f"{bag} spinning={spin}: bare {median.bare_ms:.2f} ms, replay {median.replay_ms:.2f} ms, "
                      f"on top of bare {run.overhead_pct:.1f} %", flush=True)
    summary = {}
    for bag in bags:
        for spin in (True, False, "during_run"):
            mine = sorted(r["overhead_pct"] for r in rows if r["bag"] == bag and r["allow_spinning"] == spin)
            replay = sorted(r["replay_ms"] for r in rows if r["bag"] == bag and r["allow_spinning"] == spin)
            summary[f"{bag} spinning={spin}"] = {"overhead_pct_median": mine[len(mine) // 2],
                                                 "replay_ms_median": replay[len(replay) // 2]}
    result = {"benchmark": "replay_ort_spinning", "machine": machine_description(), "model": "tiny",
              "backend": "onnxruntime", "threads": "runtime default", "frames": args.frames,
              "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "summary": summary, "replays": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
