"""Write replay outputs into a bag (MCAP by default) and read action chunks back from any bag.

Output topics, per backend ``B`` (non-alphanumerics of the name become ``_``):
``/vla_replay/B/action_chunk`` (vla_accel/msg/ActionChunk, header.stamp = the source frame stamp,
log time = the source frame's bag time, so outputs line up with inputs on a timeline) and
``/vla_replay/B/stats`` (vla_accel/msg/InferenceStats). The bag embeds the message definitions.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vla_accel.bags import messages
from vla_accel.bags.messages import BagError
from vla_accel.core.types import ActionChunk

TOPIC_PREFIX = "/vla_replay"


def topic_name(backend: str, leaf: str) -> str:
    return f"{TOPIC_PREFIX}/{re.sub(r'[^A-Za-z0-9_]', '_', backend)}/{leaf}"


def chunk_message(chunk: ActionChunk, *, device: str = "", batch_size: int = 1):
    """ActionChunk (core type) -> vla_accel/msg/ActionChunk (rosbags dataclass)."""
    ActionChunkMsg = messages.message_class(messages.ACTION_CHUNK)
    values = np.ascontiguousarray(chunk.values, dtype=np.float32)
    timings = chunk.timings_ms or {}
    return ActionChunkMsg(
        header=messages.header(chunk.stamp_ns, chunk.frame_id),
        model=chunk.model,
        backend=chunk.backend,
        device=device,
        action_space=chunk.space,
        names=list(chunk.names),
        dt=float(chunk.dt),
        steps=values.shape[0],
        dims=values.shape[1],
        values=values.reshape(-1),
        inference_latency_ms=float(timings.get("infer", timings.get("inference", 0.0))),
        total_latency_ms=float(timings.get("total", 0.0)),
        batch_size=int(batch_size),
    )


def stats_fields(snapshot) -> dict[str, Any]:
    """A metrics snapshot (core.metrics.MetricsSnapshot) -> InferenceStats field values."""
    flat = snapshot.as_dict()
    infer, total = snapshot.stage("infer"), snapshot.stage("total")
    return {
        "latency_p50_ms": infer["p50"],
        "latency_p95_ms": infer["p95"],
        "latency_p99_ms": infer["p99"],
        "latency_max_ms": infer["max"],
        "total_p50_ms": total["p50"],
        "total_p99_ms": total["p99"],
        "end_to_end_p50_ms": snapshot.stage("end_to_end")["p50"],
        "age_at_start_p50_ms": snapshot.stage("age_at_start")["p50"],
        "jitter_ms": snapshot.jitter_ms,
        "throughput_hz": snapshot.throughput_hz,
        "input_rate_hz": snapshot.input_rate_hz,
        "output_rate_hz": snapshot.output_rate_hz,
        "speedup": snapshot.speedup,
        "parallel_efficiency": snapshot.parallel_efficiency,
        "mean_batch_size": snapshot.mean_batch_size,
        "frames_received": flat["frames_received"],
        "frames_processed": flat["frames_processed"],
        "frames_dropped": flat["frames_dropped"],
        "frames_superseded": flat["frames_superseded"],
        "backend_switches": flat["backend_switches"],
        "prefix_p50_ms": flat.get("prefix_p50_ms", 0.0),
        "step_p50_ms": flat.get("step_p50_ms", 0.0),
        "program_p50_ms": flat.get("program_total_p50_ms", 0.0),
        "program_steps": int(flat.get("program_steps", 0) or 0),
    }


def stats_message(stats: Mapping[str, Any], *, stamp_ns: int, backend: str, device: str, model: str):
    """A flat dict of InferenceStats field values -> vla_accel/msg/InferenceStats.

    Fields missing from ``stats`` are 0; unknown keys are ignored (the message is the contract).
    """
    import dataclasses

    InferenceStats = messages.message_class(messages.INFERENCE_STATS)
    kwargs: dict[str, Any] = {
        "header": messages.header(stamp_ns),
        "backend": backend,
        "device": device,
        "model": model,
    }
    for f in dataclasses.fields(InferenceStats):
        if f.name in kwargs or f.name == "__msgtype__":
            continue
        value = stats.get(f.name, 0) or 0
        # rosbags annotates integer message fields as 'int' and float32/float64 ones as 'float'
        kwargs[f.name] = int(value) if f.type == "int" else float(value)
    return InferenceStats(**kwargs)


class ReplayBagWriter:
    """Writes per-backend action chunks and stats. Use as a context manager."""

    def __init__(self, path: str | Path, storage: str = "mcap"):
        from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

        self.path = Path(path)
        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise BagError(f"storage must be one of {sorted(plugins)}, got {storage!r}", reason="bad_argument")
        try:
            self._writer = Writer(self.path, version=9, storage_plugin=plugins[storage])
            self._writer.open()
        except WriterError as exc:
            raise BagError(f"cannot create output bag {self.path}: {exc}", reason="bag_write_failed") from exc
        self._store = messages.typestore()
        self._connections: dict[str, Any] = {}
        self.written: dict[str, int] = {}

    def _connection(self, topic: str, typename: str):
        if topic not in self._connections:
            self._connections[topic] = self._writer.add_connection(topic, typename, typestore=self._store)
            self.written[topic] = 0
        return self._connections[topic]

    def write_chunk(self, chunk: ActionChunk, log_ns: int, *, device: str = "", batch_size: int = 1,
                    label: str = "") -> None:
        """``label`` names the topic (default: the chunk's backend), e.g. ``openvino:fp16``."""
        conn = self._connection(topic_name(label or chunk.backend, "action_chunk"), messages.ACTION_CHUNK)
        msg = chunk_message(chunk, device=device, batch_size=batch_size)
        self._writer.write(conn, int(log_ns), self._store.serialize_cdr(msg, messages.ACTION_CHUNK))
        self.written[conn.topic] += 1

    def write_stats(self, stats: Mapping[str, Any], log_ns: int, *, backend: str, device: str, model: str,
                    label: str = "") -> None:
        conn = self._connection(topic_name(label or backend, "stats"), messages.INFERENCE_STATS)
        msg = stats_message(stats, stamp_ns=int(log_ns), backend=backend, device=device, model=model)
        self._writer.write(conn, int(log_ns), self._store.serialize_cdr(msg, messages.INFERENCE_STATS))
        self.written[conn.topic] += 1

    def write_raw(self, topic: str, typename: str, log_ns: int, data: bytes | memoryview) -> None:
        """Already serialised CDR (what a raw rclpy subscription hands over) for a known type."""
        conn = self._connection(topic, typename)
        self._writer.write(conn, int(log_ns), data)
        self.written[topic] += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "ReplayBagWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class ChunkRecord:
    """An action chunk as read back from a bag."""

    topic: str
    stamp_ns: int
    log_ns: int
    backend: str
    model: str
    names: tuple[str, ...]
    values: np.ndarray  # (steps, dims) float32
    frame_id: str = ""
    inference_latency_ms: float = 0.0
    total_latency_ms: float = 0.0


def read_action_chunks(path: str | Path) -> dict[str, list[ChunkRecord]]:
    """Every vla_accel/msg/ActionChunk in a bag, by topic, in bag order."""
    from vla_accel.bags.reader import open_reader

    store = messages.typestore()
    reader = open_reader(path)
    try:
        conns = [c for c in reader.connections if c.msgtype == messages.ACTION_CHUNK]
        out: dict[str, list[ChunkRecord]] = {c.topic: [] for c in conns}
        for conn, log_ns, raw in reader.messages(connections=conns):
            msg = store.deserialize_cdr(raw, messages.ACTION_CHUNK)
            values = np.asarray(msg.values, dtype=np.float32)
            if values.size != int(msg.steps) * int(msg.dims):
                raise BagError(
                    f"{path}: action chunk on {conn.topic} has {values.size} values for "
                    f"{msg.steps}x{msg.dims}",
                    reason="bad_chunk",
                )
            out[conn.topic].append(
                ChunkRecord(
                    topic=conn.topic,
                    stamp_ns=messages.stamp_to_ns(msg.header.stamp),
                    log_ns=int(log_ns),
                    backend=str(msg.backend),
                    model=str(msg.model),
                    names=tuple(msg.names),
                    values=values.reshape(int(msg.steps), int(msg.dims)),
                    frame_id=str(msg.header.frame_id),
                    inference_latency_ms=float(msg.inference_latency_ms),
                    total_latency_ms=float(msg.total_latency_ms),
                )
            )
        return out
    finally:
        reader.close()
