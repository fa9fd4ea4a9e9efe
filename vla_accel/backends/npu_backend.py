"""``npu``: one friendly name for "the NPU of this board", whatever runtime drives it.

Order of preference (the first that is present wins; what was chosen is reported in DeviceInfo):
1. Intel NPU (Core Ultra) through OpenVINO device "NPU", when OpenVINO lists it in
   ``available_devices`` (the ``openvino`` backend does the work).
2. A vendor LiteRT external delegate: ``extra["delegate_path"]`` if configured, else one found at the
   known library names (NXP VX delegate on i.MX 8M Plus / i.MX 95, Arm Ethos-U on i.MX 93, TI TIDL,
   MediaTek Neuron; see litert_backend.KNOWN_EXTERNAL_DELEGATES). The model is the int8 export by
   default (NPUs run integer models); set precision to use another.
3. Otherwise BackendUnavailableError listing everything that was checked and how to install each.

probe() stays cheap: it looks for the Intel NPU device node (/dev/accel/accel*) and the delegate
libraries on disk, never importing OpenVINO or LiteRT.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Mapping

import numpy as np

from vla_accel.backends.base import Availability, Backend, BackendOptions, DeviceInfo

from vla_accel.core.optional import module_available
from vla_accel.errors import BackendUnavailableError

INTEL_NPU_HINT = (
    "Intel NPU: a Core Ultra CPU, the intel_vpu kernel driver (/dev/accel/accel0) and the NPU user-mode "
    "driver packages (intel-driver-compiler-npu, intel-fw-npu, intel-level-zero-npu from Intel's "
    "linux-npu-driver releases), plus pip install openvino."
)
ACCEL_NODES = "/dev/accel/accel*"


def intel_npu_device_nodes() -> list[str]:
    return sorted(glob.glob(ACCEL_NODES))


class NpuBackend(Backend):
    name = "npu"
    kind = "npu"
    precisions = ("int8", "fp16", "fp32")
    description = "the board's NPU: Intel NPU via OpenVINO, or a vendor LiteRT delegate (VX, Ethos-U, ...)"

    @classmethod
    def probe(cls) -> Availability:
        from vla_accel.backends.litert_backend import KNOWN_EXTERNAL_DELEGATES, find_known_external_delegate, litert_available

        nodes = intel_npu_device_nodes()
        if nodes and module_available("openvino"):
            return Availability(True, detail=f"Intel NPU device node {nodes[0]} and OpenVINO present")
        found = find_known_external_delegate() if litert_available() else None
        if found is not None:
            return Availability(True, detail=f"{found[1]}: {found[0]}")
        missing = []
        if not nodes:
            missing.append("Intel NPU (/dev/accel/accel* absent)")
        elif not module_available("openvino"):
            missing.append("openvino")
        missing.append("a vendor NPU delegate (" + ", ".join(lib for lib, _ in KNOWN_EXTERNAL_DELEGATES) + ")")
        if not litert_available():
            missing.append("ai-edge-litert")
        return Availability(False, tuple(missing), INTEL_NPU_HINT + " Or: " + _delegate_hint())

    def availability(self) -> Availability:
        # probe() cannot see a configured delegate_path; with one, its existence is checked in _load.
        if self.options.extra.get("delegate_path"):
            return Availability(True, detail="delegate_path configured; checked at load")
        return self.probe()

    def _load(self) -> None:
        checked: list[str] = []
        self._inner: Backend | None = None
        self._route = ""
        configured = self.options.extra.get("delegate_path")
        if not configured:
            inner = self._try_intel_npu(checked)
            if inner is not None:
                self._inner, self._route = inner, "openvino:NPU"
                return
        inner = self._try_vendor_delegate(checked)
        if inner is not None:
            self._inner = inner
            return
        raise BackendUnavailableError(self.name, checked, INTEL_NPU_HINT + " Or: " + _delegate_hint())

    def _try_intel_npu(self, checked: list[str]) -> Backend | None:
        if not module_available("openvino"):
            checked.append("openvino (not installed)")
            return None
        import openvino as ov

        devices = list(ov.Core().available_devices)
        if not any(d.startswith("NPU") for d in devices):
            checked.append(f"OpenVINO NPU device (available: {', '.join(devices) or 'none'})")
            return None
        from vla_accel.backends.openvino_backend import OpenVINOBackend

        precision = {"int8": "fp16", "fp32": "fp32", "fp16": "fp16"}[self.options.precision]
        options = dataclasses.replace(self.options, device="NPU", precision=precision, fault="")
        return OpenVINOBackend(self.model, options).load()

    def _try_vendor_delegate(self, checked: list[str]) -> Backend | None:
        from vla_accel.backends.litert_backend import (
            ExternalDelegateBackend,
            find_known_external_delegate,
            find_library_file,
            litert_available,
        )

        if not litert_available():
            checked.append("ai-edge-litert (not installed)")
            return None
        configured = self.options.extra.get("delegate_path")
        if configured:
            path = find_library_file(str(configured))
            if path is None:
                checked.append(f"configured delegate_path {configured} (does not exist)")
                return None
            self._route = f"litert:{os.path.basename(path)}"
        else:
            found = find_known_external_delegate()
            if found is None:
                checked.append("vendor NPU delegate libraries (none found)")
                return None
            path = found[0]
            self._route = f"litert:{os.path.basename(path)} ({found[1]})"
        extra = dict(self.options.extra, delegate_path=path)
        options = dataclasses.replace(self.options, extra=extra, fault="")
        try:
            return ExternalDelegateBackend(self.model, options).load()
        except BackendUnavailableError as exc:  # report it under the name the user asked for
            raise BackendUnavailableError(self.name, exc.missing, exc.hint) from exc

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._inner.infer(inputs)

    def _device_info(self) -> DeviceInfo:
        inner = self._inner.device_info()
        detail = dict(inner.detail)
        detail["route"] = self._route
        detail["runtime_backend"] = inner.backend
        return dataclasses.replace(inner, backend=self.name, kind="npu", detail=detail)

    def _close(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None

    @property
    def route(self) -> str:
        """Which runtime was chosen: "openvino:NPU" or "litert:<delegate library>"."""
        return self._route


def _delegate_hint() -> str:
    from vla_accel.backends.litert_backend import EXTERNAL_HINT

    return EXTERNAL_HINT


__all__ = ["NpuBackend", "BackendOptions"]
