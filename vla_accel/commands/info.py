"""``vla-accel info --model tiny``: a model's spec, parameter count and FLOPs per inference."""
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
        "action": {"names": list(spec.action.names), "space": spec.action.space, "dt": spec.action.dt,
                   "normalization": spec.action.normalization},
        "cache_dir": str(bundle.cache_dir),
    }
    for cam in spec.cameras:
        out["inputs"][cam.input] = {"shape": [batch, *cam.shape], "dtype": cam.dtype, "camera": cam.name}
    ins = spec.instruction
    out["inputs"][ins.input] = {"shape": [batch, ins.max_tokens], "dtype": "int32", "tokenizer": ins.tokenizer}
    out["inputs"][ins.mask_input] = {"shape": [batch, ins.max_tokens], "dtype": "float32"}
    if spec.state is not None:
        out["inputs"][spec.state.input] = {"shape": [batch, spec.state.dims], "dtype": "float32"}
    if bundle.has_torch_network:
        from vla_accel.models.architecture import describe, flops_breakdown

        config = bundle.network_config
        out["architecture"] = describe(config)
        out["flops"] = {"batch": batch, "total": sum(flops_breakdown(config, batch).values()),
                        "breakdown": flops_breakdown(config, batch),
                        "counts": "2 x multiply-accumulates of convs and matmuls, incl. QK^T and AV; "
                                  "element-wise ops and embedding look-ups excluded"}
        out["weights_file"] = str(bundle.weights_file)
        out["weights_generated"] = bundle.generated_weights
    else:
        out["model_file"] = str(spec.weights_path())
    return out, spec


def run(args: argparse.Namespace) -> int:
    data, spec = collect(args.model, args.batch)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    lines = [f"model: {data['name']} ({'built-in' if data['builtin'] else data['spec_file']}), format {data['format']}"]
    for name, meta in data["inputs"].items():
        lines.append(f"  input  {name}: {meta['dtype']}{tuple(meta['shape'])}")
    for name, shape in data["outputs"].items():
        lines.append(f"  output {name}: float32{tuple(shape)} normalised to [-1, 1]; "
                     f"{data['action']['space']} {data['action']['names']} dt {data['action']['dt']} s")
    if "architecture" in data:
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
    else:
        lines.append(f"  model file: {data['model_file']}")
    print("\n".join(lines))
    if not args.no_spec:
        print("\nspec:")
        sys.stdout.write(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return 0
