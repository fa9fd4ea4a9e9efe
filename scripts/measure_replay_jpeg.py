#!/usr/bin/env python
"""Replay cost of JPEG input against bare inference: before / after, in one run, into one JSON.

    python scripts/measure_replay_jpeg.py --out docs/measurements/cpu_replay_jpeg \
        [--before-root DIR] [--threads 1] [--frames 120] [--rounds 3]

Writes a JPEG-primary sample bag (640x480, 4:2:0) and the raw sample bag, then replays, one after
another on the same machine: the JPEG bag with the code in ``--before-root`` (a checkout of an
earlier commit, e.g. ``git archive <commit> vla_accel msg | tar -x -C DIR``; skipped without it),
the JPEG bag with this checkout for both ``jpeg_reduced_decode`` settings side by side, in turn on
one thread (``--read-ahead 0``) and with the replay's read-ahead, and the raw bag both ways. Each replay is `vla-accel replay` with its interleaved bare calls
(docs/bags.md); OUT.json holds every report plus the load average around each replay, OUT.md a
summary table. Timings on a shared machine are noisy: compare the rows of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ("import sys; sys.path.insert(0, {root!r}); import vla_accel; "
          "from vla_accel.cli import main; sys.exit(main(sys.argv[1:]))")


def replay(root: Path, args: list[str], out: Path) -> dict:
    """`vla-accel replay ARGS --out OUT` with the code under ``root``; its report.json plus the load."""
    load_before = os.getloadavg()[0]
    started = time.time()
    cmd = [sys.executable, "-c", RUNNER.format(root=str(root)), "replay", *args, "--out", str(out), "--no-progress",
           "--no-plots"]
    proc = subprocess.run(cmd, cwd=tempfile.gettempdir(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"replay failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    report["code"] = str(root)
    report["arguments"] = args
    report["load_avg_1min"] = [load_before, os.getloadavg()[0]]
    report["seconds"] = time.time() - started
    return report


def summary_rows(label: str, report: dict) -> list[dict]:
    rows = []
    for b in report["backends"]:
        if "error" in b:
            continue
        rows.append({"code": label, "backend": b["backend"], "decode": b.get("jpeg_reduced_decode"),
                     "decode_paths": b.get("decode_paths", {}), "bare_ms": b["bare_ms_per_chunk"],
                     "replay_ms": b["replay_ms_per_chunk"], "overhead_pct": b["overhead_pct"],
                     "rounds_pct": [r["overhead_pct"] for r in b["timing_rounds"]],
                     "preprocess_p50_ms": b["preprocess_p50_ms"]})
    return rows


def markdown(result: dict) -> str:
    lines = [
        "# Replay cost of JPEG input against bare inference",
        "",
        f"- machine: {result['machine']}; threads: {result['threads']}; generated {result['generated']}",
        f"- bags: JPEG primary {result['jpeg_size']} (4:2:0, quality 90), {result['frames']} frames; raw sample bag "
        f"(rgb8 / bgr8 / mono8 frames up to 640x480); model `tiny` (128x128 input)",
        "- `on top of bare`: replay time per chunk (bag read, decode, preprocess, inference, postprocess) over the "
        "bare `backend.infer` calls interleaved with it, median of the rounds (docs/bags.md)",
        "",
        "| code | bag | backend | JPEG decode | bare ms/chunk | replay ms/chunk | preprocess p50 ms | on top of bare | "
        "rounds | load (1 min) |",
        "|---|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for name, report in result["replays"].items():
        bag = "raw" if name.startswith("raw") else "JPEG"
        code = {"before": "before", "in_turn": "in turn", "raw_in_turn": "in turn"}.get(
            name, f"read-ahead {result.get('read_ahead', '')}".strip())
        load = "-".join(f"{v:.1f}" for v in report["load_avg_1min"])
        for row in summary_rows(code, report):
            if bag == "raw":
                decode = "(raw frames)"
            elif name == "before":
                decode = "before: libjpeg scale for >= 2x the input"
            else:
                decode = "reduced" if row["decode"] else "full"
                paths = ", ".join(row["decode_paths"])
                decode += f" ({paths})" if paths else ""
            lines.append(
                f"| {code} | {bag} | {row['backend']} | {decode} | {row['bare_ms']:.2f} | {row['replay_ms']:.2f} | "
                f"{row['preprocess_p50_ms']:.2f} | {row['overhead_pct']:.1f} % | "
                f"{', '.join(f'{v:.1f}' for v in row['rounds_pct'])} | {load} |")
    after = result["replays"].get("after")
    if after and after.get("deviation"):
        lines += ["", "Action deviation (max |Δ| in action units, 117 chunks matched by stamp) from "
                  f"`{after['backends'][0]['backend']}`:", ""]
        lines += [f"- `{name}`: max {dev['max_abs']:.3g}, mean {dev['mean_abs']:.3g} (worst: step {dev['step']}, "
                  f"{dev['dim_name']})" for name, dev in after["deviation"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix (.json and .md)")
    parser.add_argument("--before-root", type=Path, help="checkout of the earlier code to compare with")
    parser.add_argument("--backends", default="torch,onnxruntime")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = runtime default)")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jpeg-size", default="640x480")
    parser.add_argument("--read-ahead", type=int, default=4, help="read-ahead depth of the `after` / `raw` rows")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from vla_accel.bags.sample import make_sample_bag
    from vla_accel.core.machine import machine_description

    width, height = (int(v) for v in args.jpeg_size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="replay_jpeg_"))
    make_sample_bag(work / "jpeg", frames=args.frames, primary="jpeg", primary_size=(width, height))
    make_sample_bag(work / "raw", frames=args.frames)
    common = ["--backends", args.backends, "--timing-rounds", str(args.rounds), "--threads", str(args.threads)]
    replays = {}
    if args.before_root:
        replays["before"] = replay(args.before_root.resolve(), [str(work / "jpeg"), *common], work / "before")
    # this checkout in turn (one thread) and with the read-ahead (the replay default), one after another
    replays["in_turn"] = replay(ROOT, [str(work / "jpeg"), *common, "--jpeg-reduced-decode", "both", "--read-ahead", "0"],
                                work / "in_turn")
    replays["after"] = replay(ROOT, [str(work / "jpeg"), *common, "--jpeg-reduced-decode", "both",
                                     "--read-ahead", str(args.read_ahead)], work / "after")
    replays["raw_in_turn"] = replay(ROOT, [str(work / "raw"), *common, "--read-ahead", "0"], work / "raw_in_turn")
    replays["raw"] = replay(ROOT, [str(work / "raw"), *common, "--read-ahead", str(args.read_ahead)], work / "raw_out")
    result = {"benchmark": "replay_jpeg", "machine": machine_description(), "threads": args.threads,
              "frames": args.frames, "jpeg_size": args.jpeg_size, "read_ahead": args.read_ahead,
              "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "replays": replays}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
