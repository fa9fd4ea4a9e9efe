"""Offline replay: a bag's frames through one or more backends, side by side, deterministically.

For each backend the bag is read again from disk (so each measurement includes reading,
deserialising and decoding, as a robot replaying a log would), observations are assembled like the
live node does (``observations.py``), inferred through the shared ``Engine`` (same pre- and
post-processing for every backend) and the chunks are written to the output bag with the source
frame stamp. Every latency and rate goes through ``vla_accel.core.metrics``.

Besides the replay itself, each backend gets a bare benchmark (``backend.infer`` on ready input
tensors, no bag, no decoding) so the report can say what reading and decoding the bag costs on
top of pure inference. Both are measured the same way and interleaved at the finest grain: after
each inference of the replay, one bare ``backend.infer`` call of the same batch size runs on the
same thread and backend instance (timed apart and excluded from the replay's wall time), so a
change of load on a shared machine hits both sides of the ratio alike. Either way the backend has
just finished an inference when the next frame's reading and preprocessing start, so the bare calls
do not warm anything for the replay that its own previous inference would not. ``timing_rounds``
passes are made (the first one is the recorded pass; the others replay the bag again, writing
nothing) and the report gives the median round.

JPEG frames are decoded by the shared preprocessor at full size or, with ``jpeg_reduced_decode``,
at a reduced DCT scale covering the model input (core.preprocess); each run records the setting and
the frames per decode path, and the report prints both. Given both settings, every backend is
replayed once per setting, so the cost and the action deviation of reduced decoding come out of one
run side by side.
"""
from __future__ import annotations

import collections
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from vla_accel.bags.observations import ObservationBuilder, RateMode, TimedObservation
from vla_accel.bags.reader import BagEvent, BagSource, TopicSelection
from vla_accel.core import metrics as metrics_lib
from vla_accel.core.types import ActionChunk
from vla_accel.backends.registry import BASELINE_BACKEND, split_backend_spec
from vla_accel.core.machine import machine_description
from vla_accel.core.timing import time_call_ms, time_calls
from vla_accel.errors import BackendError, VlaAccelError
from vla_accel.runtime.config import RuntimeConfig

log = logging.getLogger(__name__)


def replay_runtime(model: str = "tiny", precision: str = "fp32", threads: int = 0, batch_size: int = 1,
                   **more) -> RuntimeConfig:
    """The runtime settings of a replay: the node's RuntimeConfig (checked the same way), with the
    replay's defaults (model tiny; no speedup baseline, no parity check at load: the replay measures
    its own bare calls and compares every backend's actions itself)."""
    return RuntimeConfig(model=model, precision=precision, threads=threads, batch_size=batch_size,
                         speedup_baseline="none", parity_check=False, **more)


@dataclass
class ReplayOptions:
    """Replay-only settings; what the model runs with (model, precision, threads, batch size, ...)
    is the runtime's ``RuntimeConfig`` in ``runtime`` (see ``replay_runtime``), read through the
    properties below so replay, the live comparison and the node agree on one set of settings."""

    runtime: RuntimeConfig = field(default_factory=replay_runtime)
    backends: tuple[str, ...] = ("torch",)
    rate: RateMode = field(default_factory=lambda: RateMode("every"))
    camera_topics: tuple[str, ...] = ()
    instruction_topic: str | None = None
    state_topic: str | None = None
    bare_iterations: int = 30  # bare calls before the first pass (warm-up and the bare percentiles)
    timing_rounds: int = 3  # replay passes, each paired with bare calls (offline rate modes only)
    live_speed: float = 1.0  # live mode: 1.0 = recorded timing, 0.5 = half speed
    progress: bool = True
    # JPEG decode setting(s) (core.preprocess): (None,) = the core default; two values replay every
    # backend once per setting, side by side (labels NAME@jpeg-full / NAME@jpeg-reduced)
    jpeg_reduced_decode: tuple[bool | None, ...] = (None,)
    # offline modes: observations assembled and their JPEG frames decoded this many ahead on a reader
    # thread while the backend runs (0: all on the inference thread, in turn)
    read_ahead: int = 4

    @property
    def model(self) -> str:
        return self.runtime.model

    @property
    def precision(self) -> str:
        return self.runtime.precision

    @property
    def threads(self) -> int:
        return self.runtime.threads

    @property
    def batch_size(self) -> int:
        return self.runtime.batch_size

    def backend_options(self, precision: str = ""):
        """BackendOptions of one replayed backend (``precision``: its NAME:PRECISION suffix, if any)."""
        from vla_accel.backends.base import BackendOptions

        c = self.runtime
        return BackendOptions(device=c.device, precision=precision or c.precision, threads=c.threads,
                              max_batch=c.batch_size, cache_dir=Path(c.cache_dir) if c.cache_dir else None,
                              extra=dict(c.backend_extra))


@dataclass
class ChunkTiming:
    """One chunk's place on the timeline and how long it took."""

    log_ns: int  # bag time of its source frame
    stamp_ns: int
    infer_ms: float
    total_ms: float


@dataclass
class TimingRound:
    """One replay pass and the bare calls interleaved with it, per chunk (ms)."""

    replay_ms: float  # wall time per chunk: reading, decoding, preprocessing, inference, postprocessing
    read_ms: float  # of which reading + deserialising the bag
    infer_ms: float  # of which the backend's inference stage
    bare_ms: float  # bare backend.infer per chunk, mean of the calls interleaved with this pass
    chunks: int

    @property
    def overhead_pct(self) -> float:
        """Replay cost per chunk above the bare backend, in percent."""
        if self.chunks <= 0 or self.bare_ms <= 0:
            return float("nan")
        return (self.replay_ms / self.bare_ms - 1.0) * 100.0

    @property
    def pipeline_overhead_pct(self) -> float:
        """Everything but inference as a percentage of this pass's own inference time."""
        if self.infer_ms <= 0:
            return float("nan")
        return (self.replay_ms - self.infer_ms) / self.infer_ms * 100.0

    def as_dict(self) -> dict[str, float]:
        return {"replay_ms": self.replay_ms, "read_ms": self.read_ms, "infer_ms": self.infer_ms,
                "bare_ms": self.bare_ms, "chunks": self.chunks, "overhead_pct": self.overhead_pct,
                "pipeline_overhead_pct": self.pipeline_overhead_pct}


@dataclass
class BackendRun:
    """Everything one backend produced during the replay."""

    requested: str
    backend: str = ""  # what actually ran
    device: str = ""
    precision: str = "fp32"
    parallel_units: int = 0
    chunks: list[ActionChunk] = field(default_factory=list)
    timings: list[ChunkTiming] = field(default_factory=list)
    observations: int = 0  # observations handed to the engine
    dropped: dict[str, int] = field(default_factory=dict)  # frames rejected by the engine, by reason
    snapshot: dict = field(default_factory=dict)  # InferenceMetrics.as_dict() at the end
    wall_s: float = 0.0  # reading + decoding + inference + post-processing (not bag writing, not bare calls)
    bare_s: float = 0.0  # the bare calls interleaved with this pass (excluded from wall_s)
    bare_calls_ms: list[float] = field(default_factory=list)
    read_s: float = 0.0  # reading + deserialising bag messages
    write_s: float = 0.0  # writing the output bag (reported, not part of the overhead figure)
    infer_s: float = 0.0  # sum of the backend's inference stage
    bare_infer_ms: dict[str, float] = field(default_factory=dict)  # percentiles of bare backend.infer
    batch_size: int = 1  # observations per bare backend.infer call
    rounds: list[TimingRound] = field(default_factory=list)  # interleaved bare / replay measurements
    jpeg_reduced_decode: bool = False  # the JPEG decode setting this run used
    decode_paths: dict[str, int] = field(default_factory=dict)  # compressed frames per decode path
    label_suffix: str = ""  # "@jpeg-full" / "@jpeg-reduced" when one replay compares both settings
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def label(self) -> str:
        """How the report and the output bag name this run: the backend that ran, plus the
        precision when one was asked for explicitly (``openvino:fp16``)."""
        name, precision = split_backend_spec(self.requested)
        if precision:
            return f"{self.backend or name}:{precision}{self.label_suffix}"
        return f"{self.backend or name}{self.label_suffix}"

    @property
    def decode_mode(self) -> str:
        return "reduced" if self.jpeg_reduced_decode else "full"

    def stage(self, name: str) -> dict[str, float]:
        if name == "infer":
            return metrics_lib.percentiles([t.infer_ms for t in self.timings])
        if name == "total":
            return metrics_lib.percentiles([t.total_ms for t in self.timings])
        return metrics_lib.percentiles(
            [c.timings_ms.get(name, np.nan) for c in self.chunks if name in c.timings_ms]
        )

    @property
    def replay_fps(self) -> float:
        return metrics_lib.throughput(len(self.chunks), self.wall_s)

    @property
    def bare_fps(self) -> float:
        """Observations per second of the bare backend (a call infers ``batch_size`` of them)."""
        mean = self.bare_infer_ms.get("mean", 0.0)
        return metrics_lib.throughput(1000.0 * max(self.batch_size, 1), mean) if mean > 0 else 0.0

    @property
    def median_round(self) -> TimingRound | None:
        """The round with the median overhead (the lower one of the middle two for an even count)."""
        valid = [r for r in self.rounds if r.chunks > 0 and r.bare_ms > 0]
        if not valid:
            return None
        return sorted(valid, key=lambda r: r.overhead_pct)[(len(valid) - 1) // 2]

    @property
    def overhead_pct(self) -> float:
        """Replay cost per chunk above the bare backend, in percent (the median round's)."""
        median = self.median_round
        return median.overhead_pct if median is not None else float("nan")

    @property
    def pipeline_overhead_pct(self) -> float:
        """Everything but inference (bag reading, decoding, preprocessing, postprocessing) as a
        percentage of the inference time of the same pass (median round): no bare run involved."""
        median = self.median_round
        return median.pipeline_overhead_pct if median is not None else float("nan")


@dataclass
class ReplayResult:
    bag: Path
    model: str
    rate: str
    selection: TopicSelection
    input_messages: dict[str, int]  # topic -> messages in the bag
    primary_frames: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # messages that never became observations
    runs: list[BackendRun] = field(default_factory=list)
    output_bag: Path | None = None
    action_names: tuple[str, ...] = ()
    machine: str = ""

    @property
    def baseline(self) -> BackendRun | None:
        ok = [r for r in self.runs if r.ok]
        for run in ok:
            if run.backend == BASELINE_BACKEND:
                return run
        return ok[0] if ok else None


class Progress:
    """A single progress line on stderr (redrawn on a terminal, every ~10 % otherwise)."""

    def __init__(self, label: str, total: int, enabled: bool = True, stream=None):
        self.label, self.total = label, max(int(total), 1)
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_t = 0.0
        self._last_decile = -1

    def update(self, done: int, extra: str = "") -> None:
        if not self.enabled:
            return
        frac = min(done / self.total, 1.0)
        now = time.monotonic()
        if self.tty:
            if now - self._last_t < 0.2 and done < self.total:
                return
            self._last_t = now
            self.stream.write(f"\r{self.label}: {done}/{self.total} messages ({frac:4.0%}) {extra}   ")
        else:
            decile = int(frac * 10)
            if decile == self._last_decile:
                return
            self._last_decile = decile
            self.stream.write(f"{self.label}: {done}/{self.total} messages ({frac:4.0%}) {extra}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _timed_events(source: BagSource, selection: TopicSelection, run: BackendRun, progress: Progress) -> Iterator[BagEvent]:
    """Bag events, adding the time spent reading/deserialising them to ``run.read_s``."""
    iterator = source.events(selection)
    done = 0
    while True:
        t0 = time.perf_counter()
        try:
            event = next(iterator)
        except StopIteration:
            run.read_s += time.perf_counter() - t0
            return
        run.read_s += time.perf_counter() - t0
        done += 1
        if done % 8 == 0:
            progress.update(done, f"{len(run.chunks)} chunks")
        yield event


class ReadAhead:
    """Observations from ``source`` made ``depth`` ahead on a reader thread: the bag read, the message
    decoding, the assembly and ``decode`` (the preprocessor's JPEG decode) of the next frames run while
    the backend infers the current one (decoders and runtimes release the GIL). Order is kept; an
    exception of the reader is raised in the consumer at its place in the stream; leaving the ``with``
    block stops and joins the reader (the bag closes after it)."""

    _END = object()

    def __init__(self, source: Iterator[TimedObservation], decode, depth: int):
        import queue
        import threading

        self._source, self._decode = source, decode
        self._queue: "queue.Queue" = queue.Queue(maxsize=max(int(depth), 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replay-read-ahead", daemon=True)

    def _put(self, item) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for timed in self._source:
                timed = TimedObservation(self._decode(timed.observation), timed.log_ns)
                if not self._put(timed):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(_ReaderFailure(exc))
            return
        self._put(self._END)

    def __enter__(self) -> "ReadAhead":
        self._thread.start()
        return self

    def __iter__(self) -> Iterator[TimedObservation]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, _ReaderFailure):
                raise item.error
            yield item

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class _ReaderFailure:
    error: BaseException


def bare_samples(backend, inputs: dict[str, np.ndarray], iterations: int) -> list[float]:
    """``backend.infer`` on ready tensors, timed per call (ms): the backend alone, no bag, no decode."""
    n = max(int(iterations), 1)
    return time_calls(lambda: backend.infer(inputs), min_calls=n, max_calls=n)


def _load_backend(name: str, bundle, options: ReplayOptions):
    from vla_accel.backends.registry import create_backend

    backend_name, precision = split_backend_spec(name)
    backend = create_backend(backend_name, bundle, options.backend_options(precision))
    backend.load()
    backend.warmup(batch_size=options.batch_size, iterations=2)
    return backend


def _record_chunks(run: BackendRun, chunks: Sequence[ActionChunk], log_of: dict[int, int], writer, device: str, batch: int) -> None:
    for chunk in chunks:
        infer_ms = float(chunk.timings_ms.get("infer", 0.0))
        total_ms = float(chunk.timings_ms.get("total", 0.0))
        log_ns = log_of.get(chunk.stamp_ns, chunk.stamp_ns)
        run.chunks.append(chunk)
        run.timings.append(ChunkTiming(log_ns, chunk.stamp_ns, infer_ms, total_ms))
        run.infer_s += infer_ms / 1000.0 / max(batch, 1)
        if writer is not None:
            t0 = time.perf_counter()
            writer.write_chunk(chunk, log_ns, device=device, batch_size=batch, label=run.label)
            run.write_s += time.perf_counter() - t0


def _write_stats(run: BackendRun, engine, writer, log_ns: int, model: str) -> None:
    from vla_accel.bags.writer import stats_fields

    t0 = time.perf_counter()
    snapshot = engine.metrics.snapshot()  # only taken for the stats message: part of writing it
    writer.write_stats(stats_fields(snapshot), log_ns, backend=run.backend, device=run.device, model=model,
                       label=run.label)
    run.write_s += time.perf_counter() - t0


def replay_backend(
    bag: Path,
    bundle,
    name: str,
    options: ReplayOptions,
    writer=None,
    *,
    result: ReplayResult | None = None,
    jpeg_reduced_decode: bool | None = None,
    label_suffix: str = "",
) -> BackendRun:
    """Replay ``bag`` through one backend. Backend failures are reported in ``run.error``."""
    from vla_accel.core.preprocess import JPEG_REDUCED_DECODE_DEFAULT

    run = BackendRun(requested=name, precision=split_backend_spec(name)[1] or options.precision,
                     jpeg_reduced_decode=(JPEG_REDUCED_DECODE_DEFAULT if jpeg_reduced_decode is None
                                          else bool(jpeg_reduced_decode)),
                     label_suffix=label_suffix)
    try:
        backend = _load_backend(name, bundle, options)
    except VlaAccelError as exc:
        run.error = str(exc)
        log.warning("replay: backend %s cannot run: %s", name, exc)
        return run
    except ImportError as exc:  # a backend module missing from this install: report it, replay the rest
        run.error = f"backend '{name}' is not installed in this build of vla_accel: {exc}"
        log.warning("replay: %s", run.error)
        return run
    try:
        info = backend.device_info()
        run.backend, run.device, run.parallel_units = info.backend, info.device, info.parallel_units
        run.precision = info.precision
        run.batch_size = max(int(options.batch_size), 1)
        _timed_rounds(bag, bundle, backend, info, options, run, writer, result)
    except BackendError as exc:
        run.error = f"failed during replay: {exc}"
        log.warning("replay: backend %s failed: %s", name, exc)
    finally:
        backend.close()
    return run


def _timed_rounds(bag: Path, bundle, backend, info, options: ReplayOptions, run: BackendRun, writer,
                  result: ReplayResult | None) -> None:
    """A bare block (warm-up), then ``timing_rounds`` replay passes with a bare call after each
    inference: the first pass is the recorded one (chunks, output bag, metrics); later passes only
    time the same replay again. Live mode paces frames by the bag's clock, so its wall time says
    nothing about cost: one pass, no interleaving, compared with the bare block."""
    from vla_accel.core.spec import example_inputs

    inputs = example_inputs(bundle.spec, run.batch_size, seed=1)
    live = options.rate.kind == "live"
    block = bare_samples(backend, inputs, options.bare_iterations)
    paired = None if live else inputs
    passes: list[BackendRun] = []
    for index in range(1 if live else max(int(options.timing_rounds), 1)):
        if index == 0:
            target = run
            _replay_pass(bag, bundle, backend, info, options, target, writer, result, f"replay {run.requested}", paired)
        else:
            target = BackendRun(requested=run.requested, backend=run.backend, device=run.device,
                                precision=run.precision, jpeg_reduced_decode=run.jpeg_reduced_decode)
            _replay_pass(bag, bundle, backend, info, options, target, None, None, "", paired)
            if len(target.chunks) != len(run.chunks):
                log.warning("replay %s: timing pass %d gave %d chunks, the recorded pass %d", run.requested,
                            index + 1, len(target.chunks), len(run.chunks))
        passes.append(target)
    run.bare_infer_ms = metrics_lib.percentiles(block + [ms for done in passes for ms in done.bare_calls_ms])
    for done in passes:
        chunks = len(done.chunks)
        scale = 1000.0 / chunks if chunks else float("nan")  # seconds per pass -> ms per chunk
        bare_calls = done.bare_calls_ms or block
        run.rounds.append(TimingRound(
            replay_ms=done.wall_s * scale,
            read_ms=done.read_s * scale,
            infer_ms=done.infer_s * scale,
            bare_ms=float(np.mean(bare_calls)) / run.batch_size,
            chunks=chunks,
        ))


def _replay_pass(bag: Path, bundle, backend, info, options: ReplayOptions, run: BackendRun, writer,
                 result: ReplayResult | None, progress_label: str, bare_inputs=None) -> None:
    """One replay of the bag through a fresh Engine into ``run`` (chunks, timings, drops); with
    ``bare_inputs``, a bare ``backend.infer`` on them follows each inference (see the module doc)."""
    from vla_accel.core.engine import Engine

    engine = Engine(bundle, backend, max_batch=options.batch_size, jpeg_reduced_decode=run.jpeg_reduced_decode)
    engine.metrics.set_device(info)
    with BagSource(bag) as source:
        selection = source.select_topics(
            bundle.spec, options.camera_topics, options.instruction_topic, options.state_topic
        )
        builder = ObservationBuilder(bundle.spec, selection, options.rate, engine.metrics)
        progress = Progress(progress_label, source.message_count(selection), options.progress and bool(progress_label))
        events = _timed_events(source, selection, run, progress)
        t_start = time.perf_counter()
        if options.rate.kind == "live":
            last_log_ns = _replay_live(engine, builder.observations(events), run, writer, options)
        elif options.read_ahead > 0:
            with ReadAhead(builder.observations(events), engine.preprocessor.decode_ahead, options.read_ahead) as ahead:
                last_log_ns = _replay_offline(engine, iter(ahead), run, writer, options, bare_inputs)
        else:
            last_log_ns = _replay_offline(engine, builder.observations(events), run, writer, options, bare_inputs)
        run.wall_s = time.perf_counter() - t_start - run.write_s - run.bare_s
        progress.update(progress.total, f"{len(run.chunks)} chunks")
        progress.close()
        snapshot = engine.metrics.snapshot()
        run.snapshot = snapshot.as_dict()
        run.dropped = dict(snapshot.dropped)
        run.decode_paths = engine.preprocessor.decode_counts()
        if writer is not None and last_log_ns is not None:
            _write_stats(run, engine, writer, last_log_ns, bundle.spec.name)
        if result is not None:
            result.primary_frames = builder.frames
            skipped = collections.Counter(source.skipped)
            skipped.update(builder.skipped)
            result.skipped = dict(skipped)


def _replay_offline(engine, observations: Iterator[TimedObservation], run: BackendRun, writer, options: ReplayOptions,
                    bare_inputs: dict[str, np.ndarray] | None = None) -> int | None:
    """Every observation in bag order, in batches of ``batch_size``; stats once per bag second.
    With ``bare_inputs``, each inference is followed by one timed bare call (in ``run.bare_s``)."""
    batch: list[TimedObservation] = []
    last_log_ns: int | None = None
    next_stats_ns: int | None = None

    def flush() -> None:
        if not batch:
            return
        log_of = {t.observation.stamp_ns: t.log_ns for t in batch}
        run.observations += len(batch)
        chunks = engine.infer([t.observation for t in batch])
        _record_chunks(run, chunks, log_of, writer, run.device, len(batch))
        batch.clear()
        if bare_inputs is not None and chunks:
            elapsed_ms = time_call_ms(lambda: engine.backend.infer(bare_inputs))
            run.bare_s += elapsed_ms / 1000.0
            run.bare_calls_ms.append(elapsed_ms)

    for timed in observations:
        batch.append(timed)
        last_log_ns = timed.log_ns
        if len(batch) >= options.batch_size:
            flush()
        if writer is not None:
            if next_stats_ns is None:
                next_stats_ns = timed.log_ns + 1_000_000_000
            elif timed.log_ns >= next_stats_ns:
                _write_stats(run, engine, writer, timed.log_ns, engine.model_name)
                next_stats_ns = timed.log_ns + 1_000_000_000
    flush()
    return last_log_ns


def _replay_live(engine, observations: Iterator[TimedObservation], run: BackendRun, writer, options: ReplayOptions) -> int | None:
    """Observations submitted at their recorded times through the latest-frame InferenceLoop."""
    import threading

    from vla_accel.core.scheduling import InferenceLoop

    log_of: dict[int, int] = {}
    collected: list[ActionChunk] = []
    errors: list[Exception] = []
    lock = threading.Lock()

    def on_chunks(chunks) -> None:
        with lock:
            collected.extend(chunks)

    def on_error(exc: Exception) -> None:
        with lock:
            errors.append(exc)

    loop = InferenceLoop(engine, batch_size=options.batch_size, on_chunks=on_chunks, on_error=on_error)
    speed = options.live_speed if options.live_speed > 0 else 1.0
    first_log_ns: int | None = None
    t0 = time.monotonic_ns()
    last_log_ns: int | None = None
    loop.start()
    try:
        for timed in observations:
            if first_log_ns is None:
                first_log_ns = timed.log_ns
            due_ns = t0 + int((timed.log_ns - first_log_ns) / speed)
            wait_s = (due_ns - time.monotonic_ns()) / 1e9
            if wait_s > 0:
                time.sleep(wait_s)
            log_of[timed.observation.stamp_ns] = timed.log_ns
            timed.observation.received_ns = time.monotonic_ns()
            run.observations += 1
            last_log_ns = timed.log_ns
            loop.submit(timed.observation)
        _drain(engine, run, collected, lock)
    finally:
        loop.stop()
    with lock:
        chunks = sorted(collected, key=lambda c: c.stamp_ns)
    _record_chunks(run, chunks, log_of, writer, run.device, options.batch_size)
    backend_errors = [e for e in errors if isinstance(e, BackendError)]
    if backend_errors:
        # input errors are counted drops (engine.metrics); a failing backend fails the run
        raise BackendError(f"live replay: {backend_errors[0]}", reason="backend_error")
    return last_log_ns


def _drain(engine, run: BackendRun, collected: list, lock, timeout_s: float = 10.0) -> None:
    """Wait until every received frame is accounted for: a delivered chunk or a counted drop."""
    metrics = engine.metrics
    deadline = time.monotonic() + timeout_s
    pending = 0
    while time.monotonic() < deadline:
        with lock:
            delivered = len(collected)
        processed = metrics.frames_processed
        pending = metrics.frames_received - processed - metrics.frames_dropped
        if pending <= 0 and delivered >= processed:
            return
        time.sleep(0.01)
    log.warning("live replay: %d frames still unaccounted for after %.0f s", pending, timeout_s)


def run_replay(bag: str | Path, options: ReplayOptions, out_dir: str | Path | None = None) -> ReplayResult:
    """Replay through every backend in ``options.backends``; writes ``out_dir/actions.mcap`` when given."""
    from vla_accel.bags.writer import ReplayBagWriter
    from vla_accel.models import load_model

    bag = Path(bag)
    bundle = load_model(options.model, cache_dir=options.runtime.cache_dir or None)
    with BagSource(bag) as source:
        selection = source.select_topics(
            bundle.spec, options.camera_topics, options.instruction_topic, options.state_topic
        )
        input_messages = {t: int(source.counts[t]) for t in sorted(source.topics)}
    result = ReplayResult(
        bag=bag,
        model=bundle.spec.name,
        rate=str(options.rate),
        selection=selection,
        input_messages=input_messages,
        action_names=tuple(bundle.spec.action.names),
        machine=machine_description(),
    )
    writer = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        result.output_bag = out_dir / "actions"
        if result.output_bag.exists():
            raise VlaAccelError(
                f"output bag {result.output_bag} exists already; choose another --out folder or remove it",
                reason="bag_exists",
            )
        writer = ReplayBagWriter(result.output_bag)
    settings = list(dict.fromkeys(options.jpeg_reduced_decode)) or [None]
    try:
        for name in options.backends:
            for setting in settings:
                suffix = "" if len(settings) == 1 else ("@jpeg-reduced" if setting else "@jpeg-full")
                result.runs.append(replay_backend(bag, bundle, name, options, writer, result=result,
                                                  jpeg_reduced_decode=setting, label_suffix=suffix))
    finally:
        if writer is not None:
            writer.close()
    return result


def deviations(result: ReplayResult):
    """Each backend's action deviation from the baseline backend (see compare.compare_chunks)."""
    from vla_accel.bags.compare import compare_chunks

    base = result.baseline
    out = {}
    if base is None:
        return out
    for run in result.runs:
        if run.ok and run is not base:
            out[run.label] = compare_chunks(run.chunks, base.chunks, result.action_names)
    return out

