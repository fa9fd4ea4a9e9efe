"""``vla-accel info --model tiny``: a model's spec, parameter count and FLOPs per inference (per graph
for policy programs and user ONNX files, read from the graphs), and its normalisation as the spec says."""
from __future__ import annotations

import argparse
import json
import sys

import yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="built-in model name or spec YAML path (default: tiny)")
    parser.add_argument("--batch", type=int, default=1, help="batch size for the FLOP count (default: 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--no-spec", action="store_true", help="leave the spec YAML out of the text output")


def collect(model: str, batch: int = 1) -> dict:
    """Everything ``info`` prints, as data (no weights are generated or read)."""
    from vla_accel.models import load_model

    bundle = load_model(model)
    spec = bundle.spec
    out = {
        "name": bundle.name,
        "builtin": bundle.builtin,
        "format": spec.format,
        "spec_file": str(spec.source) if spec.source else "",
        "inputs": {},
        "outputs": {spec.action.output: [batch, spec.action.steps, spec.action.dims]},
        "action": {"names": list(spec.action_names), "space": spec.action.space, "dt": spec.action.dt,
                   "normalization": spec.action.normalization,
                   "describe": describe_normalisation(spec)},
        "program": {"kind": spec.program.kind, "steps": spec.program.steps,
                    "graphs": [g.name for g in spec.program.graphs]},
        "cache_dir": str(bundle.cache_dir),
    }
    for cam in spec.cameras:
        out["inputs"][cam.input] = {"shape": [batch, *cam.shape], "dtype": cam.dtype, "camera": cam.name}
    ins = spec.instruction
    if ins.enabled:
        out["inputs"][ins.input] = {"shape": [batch, ins.max_tokens], "dtype": ins.ids_dtype, "tokenizer": ins.tokenizer}
        out["inputs"][ins.mask_input] = {"shape": [batch, ins.max_tokens], "dtype": ins.mask_dtype}
    if spec.state is not None:
        out["inputs"][spec.state.input] = {"shape": [batch, spec.state.dims], "dtype": "float32"}
    if bundle.is_program or not bundle.has_torch_network:
        stats = bundle.program_stats(batch)
        out["graphs"] = stats["graphs"]
        out["calls_per_chunk"] = stats["calls_per_chunk"]
        out["parameters"] = stats["parameters"]
        out["flops_per_chunk"] = stats["flops_per_chunk"]
        if not bundle.has_torch_network:
            out["model_file"] = str(bundle.model_file)
    else:
        from vla_accel.models.architecture import describe, flops_breakdown

        config = bundle.network_config
        out["architecture"] = describe(config)
        out["flops"] = {"batch": batch, "total": sum(flops_breakdown(config, batch).values()),
                        "breakdown": flops_breakdown(config, batch),
                        "counts": "2 x multiply-accumulates of convs and matmuls, incl. QK^T and AV; "
                                  "element-wise ops and embedding look-ups excluded"}
        out["weights_file"] = str(bundle.weights_file)
        out["weights_generated"] = bundle.generated_weights
    return out, spec


def describe_normalisation(spec) -> str:
    """What the action output is, as the spec describes it (not assumed)."""
    action = spec.action
    if action.normalization == "none":
        return "raw actions (no un-normalisation)"
    if action.normalization in ("q01_q99", "min_max"):
        bounds = "q01 / q99" if action.normalization == "q01_q99" else "min / max"
        return f"normalised to [-1, 1] ({action.normalization}: un-normalised with the spec's {bounds})"
    return "standardised (mean_std: un-normalised as x * std + mean)"


def run(args: argparse.Namespace) -> int:
    data, spec = collect(args.model, args.batch)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    lines = [f"model: {data['name']} ({'built-in' if data['builtin'] else data['spec_file']}), format {data['format']}"]
    for name, meta in data["inputs"].items():
        lines.append(f"  input  {name}: {meta['dtype']}{tuple(meta['shape'])}")
    for name, shape in data["outputs"].items():
        lines.append(f"  output {name}: float32{tuple(shape)} {data['action']['describe']}; "
                     f"{data['action']['space']} {data['action']['names']} dt {data['action']['dt']} s")
    if data["program"]["kind"] != "single_pass":
        lines.append(f"  program: {data['program']['kind']}, {data['program']['steps']} steps, graphs "
                     f"{', '.join(data['program']['graphs'])}")
    if "graphs" in data:
        for name, stats in data["graphs"].items():
            if stats.get("flops") is None:
                lines.append(f"  graph {name}: {stats.get('note', 'not counted')}")
                continue
            calls = data["calls_per_chunk"].get(name, 1)
            unknown = f", {len(stats['unknown_nodes'])} products of unknown shape not counted" \
                if stats.get("unknown_nodes") else ""
            lines.append(f"  graph {name}: {stats['parameters']:,} parameters ({stats['parameters'] / 1e6:.2f} M), "
                         f"{stats['flops'] / 1e9:.4f} GFLOP per call x {calls} per chunk{unknown}")
        if data.get("flops_per_chunk") is not None:
            lines.append(f"  FLOPs per chunk at batch {args.batch}: {data['flops_per_chunk'] / 1e9:.3f} GFLOP "
                         "(2 x multiply-accumulates of matmuls and convolutions, read from the graphs)")
        if "model_file" in data:
            lines.append(f"  model file: {data['model_file']}")
    elif "architecture" in data:
        arch = data["architecture"]
        flops = data["flops"]
        lines.append(f"  network: {arch['depth']} layers x {arch['hidden_dim']} wide, {arch['heads']} heads, "
                     f"MLP {arch['mlp_dim']}, {arch['tokens']} tokens ({arch['image_tokens']} image)")
        lines.append(f"  parameters: {arch['parameters']:,} ({arch['parameters'] / 1e6:.2f} M)")
        lines.append(f"  FLOPs per inference at batch {flops['batch']}: {flops['total'] / 1e9:.3f} GFLOP "
                     f"({flops['counts']})")
        for part, value in flops["breakdown"].items():
            lines.append(f"    {part:<18} {value / 1e9:8.4f} GFLOP")
        lines.append(f"  weights: {data['weights_file']}"
                     f"{' (generated from the seed on first use)' if data['weights_generated'] else ''}")
    print("\n".join(lines))
    if not args.no_spec:
        print("\nspec:")
        sys.stdout.write(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return 0
