"""The GPU layout of the reference policy programs (fused attention in the action expert and the
prefix, heads split once) computes what the plain layout computes, graph by graph, on the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_accel.core.spec import program_example_feeds
from vla_accel.models import load_model
from vla_accel.models.policy_network import use_gpu_layout


def _run_graphs(modules, spec, feeds):
    env = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
    outputs = {}
    with torch.inference_mode():
        for graph in spec.program.graphs:
            result = modules[graph.name](*[env[name] for name in graph.inputs])
            result = result if isinstance(result, tuple) else (result,)
            env.update(zip(graph.outputs, result))
            cache = getattr(spec.program.tokens, "cache", None) if spec.program.kind == "autoregressive" else None
            for present, past in (cache or {}).items():  # decoding: the step reads the cache it extends
                env[past] = env[present]
            outputs.update({f"{graph.name}.{n}": r.float().numpy() for n, r in zip(graph.outputs, result)})
    return outputs


@pytest.mark.parametrize("name", ["tiny-flow", "tiny-diffusion", "tiny-ar"])
def test_gpu_layout_matches_the_plain_layout(name):
    bundle = load_model(name)
    feeds = program_example_feeds(bundle.spec, batch=2, seed=3)
    plain = _run_graphs(bundle.graph_modules("cpu"), bundle.spec, feeds)
    fused_modules = use_gpu_layout(bundle.graph_modules("cpu"))
    assert any(getattr(m, "fused", False) for mod in fused_modules.values() for m in mod.modules())
    fused = _run_graphs(fused_modules, bundle.spec, feeds)
    assert plain.keys() == fused.keys()
    for key in plain:
        assert np.isfinite(fused[key]).all(), key
        scale = max(1.0, float(np.abs(plain[key]).max()))
        assert np.abs(fused[key] - plain[key]).max() <= 1e-4 * scale, key
