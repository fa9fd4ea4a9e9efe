"""The replay report: a Markdown and an HTML summary, JSON numbers and PNG plots.

Contents: the input (topics, counts, skipped messages and dropped frames by reason), a per-backend
table (latency percentiles, throughput, speedup over the torch CPU baseline, the bare backend
benchmark and what reading + decoding the bag adds on top), the maximum action deviation of each
backend from the baseline, regression results, action traces and latency over bag time.
Every number comes from ``vla_accel.core.metrics`` (percentiles, speedup, throughput).
"""
from __future__ import annotations

import html
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from vla_accel.core import metrics as metrics_lib

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.bags.compare import Deviation, RegressionResult
    from vla_accel.bags.replay import ReplayResult
    from vla_accel.core.types import ActionChunk


def _fmt(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def backend_rows(result: "ReplayResult") -> list[dict]:
    """One dict of report numbers per backend (also the JSON report's ``backends``)."""
    base = result.baseline
    base_p50 = base.stage("infer")["p50"] if base is not None else 0.0
    rows = []
    for run in result.runs:
        if not run.ok:
            rows.append({"requested": run.requested, "error": run.error})
            continue
        infer, total = run.stage("infer"), run.stage("total")
        pre, post = run.stage("preprocess"), run.stage("postprocess")
        chunks = len(run.chunks)
        median = run.median_round  # the cost table's figures all come from this one round
        rows.append(
            {
                "requested": run.requested,
                "backend": run.label,
                "device": run.device,
                "precision": run.precision,
                "observations": run.observations,
                "chunks": chunks,
                "dropped": dict(run.dropped),
                "infer_ms": infer,
                "total_ms": total,
                "preprocess_p50_ms": pre["p50"],
                "postprocess_p50_ms": post["p50"],
                # chunks per second of pure inference (the backend's sustained rate at this batch size)
                "inference_throughput_hz": metrics_lib.throughput(chunks, run.infer_s),
                "replay_throughput_hz": run.replay_fps,
                "speedup": metrics_lib.speedup(base_p50, infer["p50"]),
                "parallel_efficiency": metrics_lib.parallel_efficiency(
                    metrics_lib.speedup(base_p50, infer["p50"]), run.parallel_units
                ),
                "bare_infer_ms": run.bare_infer_ms,
                # same round as the ms column, so the two agree (run.bare_fps pools every bare call)
                "bare_throughput_hz": metrics_lib.throughput(1000.0, median.bare_ms) if median else run.bare_fps,
                "bare_ms_per_chunk": median.bare_ms if median else float("nan"),
                "replay_ms_per_chunk": median.replay_ms if median else float("nan"),
                "bag_read_ms_per_chunk": median.read_ms if median else float("nan"),
                "overhead_pct": run.overhead_pct,
                "pipeline_overhead_pct": run.pipeline_overhead_pct,
                "timing_rounds": [r.as_dict() for r in run.rounds],
                "jpeg_reduced_decode": run.jpeg_reduced_decode,
                "decode_paths": dict(run.decode_paths),
                "wall_s": run.wall_s,
                "read_s": run.read_s,
                "write_s": run.write_s,
            }
        )
        if run.snapshot.get("program_total_count"):
            # policy programs: the prefix once per chunk, one step-graph call, the whole program (p50)
            rows[-1]["program_stages_ms"] = {
                "prefix_p50": run.snapshot.get("prefix_p50_ms", 0.0),
                "step_p50": run.snapshot.get("step_p50_ms", 0.0),
                "program_p50": run.snapshot.get("program_total_p50_ms", 0.0),
                "steps": run.snapshot.get("program_steps", 0),
            }
    return rows


def _decode_cell(row: dict) -> str:
    """The run's JPEG decode setting and its frames per decode path (or that no frame was compressed)."""
    setting = "reduced" if row.get("jpeg_reduced_decode") else "full"
    paths = row.get("decode_paths") or {}
    if not paths:
        return f"{setting} (no compressed frame)"
    return f"{setting}: " + ", ".join(f"{path} x{count}" for path, count in sorted(paths.items(), key=lambda kv: -kv[1]))


# --- plots -----------------------------------------------------------------------------------------
def with_gaps(times: Sequence[float], values: Sequence[float], factor: float = 1.5) -> tuple[list[float], list[float]]:
    """Points with a NaN between two that lie more than ``factor`` x the median spacing apart, so a
    plotted line breaks where frames were rejected (or never came) instead of bridging them."""
    times, values = list(times), list(values)
    if len(times) < 3:
        return times, values
    median = float(np.median(np.diff(times)))
    out_t, out_v = [times[0]], [values[0]]
    for i in range(1, len(times)):
        if median > 0 and times[i] - times[i - 1] > factor * median:
            out_t.append((times[i] + times[i - 1]) / 2)
            out_v.append(float("nan"))
        out_t.append(times[i])
        out_v.append(values[i])
    return out_t, out_v


def plot_actions(result: "ReplayResult", path: Path, golden: Sequence["ActionChunk"] = (),
                 golden_label: str = "golden") -> Path | None:
    """First action of every chunk over bag time, one panel per dimension, one line per backend (and
    the golden run's chunks when a regression compared against one). Lines break at missing frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result.runs if r.ok and r.chunks]
    if not runs:
        return None
    names = result.action_names or tuple(f"a{i}" for i in range(runs[0].chunks[0].dims))
    t0 = min(t.log_ns for r in runs for t in r.timings)
    cols = 2
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.2 * rows), sharex=True, squeeze=False)
    # Golden chunks carry frame stamps: place them on bag time by the run's stamp -> log offset.
    offset = float(np.median([t.log_ns - c.stamp_ns for t, c in zip(runs[0].timings, runs[0].chunks)]))
    golden_times = [(c.stamp_ns + offset - t0) / 1e9 for c in golden]
    for dim, name in enumerate(names):
        ax = axes[dim // cols][dim % cols]
        if golden:
            ax.plot(*with_gaps(golden_times, [c.values[0, dim] for c in golden]), color="0.6", linewidth=3,
                    alpha=0.6, label=golden_label)
        for run, style in zip(runs, ("-", "--", ":", "-.") * 4):
            times = [(t.log_ns - t0) / 1e9 for t in run.timings]
            values = [c.values[0, dim] for c in run.chunks]
            ax.plot(*with_gaps(times, values), style, marker=".", markersize=3, label=run.label)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    for extra in range(len(names), rows * cols):
        axes[extra // cols][extra % cols].axis("off")
    axes[0][0].legend(fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("bag time (s)")
    fig.suptitle(f"{result.model}: first action of each chunk ({result.bag.name})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_latency(result: "ReplayResult", path: Path) -> Path | None:
    """Inference latency of every chunk over bag time, one line per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result.runs if r.ok and r.timings]
    if not runs:
        return None
    t0 = min(t.log_ns for r in runs for t in r.timings)
    fig, ax = plt.subplots(figsize=(10, 3.5))
    for run in runs:
        times = [(t.log_ns - t0) / 1e9 for t in run.timings]
        p50 = run.stage("infer")["p50"]
        ax.plot(*with_gaps(times, [t.infer_ms for t in run.timings]), marker=".", markersize=3,
                label=f"{run.label} (p50 {p50:.2f} ms)")
    ax.set_xlabel("bag time (s)")
    ax.set_ylabel("inference latency (ms)")
    p50s = [r.stage("infer")["p50"] for r in runs]
    if min(p50s) > 0 and max(p50s) / min(p50s) > 8:
        ax.set_yscale("log")  # backends an order of magnitude apart: keep the fast ones readable
    else:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{result.model}: inference latency per chunk")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --- text ------------------------------------------------------------------------------------------
def render_markdown(
    result: "ReplayResult",
    rows: Sequence[dict],
    deviations: dict[str, "Deviation"],
    regressions: Sequence["RegressionResult"] = (),
    plots: Sequence[Path] = (),
) -> str:
    base = result.baseline
    lines = [
        f"# Replay report: {result.bag.name}",
        "",
        f"- bag: `{result.bag}`",
        f"- model: `{result.model}`, rate mode: `{result.rate}`",
        f"- cameras: " + ", ".join(f"{cam} <- `{topic}`" for cam, topic in result.selection.cameras.items()),
        f"- instruction: `{result.selection.instruction}`, state: `{result.selection.state}`",
        *([f"- unused image topic(s): " + ", ".join(f"`{t}`" for t in result.selection.unused_images)
           + " (choose with --camera-topic CAMERA=TOPIC)"] if result.selection.unused_images else []),
        f"- machine: {result.machine}; generated {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        f"- output bag: `{result.output_bag}`" if result.output_bag else "- output bag: (none)",
        "",
        "## Input",
        "",
        "| topic | messages |",
        "|---|---:|",
    ]
    lines += [f"| `{topic}` | {count} |" for topic, count in result.input_messages.items()]
    lines += ["", f"Primary camera frames: {result.primary_frames}.", ""]
    if result.skipped:
        lines += ["Skipped before inference (by reason): "
                  + ", ".join(f"`{k}` {v}" for k, v in sorted(result.skipped.items())), ""]
    drops = next((r["dropped"] for r in rows if "dropped" in r), {})
    if drops:
        lines += ["Frames rejected by the pipeline (by reason, same for every backend): "
                  + ", ".join(f"`{k}` {v}" for k, v in sorted(drops.items())), ""]

    staged = [r for r in rows if "program_stages_ms" in r]
    if staged:
        lines += ["## Policy program stages", "", "| backend | prefix p50 ms | step p50 ms | steps | program p50 ms |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['backend']} | {_fmt(r['program_stages_ms']['prefix_p50'])} | "
                  f"{_fmt(r['program_stages_ms']['step_p50'])} | {r['program_stages_ms']['steps']:.0f} | "
                  f"{_fmt(r['program_stages_ms']['program_p50'])} |" for r in staged]
        lines += [""]
    lines += [
        "## Backends",
        "",
        f"Speedup S = T_{base.label if base else 'baseline'} / T_backend on the p50 inference latency "
        "(batch size as replayed); all backends ran one after another in this process.",
        "",
        "| backend | device | precision | chunks | infer p50 / p95 / p99 ms | total p50 ms | "
        "inference Hz | replay Hz | speedup |",
        "|---|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['requested']} | (did not run) | | | {row['error']} | | | | |")
            continue
        i = row["infer_ms"]
        lines.append(
            f"| {row['backend']} | {row['device']} | {row['precision']} | {row['chunks']} | "
            f"{_fmt(i['p50'])} / {_fmt(i['p95'])} / {_fmt(i['p99'])} | {_fmt(row['total_ms']['p50'])} | "
            f"{_fmt(row['inference_throughput_hz'], 1)} | {_fmt(row['replay_throughput_hz'], 1)} | "
            f"{_fmt(row['speedup'])}x |"
        )
    lines += [
        "",
        "### Replay cost against the bare backend",
        "",
        "Bare = `backend.infer` on ready tensors (no bag, no decoding). Replay = reading and "
        "deserialising the bag, decoding and preprocessing frames, inference and postprocessing, per "
        "chunk (writing the output bag excluded). Goal: replay within 20 % of bare. Measured "
        "interleaved: after each inference of a replay pass one bare call of the same batch size runs on "
        "the same thread and backend (timed apart, excluded from the replay time); each pass is compared "
        "with its own bare calls, per observation, and the table shows the median pass (`rounds` lists "
        "every pass). `read + decode on top of inference` compares with the inference time of the same "
        "pass. `JPEG decode`: the `jpeg_reduced_decode` setting of the run (full, or reduced: at a DCT "
        "scale covering the model input) and the compressed frames per decode path.",
        "",
        "| backend | bare ms/chunk | bare Hz | replay ms/chunk | of which bag read ms | preprocess p50 ms | "
        "on top of bare | rounds | read + decode on top of inference | JPEG decode |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for row in rows:
        if "error" in row:
            continue
        lines.append(
            f"| {row['backend']} | {_fmt(row['bare_ms_per_chunk'])} | "
            f"{_fmt(row['bare_throughput_hz'], 1)} | {_fmt(row['replay_ms_per_chunk'])} | "
            f"{_fmt(row['bag_read_ms_per_chunk'])} | {_fmt(row['preprocess_p50_ms'])} | "
            f"{_fmt(row['overhead_pct'], 1)} % | "
            f"{', '.join(_fmt(r['overhead_pct'], 1) for r in row['timing_rounds']) or 'n/a'} | "
            f"{_fmt(row['pipeline_overhead_pct'], 1)} % | {_decode_cell(row)} |"
        )
    lines += ["", "## Action deviation from the baseline", ""]
    if not deviations:
        lines.append("Only one backend ran: nothing to compare.")
    else:
        lines += [
            f"Absolute deviation from `{base.label}` in action units, chunks matched by source stamp.",
            "",
            "| backend | max abs | mean abs | matched | missing | extra | worst at |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for name, dev in deviations.items():
            where = (f"stamp {dev.stamp_ns}, step {dev.step}, dim {dev.dim} ({dev.dim_name})"
                     if dev.stamp_ns is not None else "-")
            lines.append(
                f"| {name} | {dev.max_abs:.3g} | {dev.mean_abs:.3g} | {dev.matched} | {len(dev.missing)} | "
                f"{len(dev.extra)} | {where} |"
            )
    if regressions:
        lines += ["", "## Regression against the golden bag", ""]
        for reg in regressions:
            lines += ["```", reg.describe(), "```"]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def render_html(markdown_text: str, title: str) -> str:
    """A dependency-free HTML rendering of the report's Markdown (tables, headings, code, images)."""
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}"
        "td{text-align:right}td:first-child{text-align:left}pre{background:#f4f4f4;padding:8px}</style>",
        "</head><body>",
    ]
    in_table = in_code = in_list = False
    for line in markdown_text.splitlines():
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= set("-:") for c in cells):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                out.append("<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells) + "</tr>")
            else:
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{_inline(line[2:])}</li>")
            continue
        if in_list:
            out.append("</ul>")
            in_list = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            out.append(f"<p><img src='{html.escape(src.rstrip(')'))}' alt='{html.escape(alt)}'></p>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if in_table:
        out.append("</table>")
    if in_list:
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _inline(text: str) -> str:
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def write_report(
    result: "ReplayResult",
    out_dir: str | Path,
    deviations: dict[str, "Deviation"],
    regressions: Sequence["RegressionResult"] = (),
    plots: bool = True,
    golden: Sequence["ActionChunk"] = (),
) -> dict[str, Path]:
    """Write report.md, report.html, report.json and the PNG plots into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = backend_rows(result)
    images: list[Path] = []
    from vla_accel.core.optional import module_available

    if plots and not module_available("matplotlib"):
        log.warning("report: matplotlib is not installed, so no plots (pip install -r requirements/bags.txt)")
        plots = False
    if plots:
        for made in (plot_actions(result, out_dir / "actions.png", golden), plot_latency(result, out_dir / "latency.png")):
            if made is not None:
                images.append(made)
    markdown_text = render_markdown(result, rows, deviations, regressions, images)
    paths = {"markdown": out_dir / "report.md", "html": out_dir / "report.html", "json": out_dir / "report.json"}
    paths["markdown"].write_text(markdown_text, encoding="utf-8")
    paths["html"].write_text(render_html(markdown_text, f"Replay report: {result.bag.name}"), encoding="utf-8")
    summary = {
        "bag": str(result.bag),
        "model": result.model,
        "rate": result.rate,
        "input_messages": result.input_messages,
        "primary_frames": result.primary_frames,
        "skipped": result.skipped,
        "backends": rows,
        "deviation": {
            name: {"max_abs": d.max_abs, "mean_abs": d.mean_abs, "matched": d.matched,
                   "missing": len(d.missing), "extra": len(d.extra), "stamp_ns": d.stamp_ns,
                   "step": d.step, "dim": d.dim, "dim_name": d.dim_name}
            for name, d in deviations.items()
        },
        "regression": [
            {"backend": r.backend, "passed": r.passed, "tolerance": r.tolerance,
             "max_abs": r.deviation.max_abs, "missing": len(r.deviation.missing),
             "extra": len(r.deviation.extra), "matched": r.deviation.matched}
            for r in regressions
        ],
        "output_bag": str(result.output_bag) if result.output_bag else None,
    }
    paths["json"].write_text(json.dumps(_finite(summary), indent=2, default=_json_default), encoding="utf-8")
    for image in images:
        paths[image.stem] = image
    return paths


def _finite(value):
    """NaN / inf -> None, so report.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
