"""Real-time scheduling: latest-frame slots, multi-stream micro-batching, adaptive batch size and a
serial or three-stage pipelined inference loop. Pure Python threading + numpy; no ROS.

Why threads and not processes: the heavy parts of every stage (simplejpeg decoding, numpy resize and
normalise, onnxruntime / torch / OpenVINO inference) release the GIL, so threads overlap them while
sharing the preallocated input buffers without a copy; a process per stage would have to pickle or
share-memory every prepared batch. ``vla-accel bench pipeline`` measures both (see
docs/scheduling.md for the figures).

Latest-frame policy: every stream (a camera rig or robot, ``Observation.stream``) has one slot; a
newer frame replaces an older frame that has not started, and the replaced frame is counted as
dropped with reason ``superseded``. No queue of stale frames can build, so latency cannot grow with
time when the input outruns the model.

Micro-batching: when several streams share one accelerator, the loop takes up to ``batch_size``
ready frames (one per stream, oldest first). It waits for more only while the oldest ready frame is
younger than ``max_batch_delay_ms`` and some known stream has nothing ready yet. With
``adaptive_batch`` the batch cap follows ``AdaptiveBatchSizer``: the largest batch whose measured
latency meets ``target_latency_ms``.

Pipeline (``pipeline=True``): preprocess / infer / postprocess run on three threads joined by
bounded hand-offs of depth ``queue_depth`` (1 by default), so batch N+1 is decoded and resized while
batch N infers and throughput approaches 1 / max(stage) instead of 1 / sum(stages). The preprocess
thread takes frames from the slots only when the infer stage can accept another batch, so a
prepared batch never waits longer than one inference. Pipelining needs input buffers that are not
shared between batches in flight: the engine's memory strategy must be "pool" or "dynamic".
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from vla_accel.core.metrics import SUPERSEDED
from vla_accel.errors import BackendError, ConfigError, InputError, LoopStateError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.engine import Engine
    from vla_accel.core.metrics import InferenceMetrics
    from vla_accel.core.types import ActionChunk, Observation

logger = logging.getLogger(__name__)

SHUTDOWN = "shutdown"  # frames still waiting (or in flight) when the loop stopped
# ``ActionChunk.timings_ms`` key set by the loop: ms its frame waited in the slot because the worker was
# still busy with earlier batches (queueing behind their inference). The hand-off to an idle worker
# (its wake-up) is not in it, so callers can subtract this and still count that hand-off as overhead.
# With pipeline=True it covers the slot wait only: a prepared batch waiting for the busy infer stage is
# not in it (an overhead figure built on it errs high there, never low).
QUEUED = "queued"
INTERNAL_ERROR = "internal_error"  # frames of a batch lost to an unexpected (non-BackendError) exception


def _now_ns() -> int:
    return time.monotonic_ns()


def _arrival_ns(observation: "Observation") -> int:
    return int(observation.received_ns) if observation.received_ns else _now_ns()


# --------------------------------------------------------------------------------------------------
# Latest-frame slots
# --------------------------------------------------------------------------------------------------
class LatestFrameSlot:
    """A one-frame mailbox for one stream: ``put`` replaces an unstarted frame, ``take`` returns the
    newest. Thread-safe. Several slots may share one ``condition`` so a single worker can wait on
    all of them (see ``MultiStreamSlots``).

    ``on_superseded(observation)`` is called (outside the lock) for each replaced frame.
    """

    def __init__(
        self,
        stream: str = "default",
        *,
        condition: threading.Condition | None = None,
        on_superseded: Callable[["Observation"], None] | None = None,
    ):
        self.stream = stream
        self._cond = condition or threading.Condition()
        self._on_superseded = on_superseded
        self._frame: "Observation | None" = None
        self._arrival_ns = 0
        self._closed = False
        self.frames_put = 0
        self.frames_taken = 0
        self.frames_superseded = 0

    def put(self, observation: "Observation") -> "Observation | None":
        """Store ``observation``; returns the unstarted frame it replaced (already counted), if any."""
        with self._cond:
            replaced = self._frame
            self._frame = observation
            self._arrival_ns = _arrival_ns(observation)
            self.frames_put += 1
            if replaced is not None:
                self.frames_superseded += 1
            self._cond.notify_all()
        if replaced is not None and self._on_superseded is not None:
            self._on_superseded(replaced)
        return replaced

    def take(self, timeout: float | None = None) -> "Observation | None":
        """The newest frame, waiting up to ``timeout`` s (None = until one comes or the slot closes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._frame is None and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._take_locked()

    def take_nowait(self) -> "Observation | None":
        with self._cond:
            return self._take_locked()

    def wait_until_empty(self, timeout: float | None = None) -> bool:
        """Block until the waiting frame has been taken (a producer that wants to hand over the
        freshest frame exactly when the consumer is ready, e.g. a saturating benchmark feeder).
        Returns False on timeout or close."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._frame is not None and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self._frame is None and not self._closed

    def _take_locked(self) -> "Observation | None":
        frame, self._frame = self._frame, None
        if frame is not None:
            self.frames_taken += 1
            self._cond.notify_all()  # wakes producers in wait_until_empty
        return frame

    @property
    def ready(self) -> bool:
        return self._frame is not None

    @property
    def arrival_ns(self) -> int:
        """Monotonic arrival time of the waiting frame (0 when empty)."""
        return self._arrival_ns if self._frame is not None else 0

    def close(self) -> None:
        """Wake every waiter; ``take`` then returns what is left (or None)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class MultiStreamSlots:
    """One ``LatestFrameSlot`` per stream behind one condition, with batch-taking.

    New stream names are accepted up to ``max_streams``; beyond that ``put`` raises InputError
    (reason ``too_many_streams``) so a misbehaving publisher cannot grow memory without bound.
    """

    def __init__(
        self,
        *,
        on_superseded: Callable[["Observation"], None] | None = None,
        max_streams: int = 64,
    ):
        self._cond = threading.Condition()
        self._slots: dict[str, LatestFrameSlot] = {}
        self._on_superseded = on_superseded
        self._closed = False
        self.max_streams = max_streams

    def slot(self, stream: str) -> LatestFrameSlot:
        with self._cond:
            existing = self._slots.get(stream)
            if existing is not None:
                return existing
            if len(self._slots) >= self.max_streams:
                raise InputError(
                    f"stream '{stream}' would exceed max_streams={self.max_streams}; known streams: "
                    f"{sorted(self._slots)[:8]}...",
                    reason="too_many_streams",
                )
            created = LatestFrameSlot(stream, condition=self._cond, on_superseded=self._on_superseded)
            self._slots[stream] = created
            return created

    def put(self, observation: "Observation") -> "Observation | None":
        return self.slot(observation.stream).put(observation)

    @property
    def streams(self) -> list[str]:
        with self._cond:
            return list(self._slots)

    def pending(self) -> int:
        with self._cond:
            return sum(1 for s in self._slots.values() if s.ready)

    def take_batch(
        self, max_size: int, max_delay_s: float = 0.0, timeout: float | None = None
    ) -> list["Observation"]:
        """Up to ``max_size`` frames (one per stream, oldest arrival first).

        Waits up to ``timeout`` s for the first frame (empty list on timeout or close). Then waits
        for more only while fewer than ``max_size`` are ready, some known stream has nothing ready,
        and the oldest ready frame is younger than ``max_delay_s``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed and not any(s.ready for s in self._slots.values()):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                self._cond.wait(remaining)
            while not self._closed and max_delay_s > 0:
                ready = [s for s in self._slots.values() if s.ready]
                if len(ready) >= max_size or len(ready) == len(self._slots):
                    break
                oldest = min(s.arrival_ns for s in ready)
                wait_s = max_delay_s - (_now_ns() - oldest) / 1e9
                if wait_s <= 0:
                    break
                self._cond.wait(wait_s)
            ready = sorted((s for s in self._slots.values() if s.ready), key=lambda s: s.arrival_ns)
            return [s._take_locked() for s in ready[:max_size]]  # noqa: SLF001 (same lock)

    def drain(self) -> list["Observation"]:
        """Take every waiting frame (used at shutdown to count them)."""
        with self._cond:
            return [f for f in (s._take_locked() for s in self._slots.values()) if f is not None]  # noqa: SLF001

    def close(self) -> None:
        self._set_closed(True)

    def reopen(self) -> None:
        self._set_closed(False)

    def _set_closed(self, closed: bool) -> None:
        with self._cond:
            self._closed = closed
            for s in self._slots.values():
                s._closed = closed  # noqa: SLF001 (shared condition: one notify wakes everyone)
            self._cond.notify_all()


# --------------------------------------------------------------------------------------------------
# Adaptive batch size
# --------------------------------------------------------------------------------------------------
class AdaptiveBatchSizer:
    """Picks the largest batch whose measured latency meets a target.

    An online table maps batch size -> EWMA of measured batch latency (ms). After each batch:
    if the batch's smoothed latency is over the target, the cap backs off to the largest size known
    to meet it (or one below); when the cap was filled and met the target, every ``explore_every``
    batches it explores upward (to the size a linear fit of the table predicts, at most double,
    at least +1), so a load that got lighter is noticed.
    """

    def __init__(
        self,
        max_batch: int,
        target_latency_ms: float,
        *,
        smoothing: float = 0.3,
        explore_every: int = 8,
        start: int = 1,
    ):
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        if not (target_latency_ms > 0 and math.isfinite(target_latency_ms)):
            raise ConfigError(f"target_latency_ms must be a positive number, got {target_latency_ms!r}")
        if not 0 < smoothing <= 1:
            raise ConfigError(f"smoothing must be in (0, 1], got {smoothing}")
        self.max_batch = max_batch
        self.target_ms = float(target_latency_ms)
        self.smoothing = smoothing
        self.explore_every = max(1, explore_every)
        self.limit = min(max(1, start), max_batch)
        self.table: dict[int, float] = {}
        self._since_change = 0
        self.explorations = 0
        self.backoffs = 0

    def observe(self, batch_size: int, latency_ms: float) -> int:
        """Record one batch's latency; returns the cap for the next batch."""
        if batch_size < 1 or not math.isfinite(latency_ms):
            return self.limit
        old = self.table.get(batch_size)
        self.table[batch_size] = latency_ms if old is None else old + self.smoothing * (latency_ms - old)
        self._since_change += 1
        estimate = self.table[batch_size]
        if estimate > self.target_ms and self.limit >= batch_size and self.limit > 1:
            good = [b for b, ms in self.table.items() if b < batch_size and ms <= self.target_ms]
            self.limit = max(good) if good else max(1, batch_size - 1)
            self.backoffs += 1
            self._since_change = 0
        elif (
            batch_size == self.limit
            and estimate <= self.target_ms
            and self.limit < self.max_batch
            and self._since_change >= self.explore_every
        ):
            self.limit = self._explore_to()
            self.explorations += 1
            self._since_change = 0
        return self.limit

    def _explore_to(self) -> int:
        step_up = self.limit + 1
        fitted = self.predicted_largest()
        if fitted is not None:
            step_up = max(step_up, min(fitted, 2 * self.limit))
        return min(step_up, self.max_batch)

    def predicted_largest(self) -> int | None:
        """Largest size a least-squares line through the table predicts meets the target."""
        if len(self.table) < 2:
            return None
        sizes = list(self.table)
        n = len(sizes)
        mean_b = sum(sizes) / n
        mean_ms = sum(self.table.values()) / n
        var = sum((b - mean_b) ** 2 for b in sizes)
        if var == 0:
            return None
        slope = sum((b - mean_b) * (self.table[b] - mean_ms) for b in sizes) / var
        if slope <= 0:
            return self.max_batch
        intercept = mean_ms - slope * mean_b
        return max(1, min(self.max_batch, int((self.target_ms - intercept) / slope)))


# --------------------------------------------------------------------------------------------------
# The inference loop
# --------------------------------------------------------------------------------------------------
class _Handoff:
    """A prepared or inferred batch moving between pipeline stages."""

    __slots__ = ("observations", "prepared", "outputs", "started_ns", "queued_ms")

    def __init__(self, observations, prepared, started_ns, queued_ms=None):
        self.observations = observations
        self.prepared = prepared
        self.outputs = None
        self.started_ns = started_ns
        self.queued_ms = queued_ms or {}


def _queued_ms(observations: Sequence["Observation"], free_since_ns: int) -> dict[tuple[str, int], float]:
    """(stream, stamp) -> ms each frame waited before the taking stage was free (0 when it was idle)."""
    return {(o.stream, o.stamp_ns): max(0, free_since_ns - _arrival_ns(o)) / 1e6 for o in observations}


_SENTINEL = object()


class InferenceLoop:
    """Runs an ``Engine`` on submitted observations in the background.

    ``submit(observation)`` never blocks (latest-frame policy per stream); chunks come back through
    ``on_chunks(list[ActionChunk])`` (each chunk carries its observation's ``stream``), errors
    through ``on_error(exception)`` (BackendError and anything unexpected; the loop keeps running,
    so a FallbackChain at ``engine.backend`` can switch underneath). ``stop(timeout)`` never hangs.
    """

    def __init__(
        self,
        engine: "Engine",
        *,
        batch_size: int = 1,
        max_batch_delay_ms: float = 0.0,
        adaptive_batch: bool = False,
        target_latency_ms: float | None = None,
        pipeline: bool = False,
        on_chunks: Callable[[list["ActionChunk"]], None],
        on_error: Callable[[BaseException], None] | None = None,
        queue_depth: int = 1,
        max_streams: int = 64,
        name: str = "vla",
    ):
        engine_max = int(getattr(engine, "max_batch", batch_size))
        if batch_size < 1 or batch_size > engine_max:
            raise ConfigError(f"batch_size must be in 1..engine.max_batch ({engine_max}), got {batch_size}")
        if not (max_batch_delay_ms >= 0 and math.isfinite(max_batch_delay_ms)):
            raise ConfigError(f"max_batch_delay_ms must be >= 0, got {max_batch_delay_ms!r}")
        if adaptive_batch and target_latency_ms is None:
            raise ConfigError("adaptive_batch needs target_latency_ms (the latency the batch size must meet)")
        if not 1 <= queue_depth <= 4:
            raise ConfigError(f"queue_depth must be 1..4, got {queue_depth}")
        if pipeline and getattr(engine, "memory", "pool") == "static":
            raise ConfigError(
                "pipeline=True overlaps batches, which cannot share one static input buffer: build the "
                "Engine with memory='pool' (or 'dynamic')"
            )
        if on_chunks is None:
            raise ConfigError("on_chunks is required: it receives every ActionChunk the loop produces")
        self.engine = engine
        self.batch_size = batch_size
        self.max_batch_delay_s = max_batch_delay_ms / 1000.0
        self.pipeline = pipeline
        self.queue_depth = queue_depth
        self.name = name
        self._on_chunks = on_chunks
        self._on_error = on_error
        self.sizer = (
            AdaptiveBatchSizer(batch_size, float(target_latency_ms), start=1) if adaptive_batch else None
        )
        self._slots = MultiStreamSlots(on_superseded=self._count_superseded, max_streams=max_streams)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._started = False
        # Counters (also in engine.metrics where it has a place for them).
        self.submitted = 0
        self.batches = 0
        self.chunks_delivered = 0
        self.errors = 0
        self.batch_size_counts: dict[int, int] = {}
        self.last_error: BaseException | None = None
        self.stuck_threads: list[str] = []
        self._batches_in_flight = 0

    # --- public API ---------------------------------------------------------------------------
    @property
    def metrics(self) -> "InferenceMetrics":
        return self.engine.metrics

    @property
    def current_batch_limit(self) -> int:
        return self.sizer.limit if self.sizer is not None else self.batch_size

    def register_streams(self, streams: Sequence[str]) -> None:
        """Declare streams up front, so the micro-batcher waits for them from the first batch on
        (a stream is otherwise known from its first frame)."""
        for stream in streams:
            self._slots.slot(stream)

    def pending_frames(self) -> int:
        """Frames waiting in the slots (at most one per stream)."""
        return self._slots.pending()

    def submit(self, observation: "Observation") -> None:
        """Hand over a frame; returns at once. A frame still waiting for the same stream is superseded.
        Sets ``observation.received_ns`` (monotonic) when it is 0. Frames submitted while the loop is
        stopped wait in their slot for ``start()`` (one per stream)."""
        if not observation.received_ns:
            observation.received_ns = _now_ns()
        self.metrics.record_received(1, t_ns=observation.received_ns)
        try:
            self._slots.put(observation)
        except InputError as exc:
            self.metrics.record_dropped(exc.reason, 1)
            self._report(exc)
            return
        with self._lock:
            self.submitted += 1

    def start(self) -> "InferenceLoop":
        with self._lock:
            if self._started:
                return self
            alive = [t.name for t in self._threads if t.is_alive()]
            if alive:
                raise LoopStateError(
                    f"inference loop '{self.name}' cannot restart: threads {alive} from the last run are "
                    "still inside a backend call"
                )
            self._threads = []
            self._started = True
            self._stop.clear()
            self._slots.reopen()
            if self.pipeline:
                self._credits = threading.Semaphore(self._in_flight_limit())
                self._to_infer: queue.Queue = queue.Queue(maxsize=self.queue_depth)
                self._to_post: queue.Queue = queue.Queue(maxsize=self.queue_depth)
                targets = [("pre", self._pre_stage), ("infer", self._infer_stage), ("post", self._post_stage)]
            else:
                targets = [("serial", self._serial_worker)]
            for stage, target in targets:
                thread = threading.Thread(target=self._guard(target), name=f"{self.name}-{stage}", daemon=True)
                self._threads.append(thread)
                thread.start()
        return self

    def _in_flight_limit(self) -> int:
        """Batches in flight at once: one inferring plus ``queue_depth`` prepared ahead, capped by
        the engine's buffer pool (a batch holds its pooled buffers until engine.finish)."""
        wanted = self.queue_depth + 1
        pool_size = getattr(getattr(self.engine.preprocessor, "strategy", None), "size", None)
        if pool_size is not None and pool_size < wanted:
            logger.warning(
                "inference loop '%s': queue_depth %d needs %d pooled buffer sets but the engine has %d "
                "(Engine(pool_size=...)); pipelining with %d batches in flight", self.name, self.queue_depth,
                wanted, pool_size, pool_size,
            )
            return max(1, int(pool_size))
        return wanted

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop and join every thread within ``timeout`` s in total. Returns False (and logs which)
        when a thread did not stop in time (e.g. stuck in a backend call); those threads are daemons
        and cannot keep the process alive. Frames still waiting are counted as dropped ``shutdown``."""
        deadline = time.monotonic() + max(0.0, timeout)
        self._stop.set()
        self._slots.close()
        if self.pipeline and self._started:
            for q in (self._to_infer, self._to_post):
                try:
                    q.put_nowait(_SENTINEL)
                except queue.Full:
                    pass  # the stage polls the stop event within 50 ms anyway
        self.stuck_threads = []
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self.stuck_threads.append(thread.name)
        left = len(self._slots.drain())
        if self.pipeline and self._started and not self.stuck_threads:
            for q in (self._to_infer, self._to_post):
                while True:
                    try:
                        item = q.get_nowait()
                    except queue.Empty:
                        break
                    if item is not _SENTINEL:
                        self._finished(item)
                        self._left_pipeline()
                        left += item.prepared.size
        if left:
            self.metrics.record_dropped(SHUTDOWN, left)
        if self.stuck_threads:
            logger.error(
                "inference loop '%s': threads %s did not stop within %.1f s (a backend call is still "
                "running); they are daemon threads and will end with the process",
                self.name, self.stuck_threads, timeout,
            )
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._started = False
        return not self.stuck_threads

    def __enter__(self) -> "InferenceLoop":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- workers ------------------------------------------------------------------------------
    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 (a bug in a stage must be reported, not vanish)
                logger.exception("inference loop '%s': stage %s died; stop() and start() the loop to recover",
                                 self.name, threading.current_thread().name)
                self._report(exc)

        return run

    def _take(self) -> list["Observation"]:
        observations = self._slots.take_batch(self.current_batch_limit, self.max_batch_delay_s, timeout=0.05)
        if observations:
            with self._lock:
                self._batches_in_flight += 1
        return observations

    def _left_pipeline(self) -> None:
        with self._lock:
            self._batches_in_flight -= 1

    @property
    def idle(self) -> bool:
        """No frame waiting and no batch in flight (e.g. to let a run drain before ``stop``)."""
        return self._batches_in_flight == 0 and self._slots.pending() == 0

    def _serial_worker(self) -> None:
        free_since_ns = _now_ns()  # when the worker last became free to take frames (for QUEUED)
        while not self._stop.is_set():
            observations = self._take()
            if not observations:
                continue
            self._serial_batch(observations, _queued_ms(observations, free_since_ns))
            free_since_ns = _now_ns()

    def _serial_batch(self, observations: list["Observation"], queued_ms: dict[tuple[str, int], float]) -> None:
        # prepare / run / finish rather than engine.infer: infer counts frames as received, and
        # submit() already did.
        started = time.perf_counter()
        try:
            prepared = self.engine.prepare(observations)
        except Exception as exc:  # noqa: BLE001 (reported through on_error; the loop must go on)
            self._batch_failed(observations, exc)
            return
        try:
            outputs = self.engine.run(prepared)
            chunks = self.engine.finish(prepared, outputs)
        except Exception as exc:  # noqa: BLE001
            prepared.release()
            self._batch_failed(observations, exc)
            return
        self._batch_done(len(observations), (time.perf_counter() - started) * 1000.0)
        self._deliver(chunks, queued_ms)

    def _pre_stage(self) -> None:
        while not self._stop.is_set():
            # A credit is a batch in flight (prepared, inferring or finishing). Frames are taken
            # only once one is free, so they are as fresh as possible, and the engine's buffer
            # pool is never exhausted.
            if not self._credits.acquire(timeout=0.05):
                continue
            free_since_ns = _now_ns()
            observations: list = []
            while not self._stop.is_set() and not observations:
                observations = self._take()
            if not observations:
                self._credits.release()
                break
            started_ns = _now_ns()
            queued_ms = _queued_ms(observations, free_since_ns)
            try:
                prepared = self.engine.prepare(observations)
            except Exception as exc:  # noqa: BLE001
                self._credits.release()
                self._batch_failed(observations, exc)
                continue
            if not self._put(self._to_infer, _Handoff(observations, prepared, started_ns, queued_ms)):
                prepared.release()
                self._credits.release()
                self.metrics.record_dropped(SHUTDOWN, prepared.size)
                self._left_pipeline()

    def _infer_stage(self) -> None:
        while True:
            handoff = self._get(self._to_infer)
            if handoff is None:
                return
            try:
                handoff.outputs = self.engine.run(handoff.prepared)
            except Exception as exc:  # noqa: BLE001
                self._finished(handoff)
                self._batch_failed(handoff.observations, exc)
                continue
            if not self._put(self._to_post, handoff):
                self._finished(handoff)
                self.metrics.record_dropped(SHUTDOWN, handoff.prepared.size)
                self._left_pipeline()

    def _post_stage(self) -> None:
        while True:
            handoff = self._get(self._to_post)
            if handoff is None:
                return
            try:
                chunks = self.engine.finish(handoff.prepared, handoff.outputs)
            except Exception as exc:  # noqa: BLE001
                self._batch_failed(handoff.observations, exc)
                continue
            finally:
                self._finished(handoff)
            self._batch_done(len(handoff.observations), (_now_ns() - handoff.started_ns) / 1e6)
            self._deliver(chunks, handoff.queued_ms)

    def _put(self, q: queue.Queue, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue) -> Any:
        while True:
            try:
                item = q.get(timeout=0.05)
            except queue.Empty:
                if self._stop.is_set():
                    return None
                continue
            if item is _SENTINEL:
                return None
            if self._stop.is_set():
                self._finished(item)
                self.metrics.record_dropped(SHUTDOWN, item.prepared.size)
                self._left_pipeline()
                return None
            return item

    # --- bookkeeping --------------------------------------------------------------------------
    def _finished(self, handoff: _Handoff) -> None:
        """A pipelined batch left the pipeline: give its buffers and its credit back (idempotent
        release; engine.finish releases too)."""
        handoff.prepared.release()
        self._credits.release()

    def _batch_done(self, size: int, latency_ms: float) -> None:
        self._left_pipeline()
        self.batches += 1  # only the last stage's thread writes these
        self.batch_size_counts[size] = self.batch_size_counts.get(size, 0) + 1
        if self.sizer is not None:
            self.sizer.observe(size, latency_ms)

    def _batch_failed(self, observations: Sequence["Observation"], exc: BaseException) -> None:
        self._left_pipeline()
        if not isinstance(exc, BackendError):  # the engine counted BackendErrors and their frames
            logger.error("inference loop '%s': unexpected error in a batch of %d", self.name, len(observations),
                         exc_info=exc)
            self.metrics.record_dropped(getattr(exc, "reason", "") or INTERNAL_ERROR, len(observations))
        self._report(exc)

    def _deliver(self, chunks: list["ActionChunk"], queued_ms: dict[tuple[str, int], float] | None = None) -> None:
        if not chunks:
            return
        for chunk in chunks:
            chunk.timings_ms[QUEUED] = (queued_ms or {}).get((chunk.stream, chunk.stamp_ns), 0.0)
        self.chunks_delivered += len(chunks)
        try:
            self._on_chunks(chunks)
        except Exception as exc:  # noqa: BLE001 (a consumer bug must not kill the loop)
            logger.exception("inference loop '%s': on_chunks raised", self.name)
            self._report(exc)

    def _report(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = exc
        if self._on_error is None:
            logger.warning("inference loop '%s': %s", self.name, exc)
            return
        try:
            self._on_error(exc)
        except Exception:  # noqa: BLE001
            logger.exception("inference loop '%s': on_error raised while reporting %r", self.name, exc)

    def _count_superseded(self, observation: "Observation") -> None:  # noqa: ARG002
        self.metrics.record_dropped(SUPERSEDED, 1)
