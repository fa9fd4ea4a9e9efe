"""Per-tensor int8 sensitivity of a torch policy, in action units: which activation loses most.

For every floating-point tensor the network computes (each node of its ``torch.export`` graph: the
patch embedding, every linear, the attention scores and probabilities, LayerNorm's centred values,
variance and ``rsqrt``, GELU, the residual adds, ...), the tensor alone is rounded to per-tensor
affine int8 with the min/max range seen on the calibration set (the scheme of full-integer TFLite,
ONNX Runtime static QDQ and OpenVINO int8), the rest of the network stays fp32, and the change of
the actions is measured on the evaluation inputs. ``max_abs_action`` is that change in the units of
the normalised actions in [-1, 1], the same unit as every parity bound. A row's ``range_ratio``
(range width / typical magnitude) says why a tensor loses: a few outlier values stretch its range.

The sum of these single-tensor losses is not the error of the whole int8 model (errors interact and
weights are quantised too), but their order is what to fix first; the exported model's own error is
measured beside it (``QuantReport.model``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vla_accel.core.fileio import atomic_write_text

REPORT_VERSION = 1


@dataclass
class TensorLoss:
    tensor: str  # graph node name (torch.export), e.g. "matmul_2", "rsqrt_1"
    op: str  # aten op, e.g. "aten.matmul.default"
    module: str  # the nn.Module that computes it, e.g. "blocks.1.attn"
    shape: list  # ints; a symbolic (batch) dimension by its name
    range: list[float]  # calibrated [min, max] (0 included, as TFLite ranges are)
    scale: float  # int8 step of that range
    rms: float  # RMS of the tensor on the evaluation inputs
    range_ratio: float  # (max - min) / rms: large = outliers stretch the range
    max_abs_action: float  # max |a_q - a| over evaluation inputs with only this tensor in int8
    mean_abs_action: float


@dataclass
class QuantReport:
    model: dict[str, Any]  # the exported model's own error (filled by the exporter) and context
    all_activations: dict[str, float]  # every tensor at once in int8, torch-simulated
    tensors: list[TensorLoss] = field(default_factory=list)  # worst first
    version: int = REPORT_VERSION

    def worst(self, count: int = 10) -> list[TensorLoss]:
        return self.tensors[:count]

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "model": self.model, "all_activations": self.all_activations,
                "tensors": [asdict(t) for t in self.tensors]}

    def save(self, path: Path, plot: bool = True) -> list[Path]:
        """Write ``path`` (JSON) and, when matplotlib is importable, ``path`` with .png: the
        worst tensors as a bar chart in action units. Returns the files written."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        written = [path]
        if plot:
            png = plot_report(self, path.with_suffix(".png"))
            if png is not None:
                written.append(png)
        return written


def _fake_quant(x, lo: float, hi: float):
    import torch

    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero = round(-128 - lo / scale)
    q = torch.clamp(torch.round(x / scale) + zero, -128, 127)
    return ((q - zero) * scale).to(x.dtype)


def _graph(module, example: Sequence):
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    import inspect

    # the batch stays dynamic so calibration and evaluation batches may differ in size;
    # forward(a, b) one spec per input, forward(*inputs) one argument (the tuple of inputs), and
    # forward(a, *rest) both (a program's step graph)
    per_input = tuple({0: batch} for _ in example)
    params = list(inspect.signature(module.forward).parameters.values())
    named = sum(p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                for p in params)
    variadic = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    dynamic = (*per_input[:named], per_input[named:]) if variadic else per_input
    exported = torch.export.export(module, tuple(example), dynamic_shapes=dynamic, strict=False)
    return exported.module()


# Ops that move or select values without computing new ones: int8 kernels keep the input's scale
# and zero point for them, so they add no rounding of their own.
_LAYOUT_OPS = ("view", "reshape", "transpose", "permute", "expand", "slice", "select", "unsqueeze",
               "squeeze", "clone", "contiguous", "flatten", "split", "chunk", "getitem", "_to_copy", "alias",
               "detach", "t.default", "unbind")


def _float_nodes(gm) -> list:
    import torch

    nodes = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        target = str(node.target)
        if any(f".{name}" in target or target.endswith(name) for name in _LAYOUT_OPS):
            continue
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            nodes.append(node)
    return nodes


def _module_of(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return str(path).replace("L['self'].", "").replace("inner.", "")


class _Runner:
    """Runs the exported graph; optionally records ranges or fake-quantises chosen nodes."""

    def __init__(self, gm):
        import torch.fx

        class Interp(torch.fx.Interpreter):
            def run_node(inner, node):  # noqa: N805 (fx's signature)
                out = super().run_node(node)
                if node.name in self.quantise:
                    lo, hi = self.quantise[node.name]
                    out = _fake_quant(out, lo, hi)
                if self.record is not None and node.name in self.record:
                    lo, hi = self.record[node.name]
                    self.record[node.name] = (min(lo, float(out.min())), max(hi, float(out.max())))
                    self.sq[node.name] = self.sq.get(node.name, 0.0) + float((out.double() ** 2).mean())
                return out

        self.interp = Interp(gm)
        self.quantise: dict[str, tuple[float, float]] = {}
        self.record: dict[str, tuple[float, float]] | None = None
        self.sq: dict[str, float] = {}

    def __call__(self, inputs):
        import torch

        with torch.no_grad():
            return self.interp.run(*inputs).detach().float().numpy()


def sensitivity(module, input_names: Sequence[str], calibration: Sequence[dict[str, np.ndarray]],
                evaluation: Sequence[dict[str, np.ndarray]], *, model_info: dict[str, Any] | None = None,
                ) -> QuantReport:
    """Per-tensor int8 loss of ``module`` (positional inputs in ``input_names`` order), ranges from
    ``calibration``, losses on ``evaluation`` (lists of input batches)."""
    import torch

    def tensors(batch):
        return [torch.from_numpy(np.ascontiguousarray(batch[n])) for n in input_names]

    gm = _graph(module, tensors(calibration[0]))
    nodes = _float_nodes(gm)
    runner = _Runner(gm)
    runner.record = {n.name: (0.0, 0.0) for n in nodes}
    for batch in calibration:
        runner(tensors(batch))
    ranges = dict(runner.record)
    runner.record, runner.sq = {n.name: (0.0, 0.0) for n in nodes}, {}
    reference = [runner(tensors(b)) for b in evaluation]
    rms = {k: float(np.sqrt(v / max(1, len(evaluation)))) for k, v in runner.sq.items()}
    runner.record = None

    def action_error(quantise: dict[str, tuple[float, float]]) -> tuple[float, float]:
        runner.quantise = quantise
        try:
            diffs = [np.abs(runner(tensors(b)) - ref) for b, ref in zip(evaluation, reference)]
        finally:
            runner.quantise = {}
        flat = np.concatenate([d.ravel() for d in diffs])
        return float(flat.max()), float(flat.mean())

    rows: list[TensorLoss] = []
    for node in nodes:
        lo, hi = ranges[node.name]
        width = max(hi, 0.0) - min(lo, 0.0)
        worst, mean = action_error({node.name: (lo, hi)})
        value = node.meta["val"]
        rows.append(TensorLoss(
            tensor=node.name, op=str(node.target), module=_module_of(node),
            shape=[int(d) if str(d).lstrip("-").isdigit() else str(d) for d in value.shape],
            range=[round(lo, 6), round(hi, 6)], scale=width / 255.0, rms=rms.get(node.name, 0.0),
            range_ratio=round(width / rms[node.name], 2) if rms.get(node.name) else float("inf"),
            max_abs_action=worst, mean_abs_action=mean,
        ))
    rows.sort(key=lambda r: r.max_abs_action, reverse=True)
    everything_max, everything_mean = action_error(ranges)
    return QuantReport(model=dict(model_info or {}),
                       all_activations={"max_abs_action": everything_max, "mean_abs_action": everything_mean},
                       tensors=rows)


def plot_report(report: QuantReport, path: Path, count: int = 20) -> Path | None:
    """Horizontal bars: the ``count`` worst tensors' max |Δa| alone in int8. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = report.worst(count)[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.6))
    labels = [f"{r.module or '-'} : {r.tensor} ({r.op.replace('aten.', '').replace('.default', '')})" for r in rows]
    ax.barh(range(len(rows)), [r.max_abs_action for r in rows], color="#4c72b0")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_xlabel("max |Δa| with only this tensor in int8 (normalised action units)")
    model = report.model
    title = f"{model.get('model', '')} int8: per-tensor loss"
    if "max_abs" in model:
        title += f"  (exported model: max {model['max_abs']:.3f}, corr {model.get('correlation', 0):.4f})"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
