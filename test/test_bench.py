"""``vla-accel bench``: the backends benchmark runs end to end and writes its JSON (no timing asserts)."""
from __future__ import annotations

import argparse
import json

import pytest

from vla_accel.core.optional import module_available
from vla_accel.cli import main
from vla_accel.commands import bench
from vla_accel.errors import VlaAccelError

needs_cpu_runtimes = pytest.mark.skipif(
    not (module_available("torch") and module_available("onnxruntime") and module_available("openvino")),
    reason="torch / onnxruntime / openvino missing; install with pip install -r requirements/runtime.txt",
)


@needs_cpu_runtimes
def test_bench_backends_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--model", "tiny", "--backends", "onnxruntime,openvino", "--batch", "1,2",
               "--warmup", "1", "--iters", "2", "--json", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "speedup" in table and "openvino-default" in table and "onnxruntime-int8" in table
    report = json.loads(out.read_text())
    assert report["model"] == "tiny" and report["settings"]["batches"] == [1, 2]
    assert report["settings"]["schedule"] == "interleaved"
    rows = report["results"]
    # torch (the baseline) is added even when not asked for; openvino gets a default-precision row,
    # onnxruntime an int8 one
    assert sorted({r["variant"] for r in rows}) == ["onnxruntime", "onnxruntime-int8", "openvino",
                                                    "openvino-default", "torch"]
    assert len(rows) == 10
    for row in rows:
        assert row["iterations"] == 2
        lat = row["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert row["throughput_sps"] > 0 and row["speedup_vs_torch"] > 0
        assert row["parallel_efficiency"] == pytest.approx(row["speedup_vs_torch"] / row["parallel_units"])
        assert row["max_abs_diff_vs_torch"] >= 0
    fp32_rows = [r for r in rows if r["requested_precision"] == "fp32"]
    assert all(r["max_abs_diff_vs_torch"] < 1e-4 for r in fp32_rows)
    int8_rows = [r for r in rows if r["variant"] == "onnxruntime-int8"]
    assert all(r["precision"] == "int8" and r["max_abs_diff_vs_torch"] < 0.15 for r in int8_rows)
    torch_rows = [r for r in rows if r["variant"] == "torch"]
    assert all(r["speedup_vs_torch"] == pytest.approx(1.0) for r in torch_rows)


@needs_cpu_runtimes
def test_bench_blocked_schedule(tmp_path):
    report = bench.run_backends(model="tiny", backends=["torch"], batches=[1], warmup=0, iters=2,
                                schedule="blocked", log=lambda message: None)
    assert report["settings"]["schedule"] == "blocked" and report["results"][0]["iterations"] == 2


def test_bench_argument_parsing():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--backend", "ort", "--batch", "1,16"])
    assert args.mode == "backends" and args.backends == ["ort"] and args.batch == [1, 16]
    with pytest.raises(SystemExit):
        parser.parse_args(["--batch", "0,x"])
    with pytest.raises(SystemExit):
        parser.parse_args(["no-such-mode"])
    # a mode module re-declaring a common option keeps the common definition instead of crashing
    proxy = bench._FirstDefinitionWins(parser)
    assert proxy.add_argument("--model", default="other") is None
    assert parser.parse_args([]).model == "tiny"


def test_bench_unknown_backend_is_reported():
    from vla_accel.errors import UnknownBackendError

    with pytest.raises(UnknownBackendError, match="valid backends"):
        bench.run_backends(model="tiny", backends=["warp-drive"], batches=[1], iters=1, log=lambda m: None)


def test_bench_mode_without_module_is_a_clear_error():
    args = argparse.Namespace(mode="definitely_not_a_mode")
    with pytest.raises(VlaAccelError, match="bench mode 'definitely_not_a_mode' is not available"):
        bench.run(args)


@needs_cpu_runtimes
def test_bench_ready_onnx_model_uses_first_backend_as_baseline(tmp_path, tiny_bundle):
    import shutil

    import yaml

    from vla_accel.models import SPECS_DIR

    shutil.copyfile(tiny_bundle.export("onnx", progress=False), tmp_path / "policy.onnx")
    data = yaml.safe_load((SPECS_DIR / "tiny.yaml").read_text())
    data.update(name="user-policy", format="onnx", weights="policy.onnx")
    data.pop("architecture")
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(data))
    report = bench.run_backends(model=str(tmp_path / "policy.yaml"), backends=["onnxruntime"], batches=[1],
                                warmup=1, iters=2, openvino_default=False, onnxruntime_int8=False,
                                log=lambda message: None)
    assert report["settings"]["baseline"] == "onnxruntime fp32"
    assert [row["variant"] for row in report["results"]] == ["onnxruntime"]
    assert report["results"][0]["speedup_vs_torch"] == pytest.approx(1.0)
