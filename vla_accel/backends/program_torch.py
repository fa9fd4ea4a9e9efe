"""Policy programs on torch modules (the ``torch`` and ``cuda`` backends): graph sessions over the
reference program's modules, and tensor operations on the module's device, so tensors passed between
graphs (KV caches, prefix features) stay where they were computed. Imported only in a load path."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from vla_accel.backends.program import GraphSignature


class TorchOps:
    def __init__(self, device: "torch.device | str" = "cpu"):
        self.device = torch.device(device)

    def upload(self, array):
        if isinstance(array, torch.Tensor):
            return array
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=True)

    def download(self, tensor) -> np.ndarray:
        if isinstance(tensor, torch.Tensor):
            return tensor.detach().float().cpu().numpy() if tensor.is_floating_point() else tensor.cpu().numpy()
        return np.asarray(tensor)

    def argmax(self, tensor):
        return torch.argmax(tensor, dim=-1).to(torch.int64).reshape(-1, 1)

    def clip(self, tensor, low: float, high: float):
        return torch.clamp(tensor, low, high)

    def full(self, shape, value, dtype: str, like=None):
        return torch.full(tuple(shape), value, dtype=getattr(torch, dtype), device=self.device)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class TorchGraphSession:
    """One graph's module; run(feeds) -> outputs by name, all torch tensors on the module's device."""

    def __init__(self, module: torch.nn.Module, inputs: tuple[str, ...], outputs: tuple[str, ...]):
        self.module = module
        self.inputs = inputs
        self.outputs = outputs

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        with torch.inference_mode():
            result = self.module(*[feeds[name] for name in self.inputs])
        if not isinstance(result, tuple):
            result = (result,)
        return dict(zip(self.outputs, result))

    def signature(self) -> GraphSignature | None:
        return None


def torch_program(bundle, device="cpu", dtype=None):
    """(graph name -> TorchGraphSession, TorchOps) for a reference program."""
    modules = bundle.graph_modules(device, dtype)
    sessions = {g.name: TorchGraphSession(modules[g.name], g.inputs, g.outputs) for g in bundle.spec.program.graphs}
    return sessions, TorchOps(device)
