"""``vla-accel doctor --model SPEC``: check a user's spec and its graphs before a robot runs them.

For a spec file (a user's export, an import, a hand-written description of graphs made elsewhere):

1. the spec loads and validates (every program graph input is fed by an observation input, a runtime
   input or an earlier graph's output; kinds, dtypes, normalisation statistics);
2. every graph file named by the spec exists (with its ONNX external-data files);
3. on each backend that can run here (onnxruntime and openvino by default), the graphs load and the
   load-time contract check passes: every graph input fed with the declared dtype and per-sample
   shape, every output the spec names present (else the GraphContractError names each problem);
4. one inference on example inputs at the batch the graphs take returns an action chunk of the
   spec's (steps, dims), finite.

Each check is one row: ok / FAIL with the reason; the command's exit status is 1 when any fails.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vla_accel.errors import BackendUnavailableError, VlaAccelError

DEFAULT_BACKENDS = ("onnxruntime", "openvino")


def _row(check: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"check": check, "ok": bool(ok), "detail": detail}


def check_model(path: str | Path, backends: tuple[str, ...] | list[str] = DEFAULT_BACKENDS) -> list[dict[str, Any]]:
    from vla_accel.backends.base import BackendOptions
    from vla_accel.core.spec import example_inputs
    from vla_accel.backends.registry import create_backend
    from vla_accel.core.spec import ModelSpec
    from vla_accel.models import load_model

    rows: list[dict[str, Any]] = []
    try:
        spec = ModelSpec.from_yaml(path)
    except VlaAccelError as exc:
        return [_row("spec", False, str(exc))]
    program = spec.program
    rows.append(_row("spec", True, f"{spec.name}: {program.kind}, {len(spec.cameras)} camera(s), language "
                     f"{'yes' if spec.instruction.enabled else 'no'}, state {spec.state.dims if spec.state else 'none'}, "
                     f"actions {spec.action.steps}x{spec.action.dims}, normalisation {spec.action.normalization}"))
    for graph in program.graphs:
        batch = f"batch {graph.batch} (fixed)" if graph.batch else "dynamic batch"
        rows.append(_row(f"graph {graph.name}", True, f"{graph.file or '(reference network)'}: inputs "
                         f"{list(graph.inputs)} -> outputs {list(graph.outputs)}, {batch}"))
    try:
        bundle = load_model(path)
        if not bundle.has_torch_network:
            files = [bundle.model_file] if not program.graphs else None
            if program.graphs and any(g.file for g in program.graphs):
                from vla_accel.models.program_bundle import graph_files, onnx_external_files

                files = list(graph_files(bundle).values())
                for f in list(files):
                    if f.suffix == ".onnx":
                        missing = [p for p in onnx_external_files(f) if not p.is_file()]
                        if missing:
                            raise VlaAccelError(f"{f} references external data {missing}, which is missing",
                                                reason="missing_model_file")
            rows.append(_row("files", True, ", ".join(str(f) for f in files or [])))
    except VlaAccelError as exc:
        rows.append(_row("files", False, str(exc)))
        return rows
    batch = spec.fixed_batch or 1
    for name in backends:
        try:
            backend = create_backend(name, bundle, BackendOptions(max_batch=batch, precision="fp32")).load()
        except BackendUnavailableError as exc:
            rows.append(_row(f"backend {name}", False, f"not available here: {exc}"))
            continue
        except VlaAccelError as exc:
            rows.append(_row(f"backend {name}: load + graph contract", False, str(exc)))
            continue
        try:
            rows.append(_row(f"backend {name}: load + graph contract", True, "every graph input fed, dtypes, shapes "
                             "and output names match"))
            out = backend.infer(example_inputs(spec, batch, seed=0))[spec.action.output]
            want = (batch, spec.action.steps, spec.action.dims)
            ok = tuple(out.shape) == want and bool(np.isfinite(out).all())
            rows.append(_row(f"backend {name}: inference", ok, f"actions {tuple(out.shape)} (want {want}), "
                             f"{'finite' if np.isfinite(out).all() else 'NOT FINITE'}"))
        except VlaAccelError as exc:
            rows.append(_row(f"backend {name}: inference", False, str(exc)))
        finally:
            backend.close()
    return rows


def print_rows(rows: list[dict[str, Any]], out) -> None:
    print("\nModel check", file=out)
    for row in rows:
        print(f"  {'ok  ' if row['ok'] else 'FAIL'} {row['check']:40s} {row['detail']}", file=out)
