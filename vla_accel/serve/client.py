"""Robot-side client of a served policy (the *policy* model): raw camera frames, instruction text
and joint state go out as KServe v2 tensors; un-normalised, clipped action chunks come back.

    policy = RemotePolicy("gpu-server:8001", "tiny")
    actions = policy.infer({"primary": frame_hxwx3_uint8}, "pick up the cup", state)  # (steps, dims)

Errors: BackendError (reason server_unreachable / timeout / server_error) when the server cannot
answer, InputError (server_rejected_input) when it refused this request's tensors.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from vla_accel.errors import BackendError, InputError
from vla_accel.backends import triton_protocol as protocol


class RemotePolicy:
    def __init__(self, url: str, model: str, *, timeout_s: float = 5.0, cameras: Sequence[str] | None = None,
                 ssl: bool = False, root_certificates: str | None = None):
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        self._grpc = grpcclient
        self._error = InferenceServerException
        self.url, self.model, self.timeout_s = url, model, float(timeout_s)
        if ssl or root_certificates:  # TLS; root_certificates: PEM file of the CA that signed the server's
            import grpc

            pem = None
            if root_certificates:
                with open(root_certificates, "rb") as handle:
                    pem = handle.read()
            self.client = grpcclient.InferenceServerClient(url, ssl=True, creds=grpc.ssl_channel_credentials(pem))
        else:
            self.client = grpcclient.InferenceServerClient(url)
        meta = self._call(self.client.get_model_metadata, model, as_json=True)
        self.inputs = {t["name"]: t for t in meta["inputs"]}
        self.cameras = list(cameras) if cameras else [n[len("image_"):] for n in self.inputs if n.startswith("image_")]
        self.has_state = protocol.STATE in self.inputs
        self._outputs = [grpcclient.InferRequestedOutput(protocol.ACTIONS)]

    def _call(self, fn, *args, **kwargs):
        from vla_accel.backends.triton_backend import classify

        try:
            return fn(*args, client_timeout=self.timeout_s, **kwargs)
        except self._error as exc:
            reason, bad_input = classify(exc)
            if bad_input:
                raise InputError(f"policy server {self.url} rejected the request: {exc}", reason=reason) from exc
            raise BackendError(f"policy server {self.url}: {exc}", reason=reason) from exc

    def infer_batch(self, images: Mapping[str, np.ndarray], instructions: Sequence[str],
                    state: np.ndarray | None = None) -> np.ndarray:
        """images: camera -> (N, H, W, 3) uint8; N instructions; state (N, dims) -> (N, steps, dims)."""
        n = len(instructions)
        tensors = []
        for cam in self.cameras:
            frames = np.ascontiguousarray(images[cam])
            tensor = self._grpc.InferInput(protocol.camera_input(cam), list(frames.shape), protocol.datatype(frames.dtype))
            tensor.set_data_from_numpy(frames)
            tensors.append(tensor)
        text = np.array([[s.encode("utf-8")] for s in instructions], dtype=object)
        tensor = self._grpc.InferInput(protocol.INSTRUCTION, [n, 1], "BYTES")
        tensor.set_data_from_numpy(text)
        tensors.append(tensor)
        if self.has_state:
            rows = np.ascontiguousarray(state, dtype=np.float32).reshape(n, -1)
            tensor = self._grpc.InferInput(protocol.STATE, list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows)
            tensors.append(tensor)
        result = self._call(self.client.infer, self.model, tensors, outputs=self._outputs)
        return result.as_numpy(protocol.ACTIONS)

    def infer(self, images: Mapping[str, np.ndarray], instruction: str, state: np.ndarray | None = None) -> np.ndarray:
        batch = self.infer_batch({k: v[None] for k, v in images.items()}, [instruction],
                                 None if state is None else np.asarray(state)[None])
        return batch[0]

    def statistics(self) -> dict:
        """The server's inference statistics for this model (batch sizes it formed, queue times)."""
        return self._call(self.client.get_inference_statistics, self.model, as_json=True)

    def close(self) -> None:
        self.client.close()


def batch_counts(statistics: Mapping) -> dict[int, int]:
    """batch size -> executions, from a get_inference_statistics(as_json=True) answer."""
    counts: dict[int, int] = {}
    for model in statistics.get("model_stats", []):
        for entry in model.get("batch_stats", []):
            size = int(entry["batch_size"])
            counts[size] = counts.get(size, 0) + int(entry.get("compute_infer", {}).get("count", 0))
    return counts


STAGES = ("queue", "compute_input", "compute_infer", "compute_output", "success")


def stage_totals(statistics: Mapping) -> dict[str, tuple[int, int]]:
    """stage -> (count, total ns) from a get_inference_statistics(as_json=True) answer: time requests
    waited in the batcher's queue and the server's input / inference / output stages."""
    totals: dict[str, tuple[int, int]] = {}
    for model in statistics.get("model_stats", []):
        stats = model.get("inference_stats", {})
        for stage in STAGES:
            entry = stats.get(stage, {})
            count, ns = totals.get(stage, (0, 0))
            totals[stage] = (count + int(entry.get("count", 0)), ns + int(entry.get("ns", 0)))
    return totals


def stage_means_ms(before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]]) -> dict[str, float]:
    """Mean ms per request of each server stage between two stage_totals readings."""
    out: dict[str, float] = {}
    for stage, (count, ns) in after.items():
        c0, n0 = before.get(stage, (0, 0))
        if count > c0:
            out[stage] = round((ns - n0) / (count - c0) / 1e6, 3)
    return out
