"""Parity self-check at configure (no rclpy): the loaded backend runs the model's golden input and its
output is compared with the torch fp32 reference at the precision's tolerance.

The golden files ship with the package (``vla_accel/models/golden/<model>_fp32.npz``, written by
``scripts/make_reference.py`` next to the test references): the seed and a digest of the inputs, which
are regenerated and verified, and the reference actions. Each golden sample is run at batch 1 (every
backend takes batch 1). A model without a golden file (a user's spec) is reported as not checked.

The result reads "parity 2.3e-03 vs fp32 reference, tolerance 1.0e-02"; a failure is an error that
makes the node try its next fallback backend (and ERROR on /diagnostics when none is left).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vla_accel.errors import BackendError, ModelFileError
from vla_accel.models.reference import GOLDEN_DIR
from vla_accel.runtime.status import ERROR, OK, WARN, StatusReport



class ParityError(BackendError):
    """A backend's output does not match the model's golden reference within its precision's tolerance."""

    reason = "parity_failed"


@dataclass(frozen=True)
class ParityResult:
    backend: str
    precision: str
    status: str  # ok | failed | not_checked
    max_abs: float = float("nan")
    tolerance: float = float("nan")
    detail: str = ""

    @property
    def text(self) -> str:
        if self.status == "not_checked":
            return f"not checked: {self.detail}"
        verdict = "ok" if self.status == "ok" else "FAILED"
        return (f"parity {self.max_abs:.1e} vs fp32 reference, tolerance {self.tolerance:.1e} "
                f"({self.backend} {self.precision}: {verdict})")


def check_parity(bundle: Any, runner: Any, backend: str, precision: str,
                 directory: Path | None = None) -> ParityResult:
    """Run the golden input through ``runner.infer`` (batch 1 per sample) and compare."""
    from vla_accel.models.reference import TOLERANCES, load_reference

    try:
        case = load_reference(bundle, "fp32", directory or GOLDEN_DIR)
    except ModelFileError as exc:
        return ParityResult(backend, precision, "not_checked", detail=exc.reason + (
            f" (no golden reference shipped for model {bundle.name})" if exc.reason == "missing_reference" else f": {exc}"))
    tolerance = TOLERANCES.get(precision, TOLERANCES["fp32"])
    output = bundle.spec.action.output
    worst = 0.0
    batch = case.actions.shape[0]
    for i in range(batch):
        sample = {name: np.ascontiguousarray(arr[i:i + 1]) for name, arr in case.inputs.items()}
        got = np.asarray(runner.infer(sample)[output], dtype=np.float32)
        if got.shape != case.actions[i:i + 1].shape:
            return ParityResult(backend, precision, "failed", detail=f"output shape {got.shape}, reference "
                                f"{case.actions[i:i + 1].shape}")
        diff = float(np.max(np.abs(got - case.actions[i:i + 1]))) if got.size else 0.0
        worst = max(worst, diff if np.isfinite(diff) else float("inf"))
    return ParityResult(backend, precision, "ok" if worst <= tolerance else "failed", worst, tolerance)


def annotate(report: StatusReport, results: list[ParityResult], active: str) -> StatusReport:
    """The backend status with the parity figures; a failed check raises it to WARN (a fallback runs)
    or ERROR (the running backend failed it)."""
    if not results:
        return report
    values = report.values + tuple((f"parity {r.backend}", r.text) for r in results)
    values += (("parity", next((r.text for r in reversed(results) if r.backend == active), results[-1].text)),)
    failed = [r for r in results if r.status == "failed"]
    level, message = report.level, report.message
    if any(r.backend == active for r in failed):
        level, message = ERROR, f"{active} failed the parity check: {failed[-1].text}"
    elif failed and level in (OK, WARN):
        level = WARN
        message = f"{', '.join(r.backend for r in failed)} failed the parity check; running on {active}"
    return replace(report, level=level, message=message, values=values)
