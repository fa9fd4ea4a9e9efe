"""Shared pieces of the scheduling benchmarks (``vla-accel bench pipeline|batching|memory|realtime``).

Synthetic camera frames (JPEG or raw, any size, made once per run so encoding is not timed), engine
construction from the common ``vla-accel bench`` options, paced and saturating feeders that drive an
``InferenceLoop`` from their own threads, and report output (a table on stdout, JSON with --json).
Every statistic goes through ``vla_accel.core.metrics``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from vla_accel.core.types import Observation, RawImage
from vla_accel.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.engine import Engine
    from vla_accel.core.scheduling import InferenceLoop
    from vla_accel.core.spec import ModelSpec

# input kind -> (width, height, encoding)
INPUT_KINDS: dict[str, tuple[int, int, str]] = {
    "jpeg1080": (1920, 1080, "jpeg"),
    "jpeg720": (1280, 720, "jpeg"),
    "jpeg480": (640, 480, "jpeg"),
    "raw1080": (1920, 1080, "rgb8"),
    "raw480": (640, 480, "rgb8"),
}
INSTRUCTION = "put the red cube in the bowl"  # fits tiny's 32-token (30-byte) context


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def synthetic_rgb(width: int, height: int, seed: int) -> np.ndarray:
    """A camera-like frame: smooth gradients plus sensor noise (so JPEG sizes and decode costs are
    those of a real scene, not of a flat or random image)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    channels = [
        127 + 100 * np.sin(xx / (40 + 17 * k) + yy / (55 + 9 * k) + phase[k]) for k in range(3)
    ]
    image = np.stack(channels, axis=-1) + rng.normal(0, 6, size=(height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    """JPEG bytes with simplejpeg when installed, else Pillow (core.image decodes with either)."""
    try:
        import simplejpeg
    except ImportError:
        import io

        from PIL import Image

        out = io.BytesIO()
        Image.fromarray(rgb).save(out, format="JPEG", quality=quality)
        return out.getvalue()
    return simplejpeg.encode_jpeg(rgb, quality=quality, colorspace="RGB")


class FrameSource:
    """Pre-made frames of one kind for every camera of a model; ``observation()`` cycles through them."""

    def __init__(self, spec: "ModelSpec", kind: str = "jpeg1080", variants: int = 4, seed: int = 0):
        if kind not in INPUT_KINDS:
            raise ConfigError(f"input kind must be one of {', '.join(INPUT_KINDS)}; got {kind!r}")
        width, height, encoding = INPUT_KINDS[kind]
        self.spec = spec
        self.kind = kind
        self.frames: list[dict[str, RawImage]] = []
        for v in range(variants):
            per_camera = {}
            for c, cam in enumerate(spec.cameras):
                rgb = synthetic_rgb(width, height, seed + 31 * v + c)
                if encoding == "jpeg":
                    per_camera[cam.name] = RawImage(data=encode_jpeg(rgb), encoding="jpeg")
                else:
                    per_camera[cam.name] = RawImage(data=rgb.tobytes(), encoding="rgb8", height=height,
                                                    width=width, step=width * 3)
            self.frames.append(per_camera)
        self.bytes_per_frame = sum(
            len(img.data) for img in self.frames[0].values()
        )
        self._state = np.zeros(spec.state.dims, dtype=np.float32) if spec.state is not None else None
        self._count = 0

    def observation(self, stream: str = "default", stamp_ns: int | None = None) -> Observation:
        frame = self.frames[self._count % len(self.frames)]
        self._count += 1
        return Observation(
            images=frame,
            instruction=INSTRUCTION,
            stamp_ns=time.time_ns() if stamp_ns is None else stamp_ns,
            state=self._state,
            stream=stream,
            received_ns=time.monotonic_ns(),
        )


def backend_name(args: argparse.Namespace) -> str:
    backends = getattr(args, "backends", None) or ["torch"]
    return backends[0]


def build_engine(
    model: str,
    backend: str,
    *,
    max_batch: int = 1,
    memory: str = "static",
    threads: int = 1,
    pool_size: int = 2,
    warmup: int = 3,
    jpeg_reduced_decode: bool | None = None,
) -> "Engine":
    """Load the model on a backend and wrap it in a warmed-up Engine (``jpeg_reduced_decode``: the
    JPEG decode setting, None = the core default; see ``jpeg_setting``)."""
    from vla_accel.backends.base import BackendOptions
    from vla_accel.backends.registry import create_backend
    from vla_accel.core.engine import Engine
    from vla_accel.models import load_model

    bundle = load_model(model)
    options = BackendOptions(threads=threads, max_batch=max_batch)
    engine = Engine(bundle, create_backend(backend, bundle, options), max_batch=max_batch, memory=memory,
                    pool_size=pool_size, jpeg_reduced_decode=jpeg_reduced_decode)
    if warmup:
        engine.warmup(warmup)
    return engine


def jpeg_setting(args: argparse.Namespace) -> bool | None:
    """``--jpeg-reduced-decode on|off`` -> True / False; absent -> None (the core default)."""
    value = getattr(args, "jpeg_reduced_decode", None)
    return None if value is None else value == "on"


def decode_report(engine: "Engine") -> dict[str, Any]:
    """The JPEG decode setting and the compressed frames decoded per path, for a benchmark's JSON."""
    pre = engine.preprocessor
    return {"jpeg_reduced_decode": pre.jpeg_reduced_decode, "decode_paths": pre.decode_counts()}


class Feeder:
    """Drives an InferenceLoop from one thread per stream.

    ``rate_hz`` > 0: frames on an absolute schedule (no drift; a late tick is sent at once and the
    schedule is kept). ``rate_hz`` == 0: saturating, a new frame whenever the stream's slot is
    empty, so the loop always has the freshest possible frame and never waits for input.
    """

    def __init__(self, loop: "InferenceLoop", source: FrameSource, streams: Sequence[str] = ("default",),
                 rate_hz: float = 0.0):
        self.loop = loop
        self.source = source
        self.streams = list(streams)
        self.rate_hz = rate_hz
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _run(self, stream: str, offset_s: float) -> None:
        slot = self.loop._slots.slot(stream)  # noqa: SLF001 (the benchmark watches its own loop's slot)
        if self.rate_hz > 0:
            period = 1.0 / self.rate_hz
            next_t = time.monotonic() + offset_s
            while not self._stop.is_set():
                delay = next_t - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                self._send(stream)
                next_t += period
        else:
            while not self._stop.is_set():
                if slot.wait_until_empty(timeout=0.05):
                    self._send(stream)

    def _send(self, stream: str) -> None:
        with self._lock:
            observation = self.source.observation(stream)
            self.sent += 1
        self.loop.submit(observation)

    def start(self) -> "Feeder":
        spread = (1.0 / self.rate_hz / max(1, len(self.streams))) if self.rate_hz > 0 else 0.0
        for i, stream in enumerate(self.streams):
            thread = threading.Thread(target=self._run, args=(stream, i * spread), daemon=True,
                                      name=f"feeder-{stream}")
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2.0)
        if any(t.is_alive() for t in self._threads):
            log("[bench] a feeder thread did not stop within 2 s")


class ChunkLog:
    """on_chunks target: keeps (monotonic delivery ns, total latency ms, stream) per chunk."""

    def __init__(self):
        self.entries: list[tuple[int, float, str]] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()

    def on_chunks(self, chunks) -> None:
        now = time.monotonic_ns()
        with self._lock:
            for chunk in chunks:
                self.entries.append((now, float(chunk.timings_ms.get("total", 0.0)), chunk.stream))

    def on_error(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(exc)

    def latencies(self, since_ns: int = 0, until_ns: int | None = None) -> list[float]:
        with self._lock:
            return [ms for t, ms, _ in self.entries if t >= since_ns and (until_ns is None or t < until_ns)]

    def __len__(self) -> int:
        with self._lock:
            return len(self.entries)


def run_loop(loop: "InferenceLoop", feeder: Feeder, seconds: float, log_chunks: ChunkLog | None = None
             ) -> dict[str, Any]:
    """Start loop and feeder, run ``seconds``, stop both; returns counts and the measured window."""
    metrics = loop.engine.metrics
    metrics.reset()
    delivered_before = loop.chunks_delivered
    loop.start()
    started = time.monotonic_ns()
    feeder.start()
    time.sleep(seconds)
    feeder.stop()
    elapsed_s = (time.monotonic_ns() - started) / 1e9
    processed_in_window = loop.chunks_delivered - delivered_before
    # Let the frames already handed over finish, so none is counted as missed only because the
    # run ended (the throughput above is taken before this).
    drain_deadline = time.monotonic() + 5.0
    while not loop.idle and time.monotonic() < drain_deadline:
        time.sleep(0.002)
    stopped = loop.stop(timeout=5.0)
    snap = metrics.snapshot()
    return {
        "seconds": elapsed_s,
        "sent": feeder.sent,
        "processed": processed_in_window,
        "received": snap.frames_received,
        "dropped": dict(snap.dropped),
        "superseded": snap.frames_superseded,
        "stopped_cleanly": stopped,
        "snapshot": snap,
        "started_ns": started,
    }


def stage_table(snapshot) -> dict[str, dict[str, float]]:
    """p50 / p99 / mean (ms) per stage of a MetricsSnapshot (only the stages that have samples)."""
    out = {}
    for stage in ("preprocess", "infer", "postprocess", "total", "age_at_start"):
        stats = snapshot.stage(stage)
        if stats["count"]:
            out[stage] = {k: round(float(stats[k]), 3) for k in ("p50", "p99", "mean", "max", "count")}
    return out


def machine_info() -> dict[str, Any]:
    """core.machine's description plus the load when the benchmark started."""
    from vla_accel.core import machine

    return {**machine.machine_info(), "load_avg_1min_at_start": machine.load_average_1min()}


def format_rows(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def write_json(args: argparse.Namespace, report: dict[str, Any]) -> None:
    path: Path | None = getattr(args, "json_path", None)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=_json_default), encoding="utf-8")
    log(f"wrote {path}")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return str(value)


def threads_option(args: argparse.Namespace, default: int = 1) -> int:
    """--threads, where 0 (the bench default, "runtime default") means ``default`` here: these
    benchmarks overlap stages on separate cores, which a runtime using every core would defeat."""
    threads = int(getattr(args, "threads", 0) or 0)
    return threads if threads > 0 else default
