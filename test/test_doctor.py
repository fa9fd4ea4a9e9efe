"""``vla-accel doctor``: lists every registered backend with what it needs, exits 0 whatever is
missing, loads what can run with --load, and stores calibration with --calibrate."""
from __future__ import annotations

import json


from vla_accel.backends.registry import list_backends
from vla_accel.cli import main


def test_doctor_lists_every_backend_and_exits_zero(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in list_backends():
        assert f" {name} " in out or f" {name}\n" in out, name
    assert "System" in out and "cpu" in out and "backends can run here" in out
    # what is missing comes with how to install it
    assert "missing:" in out and "install:" in out


def test_doctor_json_report_names_missing_pieces(capsys):
    assert main(["doctor", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["backend"]: row for row in report["backends"]}
    assert set(rows) == set(list_backends())
    for name, row in rows.items():
        if row["available"]:
            assert row.get("detail") is not None
        else:
            assert row["missing"] and row["hint"], name
    assert rows["torch"]["available"] is True
    if not rows["edgetpu"]["available"]:
        assert any("libedgetpu" in m for m in rows["edgetpu"]["missing"])
    facts = report["system"]
    assert facts["logical_cpus"] >= 1 and "cuda" in facts and "opencl" in facts


def test_doctor_load_runs_available_backends_on_the_tiny_model(capsys):
    assert main(["doctor", "--load", "--backends", "torch,onnxruntime,tensorrt", "--json", "-"]) == 0
    rows = {row["backend"]: row for row in json.loads(capsys.readouterr().out)["backends"]}
    assert rows["torch"]["load"]["ok"] is True and rows["torch"]["load"]["hardware_id"] == "torch@cpu"
    if rows["onnxruntime"]["available"]:
        assert rows["onnxruntime"]["load"]["ok"] is True
    if not rows["tensorrt"]["available"]:
        assert "load" not in rows["tensorrt"]  # only probed, never loaded


def test_doctor_calibrate_stores_measurements(capsys, tmp_path, monkeypatch):
    from vla_accel.backends import calibration

    path = tmp_path / "calibration.json"
    monkeypatch.setattr(calibration, "default_calibration_path", lambda: path)
    assert main(["doctor", "--calibrate", "--backends", "torch", "--seconds", "0.2", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "Calibration" in out and "torch" in out and str(path) in out
    stored = json.loads(path.read_text())["records"]
    (record,) = stored.values()
    assert record["backend"] == "torch" and record["batch"] == 2 and record["p50_ms"] > 0


def test_doctor_unknown_backend_is_a_clear_error(capsys):
    assert main(["doctor", "--backends", "tpu9000"]) == 1
    assert "unknown backend 'tpu9000'" in capsys.readouterr().err
