"""``vla-accel bench lerobot``: an imported LeRobot policy on vla_accel's backends against LeRobot's
own policy in eager mode (the baseline), side by side in one process.

    vla-accel bench lerobot --checkpoint CKPT/pretrained_model --model IMPORTED/spec.yaml \\
        --backends onnxruntime,openvino --batch 1 --json out.json

Every variant gets the same normalised inputs, made by LeRobot's own preprocessor from seeded raw
observations: LeRobot eager (``policy.predict_action_chunk``, torch fp32), then each backend on the
imported graph (onnxruntime fp32, openvino fp32 and, where the CPU has it, openvino bf16). Timed calls
are interleaved (one call per variant per round, the order rotating) so load from other processes
falls on every variant alike. Per variant: latency percentiles (``core.metrics``), speedup over LeRobot
eager on p50, the largest absolute difference of the (normalised) action chunk from LeRobot's, and the
precision the runtime reports it actually runs (OpenVINO runs bf16 only on CPUs with AVX512-BF16 / AMX;
elsewhere its bf16 request runs f32 and the row says so).
Needs LeRobot (runs in .venv-lerobot: ``./run.sh vla-accel`` does not have it; use
``.venv-lerobot/bin/vla-accel bench lerobot ...``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vla_accel.benchmarks.common import format_rows, machine_info, write_json
from vla_accel.errors import VlaAccelError

BASELINE = "lerobot-eager"


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="lerobot mode: the LeRobot pretrained_model/ folder the --model spec was imported from")
    parser.add_argument("--no-bf16", action="store_true", help="lerobot mode: skip the openvino bf16 row")


def _variants(backends: list[str], bf16: bool) -> list[tuple[str, str, str]]:
    out = []
    for name in backends:
        if name in ("torch", BASELINE):
            continue
        out.append((f"{name}-fp32", name, "fp32"))
        if name == "openvino" and bf16:
            out.append(("openvino-bf16", name, "bf16"))
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from vla_accel.backends.base import BackendOptions
    from vla_accel.backends.registry import create_backend
    from vla_accel.core import metrics
    from vla_accel.importers.lerobot import input_name, load_checkpoint, raw_observations
    from vla_accel.models import load_model

    if args.checkpoint is None:
        raise VlaAccelError("bench lerobot needs --checkpoint (the LeRobot folder the --model spec came from)",
                            reason="bad_option")
    ckpt = load_checkpoint(args.checkpoint)
    bundle = load_model(args.model)
    threads = int(args.threads or 0)
    if threads:
        torch.set_num_threads(threads)
    backends = [b for b in (args.backends or []) if b != "torch"] or ["onnxruntime", "openvino"]
    report: dict[str, Any] = {"mode": "lerobot", "checkpoint": str(args.checkpoint), "model": str(args.model),
                              "policy": ckpt.type, "baseline": BASELINE, "machine": machine_info(),
                              "parameters": int(sum(p.numel() for p in ckpt.policy.parameters())),
                              "torch_threads": torch.get_num_threads(), "results": []}
    for batch in args.batch:
        observations = raw_observations(ckpt, batch, args.seed)
        # LeRobot's preprocessor makes the normalised inputs every variant gets.
        raw: dict[str, Any] = {}
        for key in ckpt.image_keys:
            frames = np.stack([o[key] for o in observations]).astype(np.float32) / 255.0
            raw[key] = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
        if "observation.state" in ckpt.config.input_features:
            raw["observation.state"] = torch.from_numpy(np.stack([o["observation.state"] for o in observations]))
        with torch.no_grad():
            normalised = ckpt.preprocessor(raw)
        feeds = {input_name(k): normalised[k].detach().cpu().numpy().astype(np.float32)
                 for k in [*ckpt.image_keys, "observation.state"] if k in normalised}

        def lerobot_call() -> np.ndarray:
            with torch.no_grad():
                return ckpt.policy.predict_action_chunk(normalised).numpy()

        calls: dict[str, Callable[[], np.ndarray]] = {BASELINE: lerobot_call}
        loaded = []
        skipped: dict[str, str] = {}
        devices: dict[str, dict] = {BASELINE: {"device": "cpu", "precision": "fp32",
                                               "parallel_units": torch.get_num_threads()}}
        for label, name, precision in _variants(backends, not args.no_bf16):
            # Interleaved calls need idle runtimes to leave the cores alone: ONNX Runtime's threads
            # busy-wait between runs by default, which slows whatever runs next (see commands/bench.py).
            extra = {"allow_spinning": False} if name == "onnxruntime" else {}
            try:
                be = create_backend(name, bundle, BackendOptions(threads=threads, max_batch=batch,
                                                                 precision=precision, extra=extra)).load()
            except VlaAccelError as exc:
                skipped[label] = str(exc)
                continue
            loaded.append(be)
            info = be.device_info()
            devices[label] = {"device": info.device, "precision": info.precision,
                              "parallel_units": info.parallel_units}
            output = bundle.spec.action.output
            calls[label] = (lambda be=be, output=output: be.infer(feeds)[output])
        try:
            reference = lerobot_call()
            diffs = {label: float(np.max(np.abs(np.asarray(call(), dtype=np.float64) - reference)))
                     for label, call in calls.items()}
            for _ in range(max(1, args.warmup)):
                for call in calls.values():
                    call()
            samples: dict[str, list[float]] = {label: [] for label in calls}
            labels = list(calls)
            deadline = time.perf_counter() + float(args.seconds)
            rounds = 0
            while (args.iters and rounds < args.iters) or (not args.iters and time.perf_counter() < deadline) \
                    or rounds < 3:
                order = labels[rounds % len(labels):] + labels[:rounds % len(labels)]
                for label in order:
                    t0 = time.perf_counter()
                    calls[label]()
                    samples[label].append((time.perf_counter() - t0) * 1e3)
                rounds += 1
        finally:
            for be in loaded:
                be.close()
        base = metrics.percentiles(samples[BASELINE])
        for label in labels:
            stats = metrics.percentiles(samples[label])
            report["results"].append({
                "variant": label, "batch": batch, "calls": len(samples[label]), "latency_ms": stats,
                "throughput_per_s": metrics.throughput(batch * len(samples[label]), sum(samples[label]) / 1e3),
                "speedup_vs_lerobot_eager": metrics.speedup(base["p50"], stats["p50"]),
                "max_abs_diff_vs_lerobot": diffs[label], **devices.get(label, {}),
            })
        for label, why in skipped.items():
            report["results"].append({"variant": label, "batch": batch, "skipped": why})
    rows = [(r["variant"], r["batch"], "skipped", "", "", r["skipped"][:60], 0) if "skipped" in r else
            (r["variant"], r["batch"], f"{r['latency_ms']['p50']:.2f}", f"{r['latency_ms']['p90']:.2f}",
             f"{r['speedup_vs_lerobot_eager']:.2f}x", f"{r['max_abs_diff_vs_lerobot']:.2e}", r["calls"])
            for r in report["results"]]
    print(format_rows(("variant", "batch", "p50 ms", "p90 ms", "speedup", "max|Δ| vs LeRobot", "calls"), rows))
    write_json(args, report)
    return 0
