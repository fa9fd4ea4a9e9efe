"""ONNX export prints our progress lines only; the exporter's own output lands in a log file."""
from __future__ import annotations

import logging

import pytest

from vla_accel.models import load_model


@pytest.mark.slow  # an ONNX export: ~20 s idle, a minute on a loaded 2-core machine
def test_onnx_export_keeps_the_exporter_chatter_in_a_log(tmp_path, capfd):
    pytest.importorskip("torch", reason="missing: torch; install with: pip install torch==2.13.0 (CPU build)")
    pytest.importorskip("onnxscript", reason="missing: onnxscript; install with: pip install onnxscript")
    logging.getLogger().setLevel(logging.INFO)  # as in the node: INFO records of every logger are shown
    bundle = load_model("tiny-vision", cache_dir=tmp_path)
    target = bundle.export("onnx", progress=True)
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("[vla-accel export")]
    assert target.is_file()
    assert ours and len(lines) == len(ours), "\n".join(line for line in lines if line not in ours)[:3000]
    logs = list(tmp_path.rglob("*-onnx-export.log"))
    assert logs and logs[0].stat().st_size > 0  # the exporter did say things: kept, not lost
    assert any(str(logs[0]) in line for line in ours)
