"""Parameters and FLOPs of model graphs, read from the graphs themselves: ONNX files (initializers and
shape-inferred MatMul / Gemm / Conv nodes) and torch modules (torch's FLOP counter on one call). Used by
``vla-accel info`` and the benchmarks for user models and policy programs alike.

FLOPs count 2 x multiply-accumulates of matrix products and convolutions (element-wise work excluded),
the same convention as ``architecture.flops_breakdown``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def onnx_graph_stats(path: Path, batch: int = 1) -> dict[str, Any]:
    """{"parameters", "flops", "unknown_nodes"} of an ONNX graph at ``batch`` (the first dynamic
    dimension of every input is set to it; a product whose shapes stay unknown is listed, not guessed)."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))  # external data too: parameters are counted from the tensors
    params = 0
    for init in model.graph.initializer:
        params += int(np.prod(tuple(init.dims))) if init.dims else 1
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    del model.graph.value_info[:]
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001  (shape inference failures vary by op set; counts become unknown)
        inferred = model
    shapes: dict[str, tuple] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    for init in inferred.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    flops = 0
    unknown = []
    for node in inferred.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv", "MatMulInteger"):
            continue
        out = shapes.get(node.output[0])
        a = shapes.get(node.input[0])
        w = shapes.get(node.input[1]) if len(node.input) > 1 else None
        if not out or None in out or not a or None in a or (node.op_type == "Conv" and (not w or None in w)):
            unknown.append(node.name or node.op_type)
            continue
        if node.op_type == "Conv":
            flops += 2 * int(np.prod(out)) * (w[1] * int(np.prod(w[2:])))
        elif node.op_type == "Gemm":
            trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
            k = a[0] if trans_a else a[-1]
            flops += 2 * int(np.prod(out)) * k
        else:
            flops += 2 * int(np.prod(out)) * a[-1]
    return {"parameters": params, "flops": flops, "unknown_nodes": unknown}


def torch_module_flops(module, args) -> int:
    """FLOPs of one call ``module(*args)`` counted by torch's FLOP counter (matmuls, convolutions)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        module(*args)
    return int(counter.get_total_flops())


def program_stats(bundle, batch: int = 1) -> dict[str, Any]:
    """Per graph parameters and FLOPs of a policy program, and one chunk's total (prefix once plus the
    step graph ``steps`` times; autoregressive: tokens - 1 next-token calls)."""
    program = bundle.spec.program
    graphs: dict[str, dict[str, Any]] = {}
    if bundle.has_torch_network:
        import torch

        from vla_accel.models.program_bundle import example_feeds

        modules = bundle.graph_modules()
        feeds = example_feeds(bundle, batch=batch)
        seen = set()
        for graph in program.graphs:
            module = modules[graph.name]
            params = 0
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params += p.numel()
            args = [torch.from_numpy(np.ascontiguousarray(feeds[graph.name][n])) for n in graph.inputs]
            graphs[graph.name] = {"parameters": int(params), "flops": torch_module_flops(module, args)}
    else:
        from vla_accel.models.program_bundle import graph_files

        files = graph_files(bundle) if program.graphs else {"model": bundle.model_file}
        for name, path in files.items():
            if path.suffix.lower() != ".onnx":
                graphs[name] = {"parameters": None, "flops": None, "note": f"not counted for {path.suffix} files"}
                continue
            graphs[name] = onnx_graph_stats(path, batch)
    calls = {g.name: 1 for g in program.graphs} or {"model": 1}
    if program.kind in ("flow_matching", "diffusion"):
        calls[program.step.name] = program.steps
    elif program.kind == "autoregressive":
        tokens = program.tokens.tokens or bundle.spec.action.steps * bundle.spec.action.dims
        calls[program.step.name] = tokens - 1
    known = all(g.get("flops") is not None for g in graphs.values())
    return {
        "batch": batch,
        "graphs": graphs,
        "calls_per_chunk": calls,
        "parameters": sum(g["parameters"] or 0 for g in graphs.values()),
        "flops_per_chunk": sum(graphs[n]["flops"] * c for n, c in calls.items() if n in graphs) if known else None,
    }
