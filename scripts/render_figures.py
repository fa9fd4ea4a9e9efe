#!/usr/bin/env python3
"""Render every measured figure in README.md and docs/ from the committed measurements.

Each figure lives in a block of its document:

    <!-- measured:NAME -->
    ...rendered text...
    <!-- /measured:NAME -->

and NAME's renderer below reads the JSON (or the replay report) in docs/measurements/ it comes from.
``python scripts/render_figures.py`` rewrites the blocks; ``--check`` exits 1 (naming the blocks)
when a document differs from its measurements. test/test_figures.py runs the check, so a figure
cannot drift from the measurement it quotes: re-measure, commit the JSON, re-render.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ROOT / "docs" / "measurements"
BLOCK = re.compile(r"(<!-- measured:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /measured:(?P=name) -->)", re.S)


def load(name: str):
    return json.loads((MEASUREMENTS / name).read_text(encoding="utf-8"))


def _x(value: float) -> str:
    return f"{value:.2f}x"


def _sci(value: float) -> str:
    return "0" if value == 0 else f"{value:.1e}"


def _gpu_rows() -> list[dict]:
    return load("gpu_bench_h200.json")["rows"]


def _gpu_row(model: str, variant: str, batch: int) -> dict:
    for row in _gpu_rows():
        if (row["model"], row["variant"], row["batch"]) == (model, variant, batch):
            return row
    raise KeyError(f"gpu_bench_h200.json has no row {model} {variant} batch {batch}")


def _cpu_variant(variant: str, batch: int = 1) -> dict:
    for row in load("cpu_backends_tiny.json")["results"]:
        if row["variant"] == variant and row["batch"] == batch:
            return row
    raise KeyError(f"cpu_backends_tiny.json has no row {variant} batch {batch}")


def _batching(name: str, backend: str) -> dict:
    for comparison in load(name)["comparisons"]:
        if comparison["backend"] == backend:
            return comparison
    raise KeyError(f"{name} has no {backend} comparison")


def _replay_rows() -> dict[str, str]:
    """Backend -> the replay's overhead over bare inference (the first percentage of its row)."""
    rows = {}
    for line in (MEASUREMENTS / "cpu_replay_report.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        percent = [c for c in cells[1:] if c.endswith("%")]
        if cells[0] in ("torch", "onnxruntime", "openvino") and percent:
            rows[cells[0]] = percent[0]
    return rows


# --- README ---------------------------------------------------------------------------------------
def readme_measured() -> str:
    cpu = load("cpu_backends_tiny.json")
    info = cpu["model_info"]
    speed = ", ".join(f"{label} {_x(_cpu_variant(v)['speedup_vs_torch'])}" for label, v in (
        ("openvino fp32", "openvino"), ("onnxruntime fp32", "onnxruntime"),
        ("openvino default precision (bf16)", "openvino-default"), ("onnxruntime int8", "onnxruntime-int8")))
    parity_cpu = ", ".join(f"{label} {_sci(_cpu_variant(v)['max_abs_diff_vs_torch'])}" for label, v in (
        ("onnxruntime fp32", "onnxruntime"), ("openvino fp32", "openvino"),
        ("openvino bf16", "openvino-default"), ("onnxruntime int8", "onnxruntime-int8")))
    parity_gpu = {p["variant"]: p["max_abs_diff"] for p in load("gpu_bench_h200.json")["parity_vs_reference"]
                  if p["model"] == "base"}
    b1 = _gpu_row("base", "cuda-fp16-graph", 1)
    b32 = _gpu_row("base", "cuda-fp16-graph", 32)
    streams = _batching("batching_h200.json", "cuda")
    pipe = load("cpu_pipeline.json")
    serial, piped = pipe["variants"]["serial"]["throughput_fps"], pipe["variants"]["pipelined"]["throughput_fps"]
    rt = load("cpu_realtime.json")
    soak, fixed, peak = rt["soak"], rt["fixed_rates"], rt["peak"]
    mem = load("cpu_memory.json")["strategies"]
    names = ("static", "pool", "dynamic")
    buffers = ", ".join(
        f"{s} {mem[s]['allocations']['prepare']['numpy_buffers_new']:.0f}"
        + (f" ({mem[s]['allocations']['prepare']['numpy_bytes_new'] / 1024:.0f} KiB)"
           if mem[s]['allocations']['prepare']['numpy_bytes_new'] else "") for s in names)
    jitter = " / ".join(f"{mem[s]['jitter_ms']:.2f}" for s in names)
    cpu_streams = _batching("cpu_batching.json", "onnxruntime")
    node = load("cpu_node.json")
    overhead = " / ".join(f"{n['node_overhead_p50_ms']:.2f}" for n in node)
    e2e = " / ".join(f"{n['end_to_end_p50_ms']:.1f}" for n in node)
    node_backends = " / ".join(n["backend"] for n in node)
    replay = _replay_rows()
    rows = [
        ("what", "figure"),
        ("---", "---"),
        (f"`tiny` ({info['parameters'] / 1e6:.2f}M params, {info['gflops_batch1']:.2f} GFLOP) batch 1, speedup over "
         f"torch eager fp32", speed),
        ("parity with torch on `tiny` (max abs, normalised actions, batch 1)", parity_cpu),
        ("parity of `base` on H200 with the torch CPU fp32 reference", f"cuda fp16 {_sci(parity_gpu['cuda-fp16-graph'])}, "
         f"bf16 {_sci(parity_gpu['cuda-bf16-graph'])}"),
        ("`base` batch 1 on H200, cuda fp16 + CUDA graphs",
         f"{b1['latency_ms']['p50']:.2f} ms, {b1['speedup']:.1f}x over the same machine's torch CPU (16 threads)"),
        ("`base` batch 32 on H200, cuda fp16 + graphs",
         f"{b32['latency_ms']['p50']:.1f} ms, {b32['speedup']:.0f}x over torch CPU (one run)"),
        (f"`{load('batching_h200.json')['model']}`, {streams['streams']} streams on cuda (H200) micro-batched vs batch 1",
         f"{_x(streams['batched_over_single'])} throughput"),
        (f"stage pipeline vs serial, 1080p JPEG input decoded in the prepare stage, {pipe['backend']}",
         f"{_x(pipe['pipelined_over_serial'])} throughput ({serial:.1f} -> {piped:.1f} frames/s)"),
        (f"input at 2x the sustainable rate for {soak['seconds']:.0f} s",
         f"latency p50 {_x(soak['p50_over_standalone'])} standalone inference; first vs last {soak['window_s']:.0f} s p50 "
         f"{soak['first_window_p50_ms']:.1f} vs {soak['last_window_p50_ms']:.1f} ms; {soak['superseded']} frames superseded"),
        ("fixed input rates " + " / ".join(f"{f['rate_hz']:.0f}" for f in fixed) + " Hz",
         ("no missed frames" if all(f["missed"] == 0 for f in fixed) else "missed " + " / ".join(str(f["missed"]) for f in fixed))
         + ", p99 " + " / ".join(f"{f['p99_ms']:.1f}" for f in fixed)
         + f" ms; peak rate with < {peak['max_missed_fraction'] * 100:.0f}% missed: {peak['peak_rate_hz']:.1f} Hz"),
        ("memory strategies (prepare stage, per frame)", f"numpy buffers allocated: {buffers}; p99 - p50 jitter {jitter} ms"),
        (f"{cpu_streams['streams']} streams micro-batched vs batch 1 (CPU, onnxruntime)",
         f"{_x(cpu_streams['batched_over_single'])} (compute-bound CPU; see the GPU row)"),
        ("node overhead (callback entry -> published, minus inference)",
         f"p50 {overhead} ms ({node_backends}), end-to-end frame stamp -> chunk in another process p50 {e2e} ms"),
        ("offline bag replay vs bare backend", ", ".join(f"+{replay[b].rstrip(' %')} % ({b})" for b in replay)),
    ]
    return "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"


# --- docs/gpu.md ----------------------------------------------------------------------------------
def gpu_latency() -> str:
    lines = ["| model | variant | batch | p50 ms | p99 ms | samples/s | speedup | max abs diff vs CPU |",
             "|---|---|---|---|---|---|---|---|"]
    for row in _gpu_rows():
        if row.get("skipped"):
            continue
        lat = row["latency_ms"]
        lines.append(f"| {row['model']} | {row['variant']} | {row['batch']} | {lat['p50']:.3f} | {lat['p99']:.3f} | "
                     f"{row['throughput_sps']:.0f} | {row['speedup']:.1f}x | {_sci(row['max_abs_diff'] or 0.0)} |")
    return "\n".join(lines) + "\n"


def gpu_summary() -> str:
    b1 = _gpu_row("base", "cuda-fp16-graph", 1)
    e1 = _gpu_row("base", "cuda-fp16", 1)
    c1 = _gpu_row("base", "cuda-fp16-compile", 1)
    b32 = _gpu_row("base", "cuda-fp16-graph", 32)
    c32 = _gpu_row("base", "cuda-fp16-compile", 32)
    t1, tc1 = _gpu_row("tiny", "cuda-fp16-graph", 1), _gpu_row("tiny", "cuda-fp16-compile", 1)
    p = lambda r: r["latency_ms"]["p50"]  # noqa: E731
    return (f"At batch 1 `base` with CUDA graphs runs in {p(b1):.2f} ms at {b1['speedup']:.1f}x the same machine's "
            f"16-thread CPU baseline; eager fp16 takes {p(e1):.2f} ms (the GPU waits for kernel launches issued from "
            f"Python, which one graph launch removes). Graphs vs torch.compile: base {p(b1):.2f} vs {p(c1):.2f} ms and "
            f"tiny {p(t1):.2f} vs {p(tc1):.2f} ms at batch 1; at batch 32 compile's fused kernels give "
            f"{p(c32):.1f} ms vs {p(b32):.1f} ms with graphs. So graphs are the default and compile is an option "
            f"for batch-heavy servers.\n")


def gpu_parity() -> str:
    parity = load("gpu_bench_h200.json")["parity_vs_reference"]
    cols = (("cuda-fp32-graph", "fp32"), ("cuda-fp16-graph", "fp16"), ("cuda-bf16-graph", "bf16"), ("opencl", "opencl fp32"))
    lines = ["| model | " + " | ".join(f"{label} (tol {next((p['tolerance'] for p in parity if p['variant'] == v), 0):g})"
                                      for v, label in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for model in dict.fromkeys(p["model"] for p in parity):
        cells = []
        for variant, _ in cols:
            found = [p for p in parity if p["model"] == model and p["variant"] == variant]
            cells.append(_sci(found[0]["max_abs_diff"]) if found else "not run")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def gpu_opencl() -> str:
    lines = ["| model, batch | total | largest stages (ms) |", "|---|---|---|"]
    for prof in load("gpu_bench_h200.json")["opencl_profile"]:
        stages = prof["stages_ms"]
        top = sorted(stages.items(), key=lambda kv: -kv[1])[:5]
        lines.append(f"| {prof['model']}, {prof['batch']} | {sum(stages.values()):.1f} ms | "
                     + ", ".join(f"{k} {v:.2f}" for k, v in top) + " |")
    return "\n".join(lines) + "\n"


def gpu_inductor() -> str:
    """docs/gpu.md: Inductor's fused kernels inside the backend's graphs (gpu_bench_h200_inductor.json)."""
    run = load("gpu_bench_h200_inductor.json")
    lines = ["| model | variant | batch | host p50 ms | device p50 ms | speedup over CPU (CPU p50 ms, threads) | max abs diff vs CPU |",
             "|---|---|---|---|---|---|---|"]
    for row in run["rows"]:
        if row.get("skipped") or row["backend"] == "torch":
            continue
        dev = row["device_ms"].get("p50")
        lines.append(f"| {row['model']} | {row['variant']} | {row['batch']} | {row['latency_ms']['p50']:.3f} | "
                     + (f"{dev:.3f}" if dev else "-") + f" | {row['speedup']:.1f}x ({row['cpu_p50_ms']:.1f}, "
                     f"{row['cpu_threads']}) | {_sci(row['max_abs_diff'] or 0.0)} |")
    lines.append("")
    lines += [f"- goal {g['goal']}: {g['result']}" for g in run["goals"]]
    parity = run["parity_vs_reference"]
    lines.append("- parity against the committed CPU fp32 reference (base): " + ", ".join(
        f"{p['variant']} {_sci(p['max_abs_diff'])} (tolerance {p['tolerance']:g})" for p in parity))
    return "\n".join(lines) + "\n"


# --- docs/scheduling.md ---------------------------------------------------------------------------
def scheduling_pipeline() -> str:
    p = load("cpu_pipeline.json")
    serial, piped = p["variants"]["serial"]["throughput_fps"], p["variants"]["pipelined"]["throughput_fps"]
    stages = p["stage_p50_ms"]
    return (f"{p['backend']}: serial {serial:.1f} fps, pipelined {piped:.1f} fps, **{_x(p['pipelined_over_serial'])}** "
            f"(goal {p['goal']}); stage p50 prepare {stages['preprocess']:.2f} / infer {stages['infer']:.2f} / "
            f"finish {stages['postprocess']:.2f} ms.\n")


def scheduling_node_path() -> str:
    d = load("cpu_pipeline_node_path.json")
    n = d["node_path"]
    before, now = n["decode_on_receiving_thread"], n["decode_in_prepare"]
    return (f"Camera at {n['camera_rate_hz']:.0f} Hz ({d['input']}, {d['backend']}, pipelined loop, {n['rounds']} "
            f"alternating rounds of {n['seconds_per_round']:.0f} s; machine load {d['machine']['load_avg_1min_at_start']:.1f} "
            f"on {d['machine']['logical_cpus']} CPUs, so absolute rates are low): decoded on the receiving thread "
            f"{before['throughput_fps']:.1f} frames/s, receiving-thread time per frame p50 {before['callback_p50_ms']:.1f} ms; "
            f"decoded in the prepare stage {now['throughput_fps']:.1f} frames/s "
            f"(**{_x(n['throughput_prepare_over_receiving'])}**), receiving-thread time p50 {now['callback_p50_ms']:.2f} ms, "
            f"{now['superseded']} superseded frames never decoded.\n")


def scheduling_memory() -> str:
    m = load("cpu_memory.json")["strategies"]
    lines = ["| memory | numpy buffers allocated by prepare | prepare transient | jitter p99 - p50 |", "|---|---|---|---|"]
    for name, s in m.items():
        prep = s["allocations"]["prepare"]
        new = f"{prep['numpy_buffers_new']:.0f}" + (f" ({prep['numpy_bytes_new'] / 1024:.0f} KiB)" if prep["numpy_bytes_new"] else "")
        lines.append(f"| {name} | {new} | {prep['transient_bytes'] / 1024:.1f} KiB | {s['jitter_ms']:.2f} ms |")
    return "\n".join(lines) + "\n"


def scheduling_realtime() -> str:
    rt = load("cpu_realtime.json")
    soak, fixed, peak = rt["soak"], rt["fixed_rates"], rt["peak"]
    standalone = rt["standalone_ms"]["p50"]
    return (f"standalone p50 {standalone:.2f} ms. Soak at {soak['rate_hz']:.0f} Hz for {soak['seconds']:.0f} s: "
            f"{soak['sent']} sent, {soak['inferred']} inferred, {soak['superseded']} superseded; latency p50 "
            f"{soak['latency_ms']['p50']:.2f} ms = **{_x(soak['p50_over_standalone'])} standalone**, p99 "
            f"{soak['latency_ms']['p99']:.2f} ms; p50 first {soak['window_s']:.0f} s {soak['first_window_p50_ms']:.2f} ms vs "
            f"last {soak['last_window_p50_ms']:.2f} ms. Fixed rates: "
            + ", ".join(f"{f['rate_hz']:.0f} Hz p50 {f['p50_ms']:.2f} / p99 {f['p99_ms']:.2f} ms, {f['missed']} missed"
                        for f in fixed)
            + f". Peak input rate with < {peak['max_missed_fraction'] * 100:.0f} % missed: **{peak['peak_rate_hz']:.1f} Hz**.\n")


def scheduling_batching() -> str:
    out = []
    for name, backend in (("cpu_batching.json", "onnxruntime"), ("batching_h200.json", "torch"),
                          ("batching_h200.json", "cuda")):
        c = _batching(name, backend)
        single, batched = c["variants"]["batch1"], [v for k, v in c["variants"].items() if k != "batch1"][0]
        out.append(f"- {c['streams']} streams on {backend} ({load(name)['model']}, "
                   f"{load(name)['machine']['cpu']} host): batch 1 {single['throughput_fps']:.1f} fps "
                   f"(infer p50 {single['infer_p50_ms']:.2f} ms) -> batch {batched['batch_size']} "
                   f"{batched['throughput_fps']:.1f} fps, **{_x(c['batched_over_single'])}**, total latency p50 "
                   f"{single['total_latency_p50_ms']:.0f} -> {batched['total_latency_p50_ms']:.0f} ms.")
    return "\n".join(out) + "\n"


def int8_table() -> str:
    """docs/backends.md: every int8 path of every model of the one `vla-accel bench int8` run."""
    d = load("int8_bench.json")
    lines = ["| model | path | p50 ms | speedup | max abs error | mean abs error | correlation | graphs |",
             "|---|---|---|---|---|---|---|---|"]
    for model in d["models"]:
        name = Path(model["model"]).name if "/" in model["model"] else model["model"]
        for row in model["rows"]:
            graphs = "; ".join(row.get("graphs", [])) or ""
            if "displacement_correlation" in row:
                graphs += f" (displacement from the noise: correlation {row['displacement_correlation']:.4f})"
            lines.append(f"| {name} | {row['path']} | {row['p50_ms']:.1f} | {_x(row['speedup_vs_baseline'])} | "
                         f"{row['max_abs']:.4f} | {row['mean_abs']:.4f} | {row['correlation']:.4f} | {graphs} |")
        for label, why in model["errors"].items():
            lines.append(f"| {name} | {label} | not run: {why.split(':')[0]} | | | | | |")
    load_avg = d["machine"].get("load_average", [0])[0]
    reruns = "".join(
        f" {model['model']}: re-run alone ({model['run']['created']}, load average "
        f"{model['run']['machine'].get('load_average', [0])[0]:.1f});"
        for model in d["models"] if model.get("run"))
    return ("\n".join(lines) + f"\n\n({d['machine']['cpu']}, load average {load_avg:.1f} at the end of the run;{reruns} "
            "speedups are ratios of calls interleaved side by side.)\n")


def int8_targets() -> str:
    """docs/backends.md: the integer accelerators' view of the same run."""
    d = load("int8_bench.json")
    out = []

    def one(model: str, target: str, t: dict) -> str | None:
        if "error" in t:
            return f"- {model} {target}: not checked ({t['error'].splitlines()[-1][:150]})"
        if "npu_ops" in t:
            return (f"- {model} {target}: {t['npu_ops']} ops on the NPU, {t['cpu_ops']} on the CPU "
                    f"({', '.join(t['cpu_op_types'])}); vela estimate {t.get('estimate_ms')} ms, SRAM {t.get('sram_kib')} KiB")
        if "all_nodes_on_qnn" in t:
            acc = t.get("accuracy_vs_fp32") or {}
            outs = t.get("outputs_vs_cpu_fp32") or {}
            err = (f"max abs error {acc['max_abs']:.4f}, correlation {acc['correlation']:.4f} on "
                   f"{acc['samples']} frames" if acc else ", ".join(
                       f"{k} max abs error {v['max_abs']:.4f} (of {v['range']:.2f})" for k, v in outs.items()))
            return (f"- {model} {target} (A{t.get('activation_bits', 8)}W8): every node on QNN: "
                    f"{'yes' if t['all_nodes_on_qnn'] else 'no'}; {err}; {t.get('emulator_inference_s')} s per "
                    "inference on the x86-64 emulator (not a device time)")
        return (f"- {model} {target}: {t['ops_passing_rules']} of {t['ops']} ops pass the published rules; the first "
                f"unsupported op ({t['first_unsupported']}) comes after {t['mapped_before_first_unsupported']} ops")

    for model in d["models"]:
        name = Path(model["model"]).name if "/" in model["model"] else model["model"]
        for target, t in model["targets"].items():
            if "graphs" in t:
                for graph, g in t["graphs"].items():
                    line = one(f"{name} ({graph} graph)", target, g)
                    out.append(line)
            else:
                out.append(one(name, target, t))
    return "\n".join(out) + "\n"


RENDERERS: dict[str, Callable[[], str]] = {
    "int8-table": int8_table,
    "int8-targets": int8_targets,
    "readme-table": readme_measured,
    "gpu-latency": gpu_latency,
    "gpu-summary": gpu_summary,
    "gpu-parity": gpu_parity,
    "gpu-opencl": gpu_opencl,
    "scheduling-batching": scheduling_batching,
    "scheduling-pipeline": scheduling_pipeline,
    "scheduling-memory": scheduling_memory,
    "scheduling-node-path": scheduling_node_path,
    "gpu-inductor": gpu_inductor,
    "scheduling-realtime": scheduling_realtime,
}
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# Prose figures outside the rendered blocks: in README and every docs page, each decimal figure (1.39x, 26.56 ms,
# 7e-3) of a paragraph that cites a file of docs/measurements/ must be a value of a cited file, as
# shown (rounded to the digits written; a percentage may be a fraction in the file).
CITED_DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_CITATION = re.compile(r"(?:docs/measurements/)?([\w.-]+\.(?:json|md))")
_FIGURE = re.compile(r"(?<![\w.\-/])(\d+\.\d+(?:e-?\d+)?|\d+e-\d+)(?![\w.]*\d)")
_NUMBER = re.compile(r"\d+\.\d+(?:e-?\d+)?|\d+e-\d+")
_BOUND = re.compile(r"(?:<=|>=|≤|≥|&le;|&ge;|at most|at least)\s*\d+(?:\.\d+)?(?:e-?\d+)?")


def _values(path: Path) -> list[float]:
    """Every number in a measurement file (JSON leaves and numbers inside its strings; a report's text)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".json":
        return [float(m) for m in _NUMBER.findall(text)]
    out: list[float] = []

    def walk(node) -> None:
        if isinstance(node, bool):
            return
        if isinstance(node, (int, float)):
            out.append(float(node))
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            out.extend(float(m) for m in _NUMBER.findall(node))

    walk(json.loads(text))
    return out


def _shown_as(token: str, value: float) -> bool:
    if "e" in token:
        mantissa = token.split("e")[0]
        digits = len(mantissa.split(".")[1]) if "." in mantissa else 0
        return value != 0 and f"{value:.{digits}e}" == f"{float(token):.{digits}e}"
    digits = len(token.split(".")[1])
    return any(abs(round(v, digits) - float(token)) < 1e-9 for v in (value, value * 100))


def unbacked_figures(text: str, measurements: Path | None = None) -> list[str]:
    """Figures of ``text`` (rendered blocks left out) in paragraphs citing measurement files that
    none of the cited files holds, as "figure (cited files): paragraph start"."""
    measurements = MEASUREMENTS if measurements is None else measurements
    text = BLOCK.sub("", text)
    problems = []
    for paragraph in re.split(r"\n\s*\n", text):
        files = [measurements / name for name in dict.fromkeys(_CITATION.findall(paragraph))
                 if (measurements / name).is_file()]
        if not files:
            continue
        values = [v for f in files for v in _values(f)]
        # A bound written with its comparison (a goal, a test's limit: "<= 0.05", ">= 0.99") is not a
        # measured figure.
        measured_text = _BOUND.sub("", paragraph)
        for token in dict.fromkeys(_FIGURE.findall(measured_text)):
            if not any(_shown_as(token, v) for v in values):
                start = " ".join(paragraph.split())[:70]
                problems.append(f"{token} ({', '.join(f.name for f in files)}): {start}")
    return problems


def render(text: str) -> tuple[str, list[str]]:
    """(text with every block re-rendered, names of the blocks that changed)."""
    changed: list[str] = []

    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in RENDERERS:
            raise SystemExit(f"unknown measured block {name!r}; known: {', '.join(RENDERERS)}")
        body = RENDERERS[name]()
        if body != match.group("body"):
            changed.append(name)
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, text), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when a document differs")
    args = parser.parse_args(argv)
    stale = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        new, changed = render(text)
        if changed:
            stale += [f"{path.relative_to(ROOT)}: {name}" for name in changed]
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if stale:
        print(("out of date with docs/measurements: " if args.check else "re-rendered: ") + "; ".join(stale))
    unbacked = [f"{path.relative_to(ROOT)}: {problem}" for path in CITED_DOCUMENTS
                for problem in unbacked_figures(path.read_text(encoding="utf-8"))]
    if unbacked:
        print("figures not found in the measurements their paragraph cites:\n  " + "\n  ".join(unbacked))
    return 1 if (stale and args.check) or unbacked else 0


if __name__ == "__main__":
    sys.exit(main())
