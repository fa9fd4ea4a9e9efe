"""``triton``: the policy runs on a Triton Inference Server (``vla-accel serve``), reached over
KServe v2 gRPC with ``tritonclient``; only numpy tensors travel (no pickle anywhere).

The backend talks to the policy's *graph* model (``<name>_graph``, see vla_accel.backends.triton_protocol):
the same graph tensors in and raw actions out as every local backend, so the node's
pre/post-processing, metrics and a FallbackChain with a local backend behind it work unchanged.

At load it checks the server is live, the model ready, and that the model's metadata and config
(input names, datatypes, per-sample shapes, output shape, max_batch_size) match the spec, as every
other backend checks its graph. Transport failures raise BackendError with a reason the
FallbackChain switches on: ``server_unreachable``, ``timeout`` or ``server_error``; input the server
rejects as malformed raises InputError (``server_rejected_input``), which no other backend would
accept either.

Options (BackendOptions.extra):
  url            host:port of the server's gRPC endpoint (default localhost:8001)
  model          Triton model name (default: <spec name>_graph)
  model_version  "" = the server's latest
  timeout_s      per-request deadline in seconds (default 1.0); also bounds load-time checks
  ssl            true: TLS; root_certificates / private_key / certificate_chain: PEM file paths
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from vla_accel.backends.base import Availability, Backend, DeviceInfo, gather_inputs
from vla_accel.core.optional import module_available
from vla_accel.errors import BackendError, InputError

TRITON_HINT = "Install the Triton client: pip install 'tritonclient[grpc]' (see requirements/triton-client.txt)."
DEFAULT_URL = "localhost:8001"
DEFAULT_TIMEOUT_S = 1.0


def classify(exc: BaseException) -> tuple[str, bool]:
    """(reason, is_input_error) of a tritonclient exception from its gRPC status."""
    status = str(getattr(exc, "status", lambda: "")() or "")
    text = str(exc)
    if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in text:
        return "timeout", False
    if "UNAVAILABLE" in status or "failed to connect" in text.lower() or "Socket closed" in text:
        return "server_unreachable", False
    if "INVALID_ARG" in status or "unexpected shape" in text or "unexpected datatype" in text:
        return "server_rejected_input", True
    return "server_error", False


class TritonBackend(Backend):
    name = "triton"
    kind = "remote"
    precisions = ("fp32", "fp16", "bf16", "int8")  # whatever the server runs; fp32 actions come back
    description = "a Triton Inference Server (vla-accel serve) over KServe v2 gRPC, with local fallback"

    @classmethod
    def probe(cls) -> Availability:
        missing = tuple(m for m in ("tritonclient", "grpc") if not module_available(m))
        if missing:
            return Availability(False, missing, TRITON_HINT)
        return Availability(True, detail="tritonclient[grpc] importable (a server is checked at load)")

    # --- load -----------------------------------------------------------------------------------
    def _option(self, key: str, default: Any) -> Any:
        value = self.options.extra.get(key, default)
        return default if value in (None, "") else value

    def _load(self) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        from vla_accel.backends import triton_protocol as protocol

        self._grpc = grpcclient
        self._error_type = InferenceServerException
        self.url = str(self._option("url", DEFAULT_URL))
        self.model_name = str(self._option("model", protocol.triton_name(self.spec.name) + protocol.GRAPH_SUFFIX))
        self.model_version = str(self._option("model_version", ""))
        self.timeout_s = float(self._option("timeout_s", DEFAULT_TIMEOUT_S))
        if self.timeout_s <= 0:
            raise BackendError(f"backend 'triton': timeout_s must be > 0, got {self.timeout_s}", reason="bad_option")
        ssl = bool(self._option("ssl", False))
        pem = {}
        for key in ("root_certificates", "private_key", "certificate_chain"):
            path = self._option(key, "")
            if path:
                try:
                    with open(path, "rb") as handle:
                        pem[key] = handle.read()
                except OSError as exc:
                    raise BackendError(f"backend 'triton': cannot read {key} {path}: {exc}", reason="bad_option") from exc
        try:
            if ssl:
                import grpc

                creds = grpc.ssl_channel_credentials(pem.get("root_certificates"), pem.get("private_key"),
                                                     pem.get("certificate_chain"))
                self.client = grpcclient.InferenceServerClient(self.url, ssl=True, creds=creds)
            else:
                self.client = grpcclient.InferenceServerClient(self.url)
        except (InferenceServerException, ValueError) as exc:
            raise BackendError(f"backend 'triton': bad server url {self.url!r}: {exc}", reason="bad_option") from exc
        try:
            self._check_server()
        except BaseException:
            self.client.close()
            raise

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, client_timeout=self.timeout_s, **kwargs)
        except self._error_type as exc:
            reason, _ = classify(exc)
            raise BackendError(f"backend 'triton': {what} at {self.url} failed: {exc}", reason=reason) from exc

    def _check_server(self) -> None:
        from vla_accel.backends import triton_protocol as protocol

        if not self._call("server live check", self.client.is_server_live):
            raise BackendError(f"backend 'triton': server at {self.url} is not live", reason="server_unreachable")
        if not self._call("model ready check", self.client.is_model_ready, self.model_name, self.model_version):
            raise BackendError(f"backend 'triton': model '{self.model_name}' is not ready on {self.url} "
                               f"(serve it with `vla-accel serve --model {self.spec.name}`)", reason="model_not_ready")
        meta = self._call("model metadata", self.client.get_model_metadata, self.model_name, self.model_version,
                          as_json=True)
        config = self._call("model config", self.client.get_model_config, self.model_name, self.model_version,
                            as_json=True)["config"]
        self.server_max_batch = int(config.get("max_batch_size", 0))
        if self.server_max_batch < 1:
            raise BackendError(f"backend 'triton': model '{self.model_name}' has no batch dimension "
                               "(max_batch_size 0); serve it with `vla-accel serve`", reason="spec_mismatch")
        if self.options.max_batch > self.server_max_batch:
            raise BackendError(f"backend 'triton': this node batches up to {self.options.max_batch}, the server's "
                               f"model takes {self.server_max_batch} (raise --max-batch on the server)",
                               reason="spec_mismatch")
        expected = protocol.graph_signature(self.spec)
        served = {t["name"]: (tuple(int(d) for d in t["shape"][1:]), t["datatype"]) for t in meta.get("inputs", [])}
        problems = []
        for name, (dims, dtype) in expected.items():
            if name not in served:
                problems.append(f"input '{name}' missing on the server")
            elif served[name] != (dims, dtype):
                problems.append(f"input '{name}': server has {served[name][1]}{list(served[name][0])}, "
                                f"the spec needs {dtype}{list(dims)}")
        for name in sorted(set(served) - set(expected)):
            problems.append(f"server input '{name}' is not fed by the spec")
        outputs = {t["name"]: (tuple(int(d) for d in t["shape"][1:]), t["datatype"]) for t in meta.get("outputs", [])}
        want_out = (protocol.output_dims(self.spec), "FP32")
        if outputs.get(self.spec.action.output) != want_out:
            problems.append(f"output '{self.spec.action.output}': server has {outputs.get(self.spec.action.output)}, "
                            f"the spec needs {want_out}")
        if problems:
            raise BackendError(f"backend 'triton': model '{self.model_name}' on {self.url} does not match spec "
                               f"'{self.spec.name}': {'; '.join(problems)}", reason="spec_mismatch")
        self.server_version = str(self._call("server metadata", self.client.get_server_metadata,
                                             as_json=True).get("version", ""))
        self._output_request = [self._grpc.InferRequestedOutput(self.spec.action.output)]

    # --- run ------------------------------------------------------------------------------------
    def healthy(self) -> bool:
        """Server live and model ready within timeout_s (never raises)."""
        try:
            return bool(self.client.is_server_live(client_timeout=self.timeout_s)
                        and self.client.is_model_ready(self.model_name, self.model_version,
                                                       client_timeout=self.timeout_s))
        except Exception:  # noqa: BLE001 - any failure means: not healthy
            return False

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from vla_accel.backends import triton_protocol as protocol

        batch, arrays = gather_inputs(self.spec, inputs, self.server_max_batch, self.name)
        request = []
        for name, array in arrays.items():
            tensor = self._grpc.InferInput(name, list(array.shape), protocol.datatype(array.dtype))
            tensor.set_data_from_numpy(array)
            request.append(tensor)
        try:
            result = self.client.infer(self.model_name, request, model_version=self.model_version,
                                       outputs=self._output_request, client_timeout=self.timeout_s)
        except self._error_type as exc:
            reason, bad_input = classify(exc)
            if bad_input:
                raise InputError(f"backend 'triton': the server rejected the request: {exc}", reason=reason) from exc
            raise BackendError(f"backend 'triton': inference on {self.url} failed ({reason}): {exc}",
                               reason=reason) from exc
        actions = result.as_numpy(self.spec.action.output)
        expected = (batch, *protocol.output_dims(self.spec))
        if actions is None or actions.shape != expected or actions.dtype != np.float32:
            got = None if actions is None else (actions.shape, actions.dtype)
            raise BackendError(f"backend 'triton': server returned {got}, expected {expected} float32",
                               reason="server_error")
        return {self.spec.action.output: actions}

    def _device_info(self) -> DeviceInfo:
        return DeviceInfo(
            backend=self.name,
            device=self.url,
            kind="remote",
            parallel_units=0,  # the server's hardware is not visible from here
            precision=self.options.precision,
            runtime_version=f"triton {self.server_version}",
            detail={"url": self.url, "model": self.model_name, "model_version": self.model_version or "latest",
                    "server_max_batch": self.server_max_batch, "timeout_s": self.timeout_s},
        )

    def _close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a dead channel may fail; nothing to release then
                pass
