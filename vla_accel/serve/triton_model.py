"""The Triton Python-backend model that serves a vla_accel policy (runs inside ``tritonserver``).

One instance loads the model and its local backend once (``initialize``), then each ``execute`` call
receives the requests the dynamic batcher grouped, runs them as ONE batch through the backend and
answers every request with its own slice. A request that is bad (undecodable instruction, image
too large, wrong state size) gets an error response naming the problem; the other requests of the
same batch are still answered, and the server keeps serving.

Levels (see vla_accel.backends.triton_protocol): ``policy`` runs vla_accel's Preprocessor -> backend ->
Postprocessor on raw frames; ``graph`` runs the backend on preprocessed graph tensors.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np

from vla_accel.errors import InputError, VlaAccelError
from vla_accel.backends import triton_protocol as protocol

log = logging.getLogger("vla_accel.serve")


class _Bad(Exception):
    """A request that cannot run; its message goes back to that client."""


class TritonPythonModel:
    """Triton calls initialize(args), execute(requests) and finalize()."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        from vla_accel.backends.base import BackendOptions
        from vla_accel.backends.registry import create_backend
        from vla_accel.core.engine import Engine
        from vla_accel.models import load_model

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.level = params.get("vla_level", "policy")
        self.max_batch = max(1, int(config.get("max_batch_size", 1)))
        self.max_pixels = int(params.get("vla_max_image_pixels", str(4096 * 4096)))
        opts = json.loads(params.get("vla_backend_options") or "{}")
        self.bundle = load_model(params["vla_model"], cache_dir=params.get("vla_cache_dir") or None)
        self.spec = self.bundle.spec
        options = BackendOptions(device=str(opts.get("device", "")), precision=str(opts.get("precision", "fp32")),
                                 threads=int(opts.get("threads", 0)), max_batch=self.max_batch,
                                 extra=dict(opts.get("extra", {})))
        self.backend = create_backend(params["vla_backend"], self.bundle, options)
        self.backend.load()
        self.backend.warmup(1, 2)
        if self.max_batch > 1:
            self.backend.warmup(self.max_batch, 1)
        self.engine = Engine(self.bundle, self.backend, max_batch=self.max_batch) if self.level == "policy" else None
        self.output = protocol.ACTIONS if self.level == "policy" else self.spec.action.output
        self.cameras = [(cam.name, protocol.camera_input(cam.name)) for cam in self.spec.cameras]
        log.info("vla_accel policy %s (%s level) on %s, max batch %d", self.bundle.name, self.level,
                 params["vla_backend"], self.max_batch)

    # --- per request ------------------------------------------------------------------------------
    def _input(self, request, name: str) -> np.ndarray:
        tensor = self.pb.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise _Bad(f"missing input tensor '{name}'")
        return tensor.as_numpy()

    def _observations(self, request) -> list:
        from vla_accel.core.types import Observation

        images = {cam: self._input(request, name) for cam, name in self.cameras}
        texts = self._input(request, protocol.INSTRUCTION).reshape(-1)
        n = len(texts)
        state = self._input(request, protocol.STATE) if self.spec.state is not None else None
        for cam, frames in images.items():
            if frames.shape[0] != n:
                raise _Bad(f"camera '{cam}' has {frames.shape[0]} frames, the request has {n} instructions")
            if frames.shape[1] * frames.shape[2] > self.max_pixels:
                raise _Bad(f"camera '{cam}' frame {frames.shape[1]}x{frames.shape[2]} is larger than the "
                           f"{self.max_pixels} pixels this server accepts (vla_max_image_pixels)")
        if state is not None and state.shape[0] != n:
            raise _Bad(f"state has {state.shape[0]} rows, the request has {n} instructions")
        observations = []
        now = time.monotonic_ns()
        for i in range(n):
            raw = texts[i]
            try:
                text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            except UnicodeDecodeError as exc:
                raise _Bad(f"instruction {i} is not UTF-8: {exc}") from exc
            observations.append(Observation(images={cam: frames[i] for cam, frames in images.items()},
                                            instruction=text, stamp_ns=i,
                                            state=None if state is None else state[i], received_ns=now))
        return observations

    def _graph_inputs(self, request) -> dict[str, np.ndarray]:
        from vla_accel.backends.base import as_model_inputs

        names = self.spec.input_names
        return as_model_inputs("triton-server", self.spec, {n: self._input(request, n) for n in names})

    # --- batch ------------------------------------------------------------------------------------
    def execute(self, requests):
        pb = self.pb
        responses: list[Any] = [None] * len(requests)
        parsed: list[tuple[int, Any]] = []
        for i, request in enumerate(requests):
            try:
                item = self._observations(request) if self.level == "policy" else self._graph_inputs(request)
                parsed.append((i, item))
            except (_Bad, VlaAccelError, ValueError) as exc:
                responses[i] = pb.InferenceResponse(output_tensors=[], error=pb.TritonError(f"vla_accel: {exc}"))
        if parsed:
            try:
                results = self._run_policy(parsed) if self.level == "policy" else self._run_graph(parsed)
            except Exception as exc:  # noqa: BLE001 - the backend failed: every request of the batch hears why
                log.error("vla_accel: batch of %d requests failed: %s", len(parsed), exc)
                results = {i: f"{type(exc).__name__}: {exc}" for i, _ in parsed}
            for i, result in results.items():
                if isinstance(result, str):
                    responses[i] = pb.InferenceResponse(output_tensors=[], error=pb.TritonError(f"vla_accel: {result}"))
                else:
                    responses[i] = pb.InferenceResponse(output_tensors=[pb.Tensor(self.output, result)])
        return responses

    def _run_graph(self, parsed):
        joined = {name: np.concatenate([item[name] for _, item in parsed]) for name in parsed[0][1]}
        actions = np.ascontiguousarray(self.backend.infer(joined)[self.spec.action.output], dtype=np.float32)
        results, start = {}, 0
        for i, item in parsed:
            n = next(iter(item.values())).shape[0]
            results[i] = actions[start:start + n]
            start += n
        return results

    def _run_policy(self, parsed):
        owners: dict[int, int] = {}
        flat = []
        for i, observations in parsed:
            for obs in observations:
                owners[id(obs)] = i
                flat.append(obs)
        engine = self.engine
        engine.metrics.record_received(len(flat))
        values: dict[int, list[np.ndarray]] = {i: [] for i, _ in parsed}
        failed: dict[int, str] = {}
        for start in range(0, len(flat), self.max_batch):
            batch = engine.prepare(flat[start:start + self.max_batch])
            for obs, err in batch.rejected:
                failed.setdefault(owners[id(obs)], f"{err} [{err.reason}]" if isinstance(err, InputError) else str(err))
            try:
                outputs = engine.run(batch)
            except BaseException:
                batch.release()
                raise
            for obs, chunk in zip(batch.observations, engine.finish(batch, outputs)):
                values[owners[id(obs)]].append(chunk.values)
        results: dict[int, Any] = {}
        for i, _ in parsed:
            results[i] = failed[i] if i in failed else np.ascontiguousarray(np.stack(values[i]), dtype=np.float32)
        return results

    def finalize(self) -> None:
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.close()
