"""Graph rewrites applied to an fp32 ONNX model before it is quantised for an integer accelerator.

``fuse_layer_norms``: the reference network writes LayerNorm out (mean, centred square, sqrt,
reciprocal, scale, shift) so that TFLite converters emit ops every integer NPU compiler maps. In a
static QDQ model each of those intermediates gets its own 8-bit range, and the Qualcomm HTP runs the
quantised ``Reciprocal`` of that chain wrongly: on the HTP (emulated by onnxruntime-qnn 2.7 / QAIRT
2.51) its output is ~0.57x the true value for every row, whatever the activation width (8 or 16
bits), which scales every LayerNorm output, the final one straight into the actions. The HTP has a
native LayerNorm kernel that keeps the statistics at full precision inside, so for the HTP flavours
the written-out chain is folded back into one ONNX ``LayerNormalization`` (opset >= 17): the
quantiser then puts QDQ around its input and output only, and the variance, sqrt and reciprocal are
never rounded to 8 bits.

The pattern matched is exactly what ``models.network.LayerNorm`` exports (ONNX opset 18)::

    m = ReduceMean(x, axes=[-1], keepdims=1)      c = Sub(x, m)
    v = ReduceMean(Mul(c, c), axes=[-1], keepdims=1)
    r = Reciprocal(Sqrt(Add(v, eps)))             y = Add(Mul(Mul(c, r), weight), bias)

with ``eps``, ``weight`` and ``bias`` initializers and every intermediate used only inside the
chain; anything else is left untouched (counted in the result).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla_accel.errors import ModelFileError


@dataclass
class RewriteResult:
    fused: int = 0
    skipped: list[str] = field(default_factory=list)  # Reciprocal nodes that looked like a LayerNorm but did not match

    def record(self) -> dict[str, Any]:
        return {"layer_norms_fused": self.fused, "layer_norm_candidates_left": self.skipped}


def _reduce_axes(node, inits: dict[str, np.ndarray]) -> list[int] | None:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if int(attrs.get("keepdims", 1)) != 1:
        return None
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if len(node.input) > 1 and node.input[1] in inits:
        return [int(a) for a in np.asarray(inits[node.input[1]]).ravel()]
    return None


def fuse_layer_norms(model) -> RewriteResult:
    """Fold every written-out LayerNorm of ``model`` (an ``onnx.ModelProto``, changed in place)
    into one ``LayerNormalization`` node. Raises for an opset below 17 (no such op there)."""
    from onnx import helper, numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 17:
        raise ModelFileError(f"LayerNormalization needs ONNX opset >= 17; the model has {opset}",
                             reason="bad_model_file")
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in dict.fromkeys(n.input):  # a node reading a tensor twice (Mul(c, c)) is one user
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    result = RewriteResult()
    remove: set[int] = set()
    insert: dict[int, Any] = {}  # position of the chain's last node -> the fused node
    index = {id(n): k for k, n in enumerate(graph.node)}

    def only(name: str, op: str, users: int = 1):
        """The single consumer of ``name`` with type ``op`` (None if it has other users)."""
        found = consumers.get(name, [])
        if name in outputs or len(found) != users or any(n.op_type != op for n in found):
            return None
        return found[0]

    for recip in [n for n in graph.node if n.op_type == "Reciprocal"]:
        try:
            sqrt = producer[recip.input[0]]
            add_eps = producer[sqrt.input[0]]
            assert sqrt.op_type == "Sqrt" and add_eps.op_type == "Add" and only(sqrt.output[0], "Reciprocal")
            assert only(add_eps.output[0], "Sqrt")
            var_name, eps_name = add_eps.input
            if var_name in inits:
                var_name, eps_name = eps_name, var_name
            eps = float(np.asarray(inits[eps_name]).ravel()[0])
            assert np.asarray(inits[eps_name]).size == 1
            mean_sq = producer[var_name]
            assert mean_sq.op_type == "ReduceMean" and _reduce_axes(mean_sq, inits) == [-1]
            assert only(mean_sq.output[0], "Add")
            square = producer[mean_sq.input[0]]
            assert square.op_type == "Mul" and square.input[0] == square.input[1]
            assert only(square.output[0], "ReduceMean")
            centred = producer[square.input[0]]
            assert centred.op_type == "Sub"
            x_name, mean_name = centred.input
            mean = producer[mean_name]
            assert mean.op_type == "ReduceMean" and _reduce_axes(mean, inits) == [-1] and mean.input[0] == x_name
            assert only(mean.output[0], "Sub")
            users = consumers.get(centred.output[0], [])
            assert len(users) == 2 and centred.output[0] not in outputs  # the square and the scale
            normed = only(recip.output[0], "Mul")
            assert normed is not None and set(normed.input) == {centred.output[0], recip.output[0]}
            scaled = only(normed.output[0], "Mul")
            assert scaled is not None
            weight = next(i for i in scaled.input if i != normed.output[0])
            assert weight in inits and inits[weight].ndim == 1
            shifted = only(scaled.output[0], "Add")
            assert shifted is not None
            bias = next(i for i in shifted.input if i != scaled.output[0])
            assert bias in inits and inits[bias].shape == inits[weight].shape
        except (AssertionError, KeyError, StopIteration, ValueError, IndexError):
            result.skipped.append(recip.name or recip.output[0])
            continue
        chain = (mean, centred, square, mean_sq, add_eps, sqrt, recip, normed, scaled, shifted)
        fused = helper.make_node("LayerNormalization", [x_name, weight, bias], [shifted.output[0]],
                                 name=f"{shifted.name or shifted.output[0]}_layernorm", axis=-1, epsilon=eps)
        remove.update(index[id(n)] for n in chain)
        insert[index[id(shifted)]] = fused
        result.fused += 1
    if result.fused:
        nodes = []
        for k, node in enumerate(graph.node):
            if k in insert:
                nodes.append(insert[k])
            elif k not in remove:
                nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        used = {i for n in graph.node for i in n.input}
        keep = [i for i in graph.initializer if i.name in used or i.name in outputs]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        produced = {o for n in graph.node for o in n.output}
        infos = [v for v in graph.value_info if v.name in produced]
        del graph.value_info[:]
        graph.value_info.extend(infos)
    return result
