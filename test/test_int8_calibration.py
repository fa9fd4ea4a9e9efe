"""int8 from recorded observations: calibration sets from a rosbag or a folder of frames (provenance,
same preprocessing as inference), the full-integer TFLite model of ``tiny`` calibrated on one bag and
checked on another (no float op, max |Δa| <= 0.05, correlation >= 0.99), the per-tensor report, the
export CLI and ``vla-accel info`` showing where an int8 model's ranges came from."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vla_accel.core.optional import module_available
from vla_accel.errors import ModelFileError

HAVE_CONVERTER = module_available("litert_torch") and module_available("ai_edge_quantizer")
HAVE_BAGS = module_available("rosbags")
# Full-integer int8 TFLite of tiny vs fp32 torch on frames from a bag it was not calibrated on.
# Measured: max 0.043, mean 0.010, correlation 0.9992 (docs/backends.md).
INT8_MAX_ABS = 0.05
INT8_MIN_CORRELATION = 0.99


def _require(converter: bool = False):
    if not HAVE_BAGS:
        pytest.skip("rosbag reading needs rosbags: pip install -r requirements/bags.txt")
    if converter and not HAVE_CONVERTER:
        pytest.skip("tflite converter missing: litert-torch; install with pip install -r requirements/litert.txt")


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    _require()
    from vla_accel.bags.sample import make_sample_bag

    root = tmp_path_factory.mktemp("int8bags")
    calibration = make_sample_bag(root / "calibration", frames=24, rate_hz=10.0)
    # other instants of the scene (the square elsewhere), sampled more sparsely
    evaluation = make_sample_bag(root / "evaluation", frames=16, rate_hz=3.0)
    return calibration, evaluation


def test_calibration_from_bag_goes_through_the_replay_assembly(bags, tiny_bundle):
    from vla_accel.bags.calibration import calibration_from_bag

    manifest, _ = bags
    cal = calibration_from_bag(manifest.path, tiny_bundle.spec, count=8)
    prov = cal.provenance
    assert prov["source"] == "rosbag" and prov["camera_frames"] == manifest.frames
    # spread evenly over the camera frames (stride 3 of 24); frames the decoder rejects are not replaced
    assert prov["stride"] == manifest.frames // 8 and 6 <= cal.samples <= 8 and prov["observations"] < manifest.frames
    # the broken frames of the sample bag are rejected by the same decoder as inference, and said so
    assert any(k.startswith("camera: ") for k in prov["skipped"]), prov["skipped"]
    assert sum(prov["instructions"].values()) == cal.samples
    batch = cal.batches[0]
    assert set(batch) == set(tiny_bundle.spec.input_names)
    assert batch[tiny_bundle.spec.cameras[0].input].dtype == np.float32
    # deterministic: the same bag gives the same inputs (the export cache key)
    assert calibration_from_bag(manifest.path, tiny_bundle.spec, count=8).digest() == cal.digest()
    assert len(cal.rebatched(2).batches) == cal.samples // 2


def test_calibration_from_folder_and_bad_sources(tmp_path, tiny_bundle):
    from PIL import Image

    from vla_accel.bags.calibration import calibration_from_source
    from vla_accel.bags.sample import scene_rgb

    for i in range(5):
        Image.fromarray(scene_rgb(160, 120, 0.3 * i)).save(tmp_path / f"frame_{i:03d}.png")
    (tmp_path / "instructions.txt").write_text("pick up the block\n\nopen the drawer\n")
    cal = calibration_from_source(tmp_path, tiny_bundle.spec, count=4)
    assert cal.samples == 4 and cal.provenance["source"] == "folder"
    assert cal.provenance["instructions"] == ["open the drawer", "pick up the block"]
    assert cal.provenance["state"].startswith("synthetic")
    with pytest.raises(ModelFileError, match="does not exist"):
        calibration_from_source(tmp_path / "missing", tiny_bundle.spec)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFileError, match="holds no"):
        calibration_from_source(empty, tiny_bundle.spec)
    (tmp_path / "frame_999.png").write_bytes(b"not a png")
    with pytest.raises(ModelFileError, match="cannot be decoded"):
        calibration_from_source(tmp_path, tiny_bundle.spec, count=10)


def test_sensitivity_finds_the_tensor_whose_range_an_outlier_stretches():
    import torch

    from vla_accel.models.quant_report import sensitivity

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(8, 8)
            self.b = torch.nn.Linear(8, 4)

        def forward(self, x):
            h = self.a(x)
            spiky = h * torch.tensor([1.0] * 7 + [400.0])  # one channel 400x wider: int8 crushes the rest
            return torch.tanh(self.b(spiky[..., :7].sum(-1, keepdim=True) * 0.1 + h[..., :4].repeat(1, 2)))

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = [{"x": rng.normal(size=(16, 8)).astype(np.float32)}]
    report = sensitivity(Toy().eval(), ["x"], data, data)  # in-sample: rounding alone, no clipping
    worst = report.worst(1)[0]
    assert worst.op == "aten.mul.Tensor", [(t.tensor, t.op, t.max_abs_action) for t in report.worst(4)]
    assert worst.max_abs_action > 10 * report.tensors[-1].max_abs_action
    assert report.all_activations["max_abs_action"] >= worst.max_abs_action * 0.5


def test_tiny_full_integer_int8_from_a_bag(bags, tiny_bundle, tmp_path, monkeypatch):
    _require(converter=True)
    from vla_accel.bags.calibration import calibration_from_bag
    from vla_accel.models import int8_export
    from vla_accel.models.export_tflite import export_tflite

    calibration_manifest, evaluation_manifest = bags
    cal = calibration_from_bag(calibration_manifest.path, tiny_bundle.spec, count=32)
    path = export_tflite(tiny_bundle, "int8", progress=False, calibration=cal)
    assert int8_export.tflite_float_ops(path) == []
    ops = {name for name, _ in int8_export.tflite_op_dtypes(path)}
    assert "EMBEDDING_LOOKUP" not in ops and "SQUARED_DIFFERENCE" not in ops
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["calibration"]["source"] == "rosbag"
    assert meta["calibration"]["inputs_digest"] == cal.digest()

    evaluation = calibration_from_bag(evaluation_manifest.path, tiny_bundle.spec, count=16)
    expected = int8_export.torch_outputs(tiny_bundle, evaluation.batches)
    actual = int8_export.run_tflite(path, evaluation.batches, tiny_bundle.spec.action.output)
    stats = int8_export.error_stats(actual, expected)
    assert stats["max_abs"] <= INT8_MAX_ABS and stats["correlation"] >= INT8_MIN_CORRELATION, stats
    # a broken quantisation fails these bounds: the same outputs against another frame's actions
    shifted = int8_export.error_stats(np.roll(actual, 1, axis=0), expected)
    assert shifted["max_abs"] > INT8_MAX_ABS

    # the export is cached per calibration set: the same set reuses it, another set re-exports
    assert export_tflite(tiny_bundle, "int8", progress=False, calibration=cal) == path
    mtime = path.stat().st_mtime_ns
    export_tflite(tiny_bundle, "int8", progress=False, calibration=evaluation)
    assert path.stat().st_mtime_ns != mtime
    assert json.loads(path.with_suffix(".json").read_text())["calibration"]["inputs_digest"] == evaluation.digest()


def test_export_cli_with_bag_calibration_and_info_provenance(bags, tiny_bundle, capsys):
    _require(converter=True)
    from vla_accel.cli import main

    manifest, _ = bags
    assert main(["export", "--model", "tiny", "--format", "tflite", "--precision", "int8", "--calibration",
                 str(manifest.path), "--calibration-samples", "12", "--no-report", "--quiet"]) == 0
    out = capsys.readouterr().out
    import re

    found = re.search(r"calibration: (\d+) samples from rosbag", out)
    assert found and 9 <= int(found.group(1)) <= 12 and "tflite int8:" in out, out
    assert main(["info", "--model", "tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    entries = [e for e in info["int8_exports"] if (e.get("calibration") or {}).get("source") == "rosbag"]
    # the same recorded data (same fingerprint) gives the same inputs, hence the same cached model
    from vla_accel.bags.calibration import calibration_from_bag

    fingerprint = calibration_from_bag(manifest.path, tiny_bundle.spec, count=12).provenance["fingerprint"]
    assert entries and entries[0]["calibration"]["fingerprint"] == fingerprint
    assert main(["info", "--model", "tiny", "--no-spec"]) == 0
    assert f"calibrated on {found.group(1)} samples from rosbag" in capsys.readouterr().out
