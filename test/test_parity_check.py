"""Parity self-check at load (vla_accel.runtime.parity): golden input through the real backend, compared
with the torch fp32 reference; a failure moves to the fallback and shows on the backend status."""
from __future__ import annotations

from pathlib import Path

import pytest

from vla_accel.models import builtin_models, load_model
from vla_accel.models.reference import REFERENCE_DIR
from vla_accel.ros import params
from vla_accel.runtime import status
from vla_accel.runtime.parity import GOLDEN_DIR, annotate, check_parity


def test_shipped_golden_files_are_the_committed_references():
    # Single-pass models ship their golden for the self-check at load; policy programs are checked
    # against their committed references (with seeded noise) by test_programs.py instead.
    for name in builtin_models():
        if load_model(name).spec.program.kind != "single_pass":
            assert not (GOLDEN_DIR / f"{name}_fp32.npz").exists(), f"{name}: a program's golden is not used"
            continue
        golden, reference = GOLDEN_DIR / f"{name}_fp32.npz", REFERENCE_DIR / f"{name}_fp32.npz"
        assert golden.is_file(), f"{golden} missing: run scripts/make_reference.py {name}"
        assert golden.read_bytes() == reference.read_bytes(), f"{golden} differs from {reference}"


def test_torch_passes_and_the_text_names_figures(tmp_path):
    pytest.importorskip("torch", reason="missing: torch; install with: pip install torch==2.13.0 (CPU build)")
    from vla_accel.backends.base import BackendOptions
    from vla_accel.backends.registry import create_backend

    bundle = load_model("tiny-vision")
    with create_backend("torch", bundle, BackendOptions()) as backend:
        result = check_parity(bundle, backend, "torch", "fp32")
        assert result.status == "ok" and result.max_abs <= 1e-4
        assert result.text.startswith("parity ") and "vs fp32 reference, tolerance 1.0e-04" in result.text
        # A model without a shipped golden: said so, not failed.
        missing = check_parity(bundle, backend, "torch", "fp32", directory=Path(tmp_path))
    assert missing.status == "not_checked" and "no golden reference" in missing.text


def test_a_backend_failing_parity_hands_over_to_the_fallback(monkeypatch):
    pytest.importorskip("torch", reason="missing: torch; install with: pip install torch==2.13.0 (CPU build)")
    pytest.importorskip("onnxruntime", reason="missing: onnxruntime; install with: pip install onnxruntime")
    from vla_accel.runtime.session import InferenceSession

    # onnxruntime returns NaN after its 2 warm-up calls: the parity check's first call sees it.
    monkeypatch.setenv("VLA_ACCEL_FAULT", "onnxruntime:nan:after=2")
    values = params.node_parameters({"backend": "onnxruntime", "fallback": ["torch"], "warmup_iterations": 2,
                                     "speedup_baseline": "none"})
    session = InferenceSession(params.runtime_config(values), on_chunks=lambda chunks: None)
    try:
        session.load()
        assert [(r.backend, r.status) for r in session.parity] == [("onnxruntime", "failed"), ("torch", "ok")]
        assert session.state.active == "torch" and "parity" in session.state.error
        state = session.state
        report = status.backend_status(session.metrics.snapshot(), state, status.DiagnosticsConfig(),
                                            "torch@cpu")
        shown = annotate(report, session.parity, state.active)
        assert shown.level == status.WARN and "onnxruntime failed the parity check" in shown.message
        assert shown.value("parity").startswith("parity ") and "torch fp32: ok" in shown.value("parity")
    finally:
        session.stop()


def test_no_candidate_passing_parity_is_an_error(monkeypatch):
    pytest.importorskip("torch", reason="missing: torch; install with: pip install torch==2.13.0 (CPU build)")
    from vla_accel.errors import BackendError
    from vla_accel.runtime.session import InferenceSession

    monkeypatch.setenv("VLA_ACCEL_FAULT", "torch:nan:after=1")
    values = params.node_parameters({"backend": "torch", "warmup_iterations": 1, "speedup_baseline": "none"})
    session = InferenceSession(params.runtime_config(values), on_chunks=lambda chunks: None)
    with pytest.raises(BackendError, match="parity"):
        session.load()
    assert session.state.status == "failed"
    report = status.backend_status(session.metrics.snapshot(), session.state, status.DiagnosticsConfig(), "x")
    assert annotate(report, session.parity, "").level == status.ERROR
