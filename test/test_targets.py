"""``vla-accel doctor --target``: integer-accelerator mapping of the tiny int8 model (Ethos-U through
ethos-u-vela, the Edge TPU's published rules), target parsing, and buffer re-serialisation."""
from __future__ import annotations

import numpy as np
import pytest

from vla_accel.core.optional import module_available
from vla_accel.commands.targets import EDGETPU_OPS, edgetpu, ethos_u, inline_buffers, parse_target, too_many_dims
from vla_accel.errors import VlaAccelError

HAVE_CONVERTER = module_available("litert_torch") and module_available("ai_edge_quantizer")
HAVE_VELA = module_available("ethosu")
LOOKUP_OPS = {"GATHER_ND", "GREATER_EQUAL", "LESS", "LESS_EQUAL", "LOGICAL_AND", "REDUCE_ALL", "RESHAPE",
              "SELECT", "SELECT_V2"}


def test_parse_target():
    assert parse_target("ethos-u55") == ("ethos-u", "ethos-u55-128")
    assert parse_target("Ethos-U85-256") == ("ethos-u", "ethos-u85-256")
    assert parse_target("edgetpu") == ("edgetpu", "")
    assert parse_target("qnn:57") == ("qnn", "57") and parse_target("qnn") == ("qnn", "43")
    with pytest.raises(VlaAccelError, match="unknown target"):
        parse_target("hailo8")


def test_edgetpu_rules_follow_corals_published_list():
    # coral.ai/docs/edgetpu/models-intro: QUANTIZE is supported, DEQUANTIZE is not; no gather / batch matmul
    assert "QUANTIZE" in EDGETPU_OPS and "DEQUANTIZE" not in EDGETPU_OPS
    assert not {"GATHER", "GATHER_ND", "BATCH_MATMUL", "LESS", "SELECT"} & EDGETPU_OPS
    # only the 3 innermost dimensions may be larger than 1
    assert not too_many_dims((1, 4, 96, 96)) and not too_many_dims((96, 96)) and too_many_dims((2, 4, 96, 96))


@pytest.fixture(scope="module")
def int8_tflite(tiny_bundle):
    if not HAVE_CONVERTER:
        pytest.skip("tflite converter missing: litert-torch; install with pip install -r requirements/litert.txt")
    from vla_accel.models.export_tflite import export_tflite

    return export_tflite(tiny_bundle, "int8", progress=False)


def test_reserialised_model_runs_the_same(int8_tflite, tmp_path, tiny_bundle):
    from vla_accel.models.calibration_set import synthetic_calibration
    from vla_accel.models.int8_export import run_tflite

    copy = tmp_path / "inline.tflite"
    inline_buffers(int8_tflite, copy)
    batches = synthetic_calibration(tiny_bundle.spec, 1).batches
    out = tiny_bundle.spec.action.output
    assert np.array_equal(run_tflite(copy, batches, out), run_tflite(int8_tflite, batches, out))


def test_edgetpu_rules_on_tiny(int8_tflite):
    result = edgetpu(int8_tflite)
    assert 0 < result["ops_passing_rules"] < result["ops"]
    # the instruction lookup (with its index checks) is what the Edge TPU cannot take; no float op
    assert any(entry.startswith("GATHER_ND") for entry in result["unsupported"])
    assert not any("float" in entry for entry in result["unsupported"])


@pytest.mark.skipif(not HAVE_VELA, reason="Ethos-U compiler missing: pip install -r requirements/quantization.txt "
                                          "(ethos-u-vela)")
def test_ethos_u55_maps_all_but_the_lookup(int8_tflite):
    result = ethos_u(int8_tflite, "ethos-u55-128")
    assert result["npu_ops"] > 300 and 0 < result["cpu_ops"] <= len(LOOKUP_OPS)
    assert set(result["cpu_op_types"]) <= LOOKUP_OPS, result["cpu_reasons"]
    assert result["estimate_ms"] > 0 and result["sram_kib"] > 0
