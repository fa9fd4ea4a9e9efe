"""Import torchvision's pure-Python parts where its compiled operators cannot load.

The torchvision wheel built for torch 2.13.0 on the package registries is a CUDA build: its ``_C``
extension links libtorch_cuda / libc10_cuda, which a CPU build of torch lacks. torchvision then loads
without its operators (nms, roi_align, deform_conv2d ...), as it is designed to, except that its
``_meta_registrations`` module registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms``
unconditionally, and ``import torchvision`` fails with "operator torchvision::nms does not exist".

``import_torchvision()`` declares those two operator schemas (no kernels) when the extension did not
load, then imports torchvision. Models built from its pure-Python modules (the ResNet backbones of ACT
and Diffusion Policy, ``IntermediateLayerGetter``, ``FrozenBatchNorm2d``) run normally on the CPU
build; calling one of the missing operators still fails with torchvision's own clear error.
"""
from __future__ import annotations

import importlib
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # kept alive: dropping a torch.library.Library removes its definitions


def _extension_loads() -> bool:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    from pathlib import Path

    for folder in spec.submodule_search_locations:
        for lib in Path(folder).glob("_C*.so"):
            try:
                torch.ops.load_library(str(lib))
                return True
            except (OSError, RuntimeError):
                return False
    return False


def import_torchvision():
    """``import torchvision``, declaring the operator schemas its import needs when its compiled
    extension cannot load beside this torch build. Returns the module."""
    global _library
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    import torch

    if _library is None and not _extension_loads():
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS.values():
            try:
                lib.define(schema)
            except RuntimeError:  # already declared (another import path did it): keep that one
                pass
        _library = lib
    import torchvision

    return torchvision
