"""int8 policy programs graph by graph (models/int8_program.py, benchmarks/int8_program.py): what is
refused, what a graph kept in float or left with float ops says, the time-input subgraph rule, and
(slow: exports and quantises both graphs of tiny-flow) the whole action chunk of the int8 program
against the fp32 torch program under the same seeded noise."""
from __future__ import annotations

import numpy as np
import pytest

from vla_accel.core.optional import module_available
from vla_accel.errors import ModelFileError

HAVE_ORT = module_available("onnx") and module_available("onnxruntime")
# tiny-flow on ONNX Runtime, prefix int8 + step A16W8, against fp32 torch on frames the calibration
# did not see: the full-integer goal. Measured: docs/measurements/int8_bench.json.
PROGRAM_MAX_ABS = 0.05
PROGRAM_MIN_DISPLACEMENT_CORRELATION = 0.99
HAVE_LITERT = all(module_available(m) for m in ("litert_torch", "ai_edge_quantizer", "ai_edge_litert"))
# tiny-flow on LiteRT with int8 everywhere (no float op): the runtime computes the time features, so
# the step graph has no trigonometry; its error stays near the goal (0.05 measured on the bench's
# frames), not below it, hence this regression bound (0.15 while the graph embedded the time itself).
LITERT_INT8_MAX_ABS = 0.08


@pytest.fixture(scope="module")
def flow_bundle():
    from vla_accel.models import load_model

    return load_model("tiny-flow")


def test_bad_requests_are_refused_before_any_export(flow_bundle, tiny_bundle):
    from vla_accel.models.calibration_set import CalibrationSet
    from vla_accel.models.int8_program import export_program_int8

    empty = CalibrationSet([{"x": np.zeros((1, 1), np.float32)}], {"source": "test"})
    with pytest.raises(ModelFileError, match="supports"):
        export_program_int8(flow_bundle, "tensorrt", {"prefix": empty, "step": empty})
    with pytest.raises(ModelFileError, match="single-pass"):
        export_program_int8(tiny_bundle, "onnx", {})
    with pytest.raises(ModelFileError, match=r"no calibration set for \['step'\]"):
        export_program_int8(flow_bundle, "onnx", {"prefix": empty})
    with pytest.raises(ModelFileError, match="unknown graphs"):
        export_program_int8(flow_bundle, "onnx", {"prefix": empty, "step": empty}, keep_float=("decoder",))
    with pytest.raises(ModelFileError, match="16 not with openvino"):
        export_program_int8(flow_bundle, "openvino", {"prefix": empty, "step": empty}, activation_bits={"step": 16})
    with pytest.raises(ModelFileError, match="onnx"):
        export_program_int8(flow_bundle, "tflite", {"prefix": empty, "step": empty}, float_time=True)


def test_graph_summaries_say_what_is_not_integer():
    from vla_accel.models.int8_program import GraphInt8

    assert GraphInt8("prefix", "p.tflite", "int8").full_integer
    left = GraphInt8("step", "s.tflite", "int8", float_ops=["SIN", "COS", "QUANTIZE", "QUANTIZE"])
    assert not left.full_integer and left.summary() == "step: int8 with 4 float ops (COS x1, QUANTIZE x2, SIN x1)"
    kept = GraphInt8("step", "s.onnx", "fp32", note="kept in float on request")
    assert not kept.full_integer and "kept fp32" in kept.summary()


@pytest.mark.skipif(not HAVE_ORT, reason="needs onnx and onnxruntime: pip install -r requirements/runtime.txt")
def test_time_input_subgraph_is_found():
    from onnx import TensorProto, helper, numpy_helper

    from vla_accel.models.int8_static import float_subgraph

    nodes = [helper.make_node("Mul", ["t", "scale"], ["angles"], name="angles"),
             helper.make_node("Sin", ["angles"], ["s"], name="sin"),
             helper.make_node("Cos", ["angles"], ["c"], name="cos"),
             helper.make_node("Concat", ["s", "c"], ["emb"], axis=-1, name="emb"),
             helper.make_node("Add", ["x", "emb"], ["y"], name="join")]  # x is data: quantised
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 2]),
                     helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.full((1, 2), 1000.0, np.float32), "scale")])
    model = helper.make_model(graph)
    assert float_subgraph(model, ("t",)) == ["angles", "sin", "cos", "emb"]
    assert float_subgraph(model, ("x",)) == []  # join also reads the time path: not x's alone


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_ORT, reason="needs onnx and onnxruntime: pip install -r requirements/runtime.txt")
def test_tiny_flow_int8_program_against_fp32(flow_bundle):
    from vla_accel.benchmarks.int8_program import (
        capture_graph_calibration, int8_program_sessions, program_error,
    )
    from vla_accel.models.calibration_set import synthetic_calibration
    from vla_accel.models.int8_program import export_program_int8

    observations = synthetic_calibration(flow_bundle.spec, 16)
    calibrations = capture_graph_calibration(flow_bundle, observations)
    # every graph is calibrated on what it receives: the step graph once per integration step
    assert calibrations["prefix"].samples == 16
    assert calibrations["step"].samples == 16 * flow_bundle.spec.program.steps
    assert set(calibrations["step"].batches[0]) == set(flow_bundle.spec.program.step.inputs)
    graphs = export_program_int8(flow_bundle, "onnx", calibrations, activation_bits={"step": 16})
    assert [g.precision for g in graphs.values()] == ["int8", "a16w8"]
    evaluation = synthetic_calibration(flow_bundle.spec, 4, seed=424242).batches
    stats = program_error(flow_bundle, int8_program_sessions("onnx", graphs), evaluation)
    assert stats["max_abs"] <= PROGRAM_MAX_ABS, stats
    assert stats["displacement_correlation"] >= PROGRAM_MIN_DISPLACEMENT_CORRELATION, stats
    # a broken program fails these bounds: another call's noise
    from vla_accel.benchmarks.int8_program import program_outputs, program_runner, torch_program_runner

    expected = program_outputs(torch_program_runner(flow_bundle), evaluation, 10_000)
    shifted = program_outputs(program_runner(flow_bundle, int8_program_sessions("onnx", graphs)), evaluation, 20_000)
    assert np.abs(shifted - expected).max() > PROGRAM_MAX_ABS


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_LITERT, reason="needs litert-torch, ai-edge-quantizer and ai-edge-litert: "
                    "pip install -r requirements/litert.txt")
def test_tiny_flow_litert_full_integer_against_fp32(flow_bundle):
    """The prefix graph int8 and the step graph A16W8 (16-bit activations, int8 weights): every op
    integer, the chunk within the full-integer goal; int8 everywhere is integer too."""
    from vla_accel.benchmarks.int8_program import (
        capture_graph_calibration, int8_program_sessions, program_error,
    )
    from vla_accel.models.calibration_set import synthetic_calibration
    from vla_accel.models.int8_export import tflite_float_ops
    from vla_accel.models.int8_program import export_program_int8

    observations = synthetic_calibration(flow_bundle.spec, 16)
    calibrations = capture_graph_calibration(flow_bundle, observations)
    evaluation = synthetic_calibration(flow_bundle.spec, 4, seed=424242).batches
    for bits, bound in (({"step": 16}, PROGRAM_MAX_ABS), ({}, LITERT_INT8_MAX_ABS)):
        graphs = export_program_int8(flow_bundle, "tflite", calibrations, activation_bits=bits)
        assert [g.precision for g in graphs.values()] == ["int8", "a16w8" if bits else "int8"]
        for graph in graphs.values():  # no float op: no SIN / COS, no QUANTIZE / DEQUANTIZE, no float kernel
            assert graph.full_integer and tflite_float_ops(graph.path) == [], graph.summary()
        stats = program_error(flow_bundle, int8_program_sessions("tflite", graphs), evaluation)
        assert stats["max_abs"] <= bound, (bits, stats)
        assert stats["correlation"] >= 0.99 and stats["displacement_correlation"] >= 0.99, (bits, stats)
