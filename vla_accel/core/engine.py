"""``Engine``: preprocess -> backend -> postprocess, timed into InferenceMetrics.

The three stages are separate methods (``prepare``, ``run``, ``finish``) so a scheduler can overlap
them across batches (prepare N+1 while N infers, with ``memory="pool"``); ``infer`` runs them in
series for callers that do not need that. ``backend`` is a plain attribute: a fallback wrapper
(backends.selection.FallbackChain) may sit there, or a caller may swap it at run time.

Counting: ``prepare`` counts rejected observations as drops by their error's ``reason`` (and logs
them rate-limited); ``run`` counts a failed backend call (BackendError, re-raised) as a backend
error plus its frames as dropped "backend_error"; ``finish`` records the stage latencies, batch
size, per-observation total latency and frames processed. Frames *received* are counted by
whoever receives them (the scheduler's submit, the node's callback); ``infer`` / ``infer_one``,
the synchronous entry points, count their observations as received themselves.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Sequence

import numpy as np

from vla_accel.core.metrics import InferenceMetrics
from vla_accel.core.postprocess import Postprocessor
from vla_accel.core.preprocess import PreparedBatch, Preprocessor
from vla_accel.core.ratelimit import RateLimitedLogger
from vla_accel.core.types import ActionChunk, Observation
from vla_accel.errors import BackendError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.backends.base import Backend
    from vla_accel.models.bundle import ModelBundle

log = logging.getLogger(__name__)


class Engine:
    """One model on one backend (or fallback chain), with shared pre/post-processing and metrics.

    ``model``: a ModelBundle (only ``.spec`` and ``.name`` are used here); ``backend``: a loaded
    Backend (loaded here if it is not yet); ``max_batch``: the largest batch ``prepare`` accepts
    (``infer`` splits longer lists); ``memory``: static | pool | dynamic input buffers;
    ``jpeg_reduced_decode``: decode JPEG frames at a reduced DCT scale (None: the core default, see
    core.preprocess).
    """

    def __init__(
        self,
        model: "ModelBundle",
        backend: "Backend",
        *,
        max_batch: int = 1,
        memory: str = "static",
        metrics: InferenceMetrics | None = None,
        pool_size: int = 2,
        log_interval_s: float = 5.0,
        jpeg_reduced_decode: bool | None = None,
    ):
        self.model = model
        self.spec = model.spec
        self.model_name = getattr(model, "name", "") or self.spec.name
        self.backend = backend
        self.max_batch = int(max_batch)
        self.preprocessor = Preprocessor(self.spec, self.max_batch, memory=memory, pool_size=pool_size,
                                         jpeg_reduced_decode=jpeg_reduced_decode)
        self.postprocessor = Postprocessor(self.spec)
        self.metrics = metrics if metrics is not None else InferenceMetrics(model=self.model_name)
        if not self.metrics.model:
            self.metrics.model = self.model_name
        self._drop_log = RateLimitedLogger(log, log_interval_s)
        self.preprocessor.on_instruction_truncated = self._instruction_truncated
        if not getattr(backend, "loaded", True):
            backend.load()
        self.refresh_device()

    def _instruction_truncated(self, text: str, needed: int, limit: int) -> None:
        self.metrics.record_event("instruction_truncated")
        self._drop_log.warning(
            "instruction_truncated",
            "instruction needs %d tokens, the model reads %d (instruction.max_tokens): the end is cut: %r",
            needed, limit, text[:120],
        )

    @property
    def memory(self) -> str:
        return self.preprocessor.memory

    @property
    def backend_name(self) -> str:
        """The backend that actually runs (a fallback chain reports its active member)."""
        return getattr(self.backend, "active_name", None) or getattr(self.backend, "name", "") or ""

    def refresh_device(self) -> None:
        """Copy the backend's DeviceInfo into metrics (call after swapping ``backend``)."""
        try:
            info = self.backend.device_info()
        except BackendError as err:
            self.metrics.set_backend(self.backend_name)
            log.debug("backend device info unavailable: %s", err)
            return
        self.metrics.set_device(info)

    # --- stages ---------------------------------------------------------------------------------
    def prepare(self, observations: Sequence[Observation]) -> PreparedBatch:
        """Preprocess (timed); bad observations are dropped, counted and logged (rate-limited)."""
        batch = self.preprocessor.prepare(observations)
        for obs, err in batch.rejected:
            self.metrics.record_dropped(err.reason)
            self._drop_log.warning(
                f"drop:{err.reason}:{getattr(obs, 'stream', '')}",
                "dropped an observation (stream %s, stamp %s): %s [%s]",
                getattr(obs, "stream", "?"), getattr(obs, "stamp_ns", "?"), err, err.reason,
            )
        for obs in batch.observations:
            if obs.received_ns > 0:
                self.metrics.record_stage("age_at_start", (batch.started_ns - obs.received_ns) / 1e6)
        return batch

    def run(self, batch: PreparedBatch) -> dict[str, np.ndarray]:
        """Backend inference on a prepared batch (timed into ``batch.timings_ms['infer']``).

        An empty batch returns {} without calling the backend. A BackendError is counted and
        re-raised; any other exception from the backend is wrapped into BackendError (reason
        backend_error) so callers handle one error type. The batch is NOT released on failure, so
        the caller can retry it (e.g. on another backend) and must release it afterwards.
        """
        if batch.size == 0:
            batch.timings_ms["infer"] = 0.0
            return {}
        backend = self.backend
        t0 = time.perf_counter_ns()
        try:
            outputs = backend.infer(batch.inputs)
        except BackendError as err:
            self.metrics.record_backend_error(err.reason, batch.size)
            raise
        except Exception as exc:  # noqa: BLE001 (a runtime's own exception types vary; normalise them)
            self.metrics.record_backend_error("backend_error", batch.size)
            raise BackendError(
                f"backend '{self.backend_name}' failed: {type(exc).__name__}: {exc}", reason="backend_error"
            ) from exc
        batch.timings_ms["infer"] = (time.perf_counter_ns() - t0) / 1e6
        self._record_program_stages(backend)
        if self.spec.action.output not in outputs:
            self.metrics.record_backend_error("missing_output", batch.size)
            raise BackendError(
                f"backend '{self.backend_name}' returned outputs {sorted(outputs)}, not "
                f"'{self.spec.action.output}'",
                reason="missing_output",
            )
        return outputs

    def _record_program_stages(self, backend) -> None:
        """Per-stage times of a policy program (prefix, mean step, whole program) into the metrics."""
        member = getattr(backend, "active", None) or backend
        stages = getattr(member, "last_stage_ms", None)
        if not stages:
            return
        for stage in ("prefix", "step", "program_total"):
            if stage in stages:
                self.metrics.record_stage(stage, stages[stage])
        if "steps" in stages:
            self.metrics.set_value("program_steps", stages["steps"])

    def finish(self, batch: PreparedBatch, outputs: dict[str, np.ndarray]) -> list[ActionChunk]:
        """Postprocess (timed), record metrics, release the batch's buffers, return its chunks.

        A non-finite or mis-shaped output raises BackendError (counted as a backend error with
        the batch's frames dropped); the batch is released either way.
        """
        try:
            if batch.size == 0:
                return []
            t0 = time.perf_counter_ns()
            try:
                values = self.postprocessor.unnormalize(outputs[self.spec.action.output], batch.size)
            except BackendError as err:
                self.metrics.record_backend_error(err.reason, batch.size)
                raise
            done_ns = time.monotonic_ns()
            post_ms = (time.perf_counter_ns() - t0) / 1e6
            pre_ms = batch.timings_ms.get("preprocess", 0.0)
            infer_ms = batch.timings_ms.get("infer", 0.0)
            batch.timings_ms["postprocess"] = post_ms
            compute_ms = pre_ms + infer_ms + post_ms
            timings = []
            for obs in batch.observations:
                total_ms = (done_ns - obs.received_ns) / 1e6 if obs.received_ns > 0 else compute_ms
                timings.append({
                    "preprocess": pre_ms,
                    "infer": infer_ms,
                    "postprocess": post_ms,
                    "total": total_ms,
                    "batch_size": float(batch.size),
                })
                self.metrics.record_stage("total", total_ms)
            chunks = self.postprocessor.to_chunks(values, batch.observations, self.model_name, self.backend_name,
                                                  timings)
            self.metrics.record_batch(batch.size, pre_ms, infer_ms, post_ms)
            self.metrics.record_processed(batch.size, done_ns)
            return chunks
        finally:
            batch.release()

    # --- synchronous entry points ---------------------------------------------------------------
    def infer(self, observations: Sequence[Observation]) -> list[ActionChunk]:
        """Counts the observations as received, then prepare/run/finish in batches of max_batch.

        Returns chunks for the accepted observations, in input order; bad observations are dropped
        and counted; a BackendError propagates (after the batch's buffers are released).
        """
        observations = list(observations)
        self.metrics.record_received(len(observations))
        chunks: list[ActionChunk] = []
        for start in range(0, len(observations), self.max_batch):
            batch = self.prepare(observations[start : start + self.max_batch])
            try:
                outputs = self.run(batch)
            except BaseException:
                batch.release()
                raise
            chunks.extend(self.finish(batch, outputs))
        return chunks

    def infer_one(self, observation: Observation) -> ActionChunk:
        """One observation -> its chunk; raises its InputError if it is rejected."""
        self.metrics.record_received(1)
        batch = self.prepare([observation])
        if batch.rejected:
            batch.release()
            raise batch.rejected[0][1]
        try:
            outputs = self.run(batch)
        except BaseException:
            batch.release()
            raise
        return self.finish(batch, outputs)[0]

    def warmup(self, iterations: int = 3) -> None:
        """Warm the backend at every batch size it will see (1 and max_batch)."""
        for size in sorted({1, self.max_batch}):
            self.backend.warmup(size, iterations)

    def close(self) -> None:
        self.backend.close()
