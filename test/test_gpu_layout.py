"""The reference network's GPU layout (fused attention, tokens padded to a tensor-core multiple, patch
embedding as a GEMM, fused LayerNorm) computes the same function: checked on the CPU against the
committed fp32 references (the GPU side is in test_cuda_backend.py)."""
from __future__ import annotations

import numpy as np
import pytest

from vla_accel.models.reference import TOLERANCES, load_reference

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("model", ["tiny", "tiny-2cam"])
def test_gpu_layout_matches_the_reference(model):
    from vla_accel.models import load_model

    bundle = load_model(model)
    case = load_reference(bundle)
    module = bundle.torch_module().use_gpu_layout()
    assert module.gpu_layout and module._pad_tokens == (-bundle.network_config.num_tokens) % 16
    args = [torch.from_numpy(case.inputs[name]) for name in bundle.spec.input_names]
    with torch.inference_mode():
        got = module(*args).numpy()
        module.use_gpu_layout(False)
        plain = module(*args).numpy()
    assert not module.gpu_layout
    assert np.max(np.abs(got - case.actions)) < TOLERANCES["fp32"]
    assert np.max(np.abs(plain - case.actions)) < TOLERANCES["fp32"]


def test_base_sequence_is_padded_to_a_multiple_of_16(base_bundle):
    from vla_accel.models.network import TOKEN_MULTIPLE, ReferenceVLA

    config = base_bundle.network_config
    with torch.device("meta"):
        module = ReferenceVLA(config).use_gpu_layout()
    assert config.num_tokens == 335 and (config.num_tokens + module._pad_tokens) % TOKEN_MULTIPLE == 0
    assert module._pad_tokens == 1
