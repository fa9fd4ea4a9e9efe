"""``vla-accel bench [MODE]``: benchmarks. The default mode, ``backends``, compares inference backends
side by side in one process on one model:

    vla-accel bench --model tiny --backends torch,onnxruntime,openvino --batch 1,8 --json out.json

For each batch size every backend gets the same inputs; after a warm-up, timed calls are interleaved
(one call per backend per round, rotating who goes first) so that load from other processes on a
noisy machine falls on every backend alike. Interleaving needs idle runtimes to leave the cores
alone: ONNX Runtime's intra-op threads busy-wait between runs by default, which made torch 10-25x
slower in this benchmark on 2 cores, so interleaved runs turn that spinning off
(``allow_spinning``). ``--schedule blocked`` instead times each backend alone, one after the other,
with every runtime at its own defaults. Per (backend, batch) it reports latency percentiles of
the backend call, throughput (samples/s), speedup over torch eager fp32 CPU at the same batch
(S = T_torch / T_backend on p50), parallel efficiency E = S / P (P = threads in use) and the largest
absolute difference from torch's output on the same inputs. Every statistic comes from
``vla_accel.core.metrics``. OpenVINO also gets a row at its default precision (bf16 on CPUs with
AVX512-BF16 / AMX) and ONNX Runtime one at int8 (dynamic quantisation), reported separately from the
fp32 rows; their max|diff| shows what the precision costs.

Policy programs (flow matching, diffusion, autoregressive) get the same seeded start noise on every
backend (so max|diff| is a parity check), per-stage columns (prefix, mean step, total of the
program) and the chunk rate, and, at the first batch size, the program run with its prefix
recomputed before every step, measured side by side against the prefix computed once per chunk. A
batch size a backend cannot take (e.g. a graph exported with a fixed batch it cannot be padded to)
is skipped for that backend with the reason, keeping every result already measured.

Other modes (pipeline, batching, memory, realtime, node, gpu, ...) live in
``vla_accel.benchmarks.<mode>`` modules with ``add_arguments(parser)`` and ``run(args)``; this
command adds the common options (--model, --backends/--backend, --batch, --warmup, --iters,
--seconds, --threads, --json; --batch and --backends parse to lists) and lets each mode module add
its own.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_accel.backends.registry import BASELINE_BACKEND
from vla_accel.errors import VlaAccelError

DEFAULT_MODE = "backends"
KNOWN_MODES = ("backends", "pipeline", "batching", "memory", "realtime", "node")
DEFAULT_BACKENDS = ("torch", "onnxruntime", "openvino")


def int_list(text: str) -> list[int]:
    """"1,8,16" -> [1, 8, 16] (positive integers)."""
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    """"torch, onnxruntime" -> ["torch", "onnxruntime"]."""
    values = [part.strip() for part in str(text).split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one name")
    return values


def available_modes() -> list[str]:
    """The known modes plus any module in vla_accel.benchmarks that has a ``run`` (helper modules
    such as a shared ``common`` are not modes)."""
    modes = list(KNOWN_MODES)
    try:
        package = importlib.import_module("vla_accel.benchmarks")
    except ImportError:
        return modes
    for info in pkgutil.iter_modules(getattr(package, "__path__", [])):
        if info.name.startswith("_") or info.name in modes:
            continue
        try:
            module = importlib.import_module(f"vla_accel.benchmarks.{info.name}")
        except ImportError:
            continue  # a mode whose own dependencies are missing is simply not offered
        if callable(getattr(module, "run", None)):
            modes.append(info.name)
    return modes


class _FirstDefinitionWins:
    """Parser proxy for mode modules: an option string already defined (the common ones here, or
    another mode's) is skipped instead of raising argparse's conflict error."""

    def __init__(self, parser: argparse.ArgumentParser):
        self._parser = parser

    def add_argument(self, *names: str, **kwargs: Any):
        if any(name in self._parser._option_string_actions for name in names if name.startswith("-")):  # noqa: SLF001
            return None
        return self._parser.add_argument(*names, **kwargs)

    def __getattr__(self, attribute: str):
        return getattr(self._parser, attribute)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("mode", nargs="?", default=DEFAULT_MODE, choices=available_modes(),
                        help=f"what to benchmark (default: {DEFAULT_MODE})")
    parser.add_argument("--model", default="tiny", help="built-in model name or spec YAML path (default: tiny)")
    parser.add_argument("--backends", "--backend", dest="backends", type=name_list, default=list(DEFAULT_BACKENDS),
                        help="comma-separated backends (default: torch,onnxruntime,openvino); torch, the "
                             "baseline, is always added first (for a ready model file the first backend "
                             "listed is the baseline)")
    parser.add_argument("--batch", type=int_list, default=[1, 8, 16, 32],
                        help="comma-separated batch sizes (default: 1,8,16,32, the sweep of the seed documents)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per backend and batch (default: 5)")
    parser.add_argument("--iters", type=int, default=0,
                        help="timed calls per backend and batch (default: run for --seconds instead)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="timed seconds per backend and batch when --iters is not given (default: 2)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for every backend (0 = runtime default)")
    parser.add_argument("--json", dest="json_path", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--no-openvino-default", action="store_true",
                        help="skip the extra openvino row at OpenVINO's default precision")
    parser.add_argument("--no-onnxruntime-int8", action="store_true",
                        help="skip the extra onnxruntime row with int8 dynamic quantisation")
    parser.add_argument("--seed", type=int, default=7, help="seed of the example inputs (default: 7)")
    parser.add_argument("--block", type=int, default=4,
                        help="interleaved schedule: timed calls per backend per turn, after one untimed call "
                             "that re-warms caches (default: 4; 1 = strict call-by-call alternation)")
    parser.add_argument("--schedule", choices=("interleaved", "blocked"), default="interleaved",
                        help="interleaved (default): one call per backend per round; blocked: each backend's "
                             "timed calls in one block, runtimes at their defaults (ORT threads spin)")
    parser.add_argument("--jpeg-reduced-decode", choices=("on", "off"), default=None,
                        help="JPEG input frames: decode at a reduced DCT scale covering the model input (on) or at "
                             "full size (off); default: the node's default (off). Reports name the decode path")
    proxy = _FirstDefinitionWins(parser)
    for mode in available_modes():
        if mode == DEFAULT_MODE:
            continue
        try:
            module = importlib.import_module(f"vla_accel.benchmarks.{mode}")
        except ImportError:
            continue  # that mode's module is not there (yet): its name still parses, run() explains
        extend = getattr(module, "add_arguments", None)
        if extend is not None:
            extend(proxy)


def run(args: argparse.Namespace) -> int:
    mode = getattr(args, "mode", DEFAULT_MODE) or DEFAULT_MODE
    if mode != DEFAULT_MODE:
        try:
            module = importlib.import_module(f"vla_accel.benchmarks.{mode}")
        except ModuleNotFoundError as exc:
            if exc.name != f"vla_accel.benchmarks.{mode}" and exc.name != "vla_accel.benchmarks":
                raise
            raise VlaAccelError(
                f"bench mode '{mode}' is not available in this build (module vla_accel.benchmarks.{mode} "
                "is missing)", reason="unknown_mode"
            ) from exc
        return int(module.run(args) or 0)
    report = run_backends(
        model=args.model,
        backends=args.backends,
        batches=args.batch,
        warmup=args.warmup,
        iters=args.iters,
        seconds=args.seconds,
        threads=args.threads,
        openvino_default=not args.no_openvino_default,
        seed=args.seed,
        schedule=args.schedule,
        block=args.block,
        onnxruntime_int8=not args.no_onnxruntime_int8,
    )
    print(format_table(report))
    if args.json_path is not None:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"wrote {args.json_path}", file=sys.stderr)
    return 0


# --- the backends benchmark ---------------------------------------------------------------------
@dataclass
class Variant:
    """One row group: a backend at one precision."""

    label: str
    backend_name: str
    precision: str
    backend: Any = None
    device: Any = None
    error: str = ""
    samples_ms: dict[int, list[float]] = field(default_factory=dict)
    max_abs_diff: dict[int, float] = field(default_factory=dict)
    stages_ms: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)


def _variants(backends: list[str], openvino_default: bool, torch_baseline: bool = True,
              onnxruntime_int8: bool = True) -> list[Variant]:
    from vla_accel.backends.registry import canonical_name

    names = [canonical_name(n) for n in backends]
    if torch_baseline:
        # speedup needs the baseline in the same run, first
        names = [BASELINE_BACKEND] + [n for n in names if n != BASELINE_BACKEND]
    out: list[Variant] = []
    for name in dict.fromkeys(names):
        out.append(Variant(name, name, "fp32"))
        if name == "openvino" and openvino_default:
            out.append(Variant("openvino-default", name, "default"))
        if name == "onnxruntime" and onnxruntime_int8:
            out.append(Variant("onnxruntime-int8", name, "int8"))
    return out


def run_backends(*, model: str, backends: list[str], batches: list[int], warmup: int = 5, iters: int = 0,
                 seconds: float = 2.0, threads: int = 0, openvino_default: bool = True, seed: int = 7,
                 schedule: str = "interleaved", block: int = 4, onnxruntime_int8: bool = True,
                 log=None) -> dict[str, Any]:
    """Run the side-by-side benchmark and return the report (what ``--json`` writes)."""
    from vla_accel.backends.base import BackendOptions
    from vla_accel.core.spec import example_inputs
    from vla_accel.backends.registry import create_backend
    from vla_accel.core.machine import machine_info
    from vla_accel.core import metrics
    from vla_accel.errors import BackendError
    from vla_accel.models import load_model

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if warmup < 0 or iters < 0 or seconds <= 0:
        raise VlaAccelError("--warmup and --iters must be >= 0 and --seconds > 0", reason="bad_option")
    if schedule not in ("interleaved", "blocked"):
        raise VlaAccelError(f"schedule must be interleaved or blocked, got {schedule!r}", reason="bad_option")
    interleaved = schedule == "interleaved"
    if block < 1:
        raise VlaAccelError(f"--block must be >= 1, got {block}", reason="bad_option")
    bundle = load_model(model)
    # A ready model file (user ONNX / OpenVINO IR) has no torch network: the first backend listed
    # is then the baseline, and the report says so.
    # onnxruntime's int8 row quantises one graph; programs run their graphs in fp32
    variants = _variants(backends, openvino_default, torch_baseline=bundle.has_torch_network,
                         onnxruntime_int8=onnxruntime_int8 and not bundle.is_program)
    max_batch = max(batches)
    try:
        for variant in variants:
            extra = {"allow_spinning": False} if interleaved and variant.backend_name == "onnxruntime" else {}
            options = BackendOptions(precision=variant.precision, threads=threads, max_batch=max_batch, extra=extra)
            started = time.perf_counter()
            try:
                variant.backend = create_backend(variant.backend_name, bundle, options).load()
                variant.device = variant.backend.device_info()
            except BackendError as exc:  # includes BackendUnavailableError: the row says why
                variant.error = str(exc)
                if variant is variants[0]:
                    raise
                log(f"[bench] {variant.label}: not run: {exc}")
                continue
            log(f"[bench] loaded {variant.label} ({variant.device.runtime_version}, precision "
                f"{variant.device.precision}, {variant.device.parallel_units} threads) in "
                f"{time.perf_counter() - started:.1f}s")
        runnable = [v for v in variants if v.backend is not None]
        if not runnable:
            raise VlaAccelError("no backend could be loaded", reason="no_backend")
        load_before = _load_average()
        baseline = runnable[0]
        from vla_accel.errors import InputError

        prefix_cache: dict[str, Any] = {}
        for batch in batches:
            inputs = example_inputs(bundle.spec, batch, seed=seed)
            if bundle.is_program:  # the same start noise on every backend: outputs comparable
                from vla_accel.core.program import call_noise

                inputs[bundle.spec.program.noise] = call_noise(seed, 0, (batch, bundle.spec.action.steps,
                                                                         bundle.spec.action.dims))
            output_name = bundle.spec.action.output
            try:
                reference = baseline.backend.infer(inputs)[output_name]
            except (InputError, BackendError) as exc:
                for variant in runnable:
                    variant.skipped[batch] = f"the baseline cannot take batch {batch}: {exc}"
                log(f"[bench] batch {batch}: skipped: {exc}")
                continue
            timed = []
            for variant in runnable:
                result = None
                try:
                    for _ in range(max(warmup, 1)):
                        result = variant.backend.infer(inputs)[output_name]
                except (InputError, BackendError) as exc:
                    variant.skipped[batch] = str(exc)
                    log(f"[bench] {variant.label} batch {batch}: skipped: {exc}")
                    continue
                variant.max_abs_diff[batch] = float(np.max(np.abs(result - reference)))
                variant.samples_ms[batch] = []
                variant.stages_ms[batch] = {}
                timed.append(variant)
            log(f"[bench] batch {batch}: timing {len(timed)} backends "
                f"({'%d calls' % iters if iters else '%.1fs' % seconds} each, {schedule})")
            if interleaved:
                _time_interleaved(timed, inputs, batch, iters, seconds, block)
            else:
                for variant in timed:
                    _time_interleaved([variant], inputs, batch, iters, seconds)
            if bundle.is_program and not prefix_cache and bundle.spec.program.prefix is not None \
                    and bundle.spec.program.kind != "autoregressive":
                prefix_cache = _time_prefix_recompute(timed, inputs, batch, iters, seconds, block, log)
        rows = []
        for batch in batches:
            if batch not in baseline.samples_ms:
                rows.append({"backend": baseline.backend_name, "variant": baseline.label, "batch": batch,
                             "precision": baseline.precision, "error": baseline.skipped.get(batch, "not run")})
                continue
            baseline_stats = metrics.percentiles(baseline.samples_ms[batch])
            torch_p50, torch_min = baseline_stats["p50"], baseline_stats["min"]
            for variant in variants:
                row: dict[str, Any] = {"backend": variant.backend_name, "variant": variant.label, "batch": batch}
                if variant.backend is None or batch not in variant.samples_ms:
                    reason = variant.error or f"skipped: {variant.skipped.get(batch, 'not run')}"
                    row.update({"precision": variant.precision, "error": reason})
                    rows.append(row)
                    continue
                samples = variant.samples_ms[batch]
                stats = metrics.percentiles(samples)
                s = metrics.speedup(torch_p50, stats["p50"])
                row.update(
                    {
                        "precision": variant.device.precision,
                        "requested_precision": variant.precision,
                        "device": variant.device.device,
                        "parallel_units": variant.device.parallel_units,
                        "runtime_version": variant.device.runtime_version,
                        "iterations": len(samples),
                        "latency_ms": {k: v for k, v in stats.items() if k != "count"},
                        "throughput_sps": metrics.throughput(batch * len(samples), sum(samples) / 1e3),
                        "speedup_vs_torch": s,
                        # best case of each side: close to what a quiet machine gives when others load it
                        "speedup_vs_torch_min": metrics.speedup(torch_min, stats["min"]),
                        "parallel_efficiency": metrics.parallel_efficiency(s, variant.device.parallel_units),
                        "max_abs_diff_vs_torch": variant.max_abs_diff[batch],
                        "gflops_per_s": (bundle.flops(batch) / (stats["p50"] / 1e3) / 1e9
                                         if (bundle.has_torch_network or bundle.is_program) and stats["p50"] > 0
                                         else 0.0),
                    }
                )
                if variant.stages_ms.get(batch):
                    # per-stage p50 over the timed calls (each synchronised and timed by the program runner)
                    row["stages_ms"] = {k: metrics.percentiles(v)["p50"] for k, v in variant.stages_ms[batch].items()}
                    row["chunk_rate_hz"] = metrics.throughput(batch * len(samples), sum(samples) / 1e3)
                if variant.label in prefix_cache.get("per_backend", {}) and batch == prefix_cache.get("batch"):
                    row["prefix_recomputed_each_step_ms"] = prefix_cache["per_backend"][variant.label]["p50_ms"]
                    row["prefix_cache_speedup"] = prefix_cache["per_backend"][variant.label]["speedup"]
                    row["prefix_cache_speedup_min"] = prefix_cache["per_backend"][variant.label]["speedup_min"]
                rows.append(row)
        load_after = _load_average()
    finally:
        for variant in variants:
            if variant.backend is not None:
                variant.backend.close()
    info = bundle.info()
    model_info = {k: info[k] for k in ("parameters", "gflops_batch1", "tokens", "program", "steps") if k in info}
    if bundle.is_program:
        model_info["graphs"] = info.get("graphs", {})
    return {
        "benchmark": "backends",
        "model": bundle.name,
        "model_info": model_info,
        "prefix_cache": prefix_cache or None,
        "machine": {
            **machine_info(),
            # 1-minute load average before / after timing: above the CPU count, other processes
            # competed for the cores and torch's OpenMP threads in particular slow down a lot
            "load_average_1min": [load_before, load_after],
        },
        "settings": {
            "batches": list(batches),
            "warmup": warmup,
            "iters": iters,
            "seconds": seconds,
            "threads": threads,
            "seed": seed,
            "schedule": schedule,
            "block": block if interleaved else None,
            "onnxruntime_spinning": not interleaved,
            "baseline": f"{variants[0].label} {variants[0].precision}"
                        + (" (eager, CPU)" if variants[0].backend_name == BASELINE_BACKEND else ""),
            "speedup": "T_baseline_p50 / T_backend_p50 at the same batch",
        },
        "results": rows,
    }


def _load_average() -> float:
    try:
        return float(os.getloadavg()[0])
    except OSError:  # not available on this platform
        return -1.0


def _time_interleaved(variants: list[Variant], inputs: dict, batch: int, iters: int, seconds: float,
                      block: int = 1) -> None:
    """Round-robin over the backends (the first one rotates each round); each turn makes one untimed
    call when ``block`` > 1 (it re-warms the caches the other backends evicted) and then ``block``
    timed calls. Stops after ``iters`` timed calls per backend, or after ``seconds`` per backend
    (at least 3 rounds)."""
    from vla_accel.core.timing import time_interleaved

    def record_stages(i: int) -> None:
        stages = variants[i].stages_ms.get(batch)
        if stages is not None:
            for key, value in getattr(variants[i].backend, "last_stage_ms", {}).items():
                stages.setdefault(key, []).append(value)

    calls = [(lambda b=v.backend: b.infer(inputs)) for v in variants]
    time_interleaved(calls, calls=iters, seconds=seconds, block=block,
                     samples=[v.samples_ms[batch] for v in variants], after=record_stages)


def _time_prefix_recompute(variants: list[Variant], inputs: dict, batch: int, iters: int, seconds: float,
                           block: int, log) -> dict[str, Any]:
    """Time each program backend with its prefix recomputed before every step (results identical),
    interleaved, against the p50 already measured with the prefix computed once per chunk."""
    from vla_accel.core import metrics

    shadows = []
    for variant in variants:
        runner = getattr(variant.backend, "_runner", None)
        if runner is None:
            continue
        shadow = Variant(variant.label, variant.backend_name, variant.precision, backend=variant.backend)
        shadow.samples_ms[batch] = []
        shadows.append((variant, shadow, runner))
    if not shadows:
        return {}
    log(f"[bench] batch {batch}: timing the prefix recomputed before every step (the cost the prefix cache saves)")
    for _, _, runner in shadows:
        runner.recompute_prefix = True
    try:
        _time_interleaved([s for _, s, _ in shadows], inputs, batch, iters, seconds, block)
    finally:
        for _, _, runner in shadows:
            runner.recompute_prefix = False
    per_backend = {}
    for variant, shadow, _ in shadows:
        once = metrics.percentiles(variant.samples_ms[batch])
        every = metrics.percentiles(shadow.samples_ms[batch])
        per_backend[variant.label] = {"p50_ms": every["p50"], "prefix_once_p50_ms": once["p50"],
                                      "speedup": metrics.speedup(every["p50"], once["p50"]),
                                      "min_ms": every["min"], "prefix_once_min_ms": once["min"],
                                      "speedup_min": metrics.speedup(every["min"], once["min"])}
    return {"batch": batch, "per_backend": per_backend,
            "speedup": "T(prefix recomputed every step) / T(prefix once per chunk), p50; speedup_min: the "
                       "same ratio on the fastest call of each (less sensitive to other processes' load)"}


def format_table(report: dict[str, Any]) -> str:
    """The human-readable table of a ``run_backends`` report."""
    header = ("backend", "precision", "batch", "p50 ms", "p90 ms", "p99 ms", "max ms", "min ms", "samples/s",
              "speedup", "eff", "S(min)", "GFLOP/s", "max|diff|", "n")
    lines = []
    for row in report["results"]:
        if "error" in row:
            lines.append((row["variant"], row["precision"], str(row["batch"]), "not run: " + row["error"][:80]))
            continue
        lat = row["latency_ms"]
        lines.append(
            (
                row["variant"],
                row["precision"],
                str(row["batch"]),
                f"{lat['p50']:.2f}",
                f"{lat['p90']:.2f}",
                f"{lat['p99']:.2f}",
                f"{lat['max']:.2f}",
                f"{lat['min']:.2f}",
                f"{row['throughput_sps']:.1f}",
                f"{row['speedup_vs_torch']:.2f}x",
                f"{row['parallel_efficiency']:.2f}",
                f"{row['speedup_vs_torch_min']:.2f}x",
                f"{row['gflops_per_s']:.1f}",
                f"{row['max_abs_diff_vs_torch']:.1e}",
                str(row["iterations"]),
            )
        )
    widths = [max(len(header[i]), *(len(line[i]) for line in lines if len(line) == len(header))) for i in range(len(header))]
    out = [
        f"model {report['model']} ({report['model_info'].get('parameters', 0) / 1e6:.1f}M params, "
        f"{report['model_info'].get('gflops_batch1', 0):.2f} GFLOP/inference) on {report['machine']['cpu']} "
        f"({report['machine']['logical_cpus']} logical CPUs); speedup = T_baseline / T_backend (p50, same batch, "
        f"baseline {report['settings']['baseline']}), "
        "eff = speedup / threads, S(min) = the same ratio on the fastest call of each",
        "  ".join(h.ljust(w) for h, w in zip(header, widths)),
    ]
    load = report["machine"].get("load_average_1min", [-1.0, -1.0])
    cpus = report["machine"]["logical_cpus"] or 1
    for line in lines:
        if len(line) == len(header):
            out.append("  ".join(c.ljust(w) for c, w in zip(line, widths)))
        else:
            out.append("  ".join(c.ljust(w) for c, w in zip(line[:3], widths)) + "  " + line[3])
    staged = [r for r in report["results"] if r.get("stages_ms")]
    if staged:
        head = ("backend", "batch", "prefix ms", "step ms", "steps", "program ms", "chunks/s",
                "prefix every step ms", "prefix once speedup", "(min)")
        body = []
        for row in staged:
            st = row["stages_ms"]
            body.append((row["variant"], str(row["batch"]), f"{st.get('prefix', 0):.2f}", f"{st.get('step', 0):.2f}",
                         f"{st.get('steps', 0):.0f}", f"{st.get('program_total', 0):.2f}", f"{row['chunk_rate_hz']:.1f}",
                         f"{row['prefix_recomputed_each_step_ms']:.2f}" if "prefix_recomputed_each_step_ms" in row else "-",
                         f"{row['prefix_cache_speedup']:.2f}x" if "prefix_cache_speedup" in row else "-",
                         f"{row['prefix_cache_speedup_min']:.2f}x" if "prefix_cache_speedup_min" in row else "-"))
        w = [max(len(head[i]), *(len(b[i]) for b in body)) for i in range(len(head))]
        out.append(f"program stages (p50 per call; {report['model_info'].get('program', '')}, "
                   f"{report['model_info'].get('steps', '')} steps):")
        out.append("  ".join(h.ljust(x) for h, x in zip(head, w)))
        out.extend("  ".join(c.ljust(x) for c, x in zip(line, w)) for line in body)
    if max(load) > cpus:
        out.append(f"note: load average {load[0]:.1f} -> {load[1]:.1f} on {cpus} CPUs: other processes competed "
                   "for the cores; p50 ratios are noisy (torch's OpenMP threads suffer most), S(min) less so")
    return "\n".join(out)
