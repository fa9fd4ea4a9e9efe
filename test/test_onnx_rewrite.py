"""The HTP graph rewrite (models/onnx_rewrite.py): a written-out LayerNorm, as the reference network
exports it, folds into one LayerNormalization with the same outputs; anything that only looks like
one is left alone and said so."""
from __future__ import annotations

import numpy as np
import pytest

from vla_accel.core.optional import module_available
from vla_accel.errors import ModelFileError

pytestmark = pytest.mark.skipif(not (module_available("onnx") and module_available("onnxruntime")),
                                reason="needs onnx and onnxruntime: pip install -r requirements/runtime.txt")


def _written_out_layer_norm(opset: int = 18, leak_centred: bool = False):
    """y = LayerNorm(x) * w + b written as the network exports it, then a MatMul (what follows a
    LayerNorm in the network). ``leak_centred`` also sends the centred tensor to a graph output:
    then the chain is not self-contained and must not be fused."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    width = 16
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
             numpy_helper.from_array(rng.normal(1.0, 0.2, width).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0.0, 0.2, width).astype(np.float32), "b"),
             numpy_helper.from_array(rng.normal(0.0, 0.3, (width, 4)).astype(np.float32), "proj")]
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1, name="mean"),
             helper.make_node("Sub", ["x", "m"], ["c"], name="sub"),
             helper.make_node("Mul", ["c", "c"], ["sq"], name="square"),
             helper.make_node("ReduceMean", ["sq", "axes"], ["v"], keepdims=1, name="mean_sq"),
             helper.make_node("Add", ["v", "eps"], ["ve"], name="add_eps"),
             helper.make_node("Sqrt", ["ve"], ["s"], name="sqrt"),
             helper.make_node("Reciprocal", ["s"], ["r"], name="rsqrt"),
             helper.make_node("Mul", ["c", "r"], ["n"], name="normed"),
             helper.make_node("Mul", ["n", "w"], ["nw"], name="scaled"),
             helper.make_node("Add", ["nw", "b"], ["y"], name="shifted"),
             helper.make_node("MatMul", ["y", "proj"], ["out"], name="head")]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 5, 4])]
    if leak_centred:
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, 5, width]))
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, width])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _run(model, x):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["out"], {"x": x})[0]


def test_written_out_layer_norm_folds_into_one_node_with_the_same_outputs():
    import onnx

    from vla_accel.models.onnx_rewrite import fuse_layer_norms

    model = _written_out_layer_norm()
    x = np.random.default_rng(1).normal(0.3, 2.0, (2, 5, 16)).astype(np.float32)
    before = _run(model, x)
    result = fuse_layer_norms(model)
    onnx.checker.check_model(model)
    assert result.fused == 1 and result.skipped == []
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["LayerNormalization", "MatMul"], ops
    fused = model.graph.node[0]
    assert list(fused.input) == ["x", "w", "b"] and list(fused.output) == ["y"]
    assert {i.name for i in model.graph.initializer} == {"w", "b", "proj"}  # axes / eps dropped
    after = _run(model, x)
    assert np.abs(after - before).max() < 1e-5
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in fused.attribute}
    assert attrs["axis"] == -1 and attrs["epsilon"] == pytest.approx(1e-6)  # the graph's own epsilon


def test_a_chain_that_is_used_elsewhere_or_an_old_opset_is_not_fused():
    from vla_accel.models.onnx_rewrite import fuse_layer_norms

    leaky = _written_out_layer_norm(leak_centred=True)
    result = fuse_layer_norms(leaky)
    assert result.fused == 0 and result.skipped == ["rsqrt"]
    assert [n.op_type for n in leaky.graph.node].count("Reciprocal") == 1
    with pytest.raises(ModelFileError, match="opset >= 17"):
        fuse_layer_norms(_written_out_layer_norm(opset=13))
