"""Per-graph calibration of a policy program: what each graph really receives while the fp32 torch
program runs on representative observations (the prefix graph: the observations; the step graph:
every step's sample, time, state and the prefix outputs), one ``CalibrationSet`` per graph.

Used by every per-graph integer export: the int8 program benchmark and the backends that quantise a
program themselves (``qnn-ort``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.models.calibration_set import CalibrationSet


def torch_program_runner(bundle):
    """The fp32 reference program: the bundle's torch graphs driven by the ``ProgramRunner``."""
    from vla_accel.backends.program import ProgramRunner
    from vla_accel.backends.program_torch import torch_program

    sessions, ops = torch_program(bundle)
    return ProgramRunner(bundle.spec, sessions, ops, timed=False)


class _Recording:
    """A graph session that keeps a host copy of every feed before running it."""

    def __init__(self, inner, store: list):
        self.inner, self.store = inner, store

    def run(self, feeds):
        self.store.append({n: np.array(v.detach().cpu().numpy() if hasattr(v, "detach") else v, copy=True)
                           for n, v in feeds.items()})
        return self.inner.run(feeds)

    def signature(self):
        return None


def capture_graph_calibration(bundle, observations: "CalibrationSet", first_call: int = 0) -> dict[str, "CalibrationSet"]:
    """Per graph: the inputs it receives while the fp32 torch program runs on every batch of
    ``observations`` (call ``first_call + i`` for batch i, so the noise differs per batch)."""
    from vla_accel.backends.program import ProgramRunner
    from vla_accel.backends.program_torch import torch_program
    from vla_accel.models.calibration_set import CalibrationSet

    sessions, ops = torch_program(bundle)
    stores: dict[str, list] = {name: [] for name in sessions}
    runner = ProgramRunner(bundle.spec, {n: _Recording(s, stores[n]) for n, s in sessions.items()}, ops, timed=False)
    for index, batch in enumerate(observations.batches):
        runner.run(batch, first_call + index)
    out = {}
    for name, feeds in stores.items():
        provenance = {**observations.provenance, "graph": name,
                      "captured_from": f"fp32 torch program on {observations.samples} observations "
                                       f"({len(feeds) // max(1, len(observations.batches))} calls of this graph each)"}
        out[name] = CalibrationSet(feeds, provenance)
    return out
