"""Measured backend speed per (model, backend, precision, machine), cached as a small JSON file.

``backend: auto`` orders backends by these measurements instead of guessing from names: a Coral
stick is slower than a desktop CPU for some models, a GPU is slower at batch 1 for small ones.
``vla-accel doctor --calibrate --model tiny`` measures every backend that can run here and stores
the result; ``resolve_backends("auto")`` measures briefly (bounded time) whatever is missing.

File: ``<cache>/calibration.json`` (``$VLA_ACCEL_CACHE`` or ~/.cache/vla_accel), one record per key
``<model content hash>/<backend>/<precision>/<machine id>``, written atomically. A corrupt file is
reported once and treated as empty (it is rewritten on the next store), never a crash.
No heavy runtime is imported here; measuring loads the backend through the registry.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from vla_accel.core.fileio import atomic_write_text
from vla_accel.core.timing import time_calls
from vla_accel.errors import VlaAccelError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.backends.base import BackendOptions
    from vla_accel.models.bundle import ModelBundle

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
FORMAT_VERSION = 1
REQUIREMENTS = ("latency", "throughput")


@lru_cache(maxsize=1)
def machine_id() -> str:
    """A stable id for this machine's compute: /etc/machine-id (when present), CPU model, core
    count and architecture, hashed. Cloned images share /etc/machine-id, hence the CPU facts."""
    parts = [platform.machine(), str(os.cpu_count() or 0)]
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            parts.append(Path(path).read_text(encoding="utf-8").strip())
            break
        except OSError:
            continue  # not every system has one
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    parts.append(line.split(":", 1)[1].strip())
                    break
    except OSError:
        parts.append(platform.processor())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass
class CalibrationRecord:
    """One measurement: p50 latency at batch 1 and throughput at ``batch``."""

    model_hash: str
    backend: str
    precision: str
    machine: str
    p50_ms: float
    p90_ms: float
    throughput_fps: float
    batch: int
    iterations: int
    device: str = ""
    measured_at: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        return record_key(self.model_hash, self.backend, self.precision, self.machine)

    def score(self, requirement: str) -> float:
        """Lower is better: latency -> p50 ms; throughput -> seconds per sample."""
        if requirement == "latency":
            return self.p50_ms
        return 1.0 / self.throughput_fps if self.throughput_fps > 0 else float("inf")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CalibrationRecord":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def record_key(model_hash: str, backend: str, precision: str, machine: str) -> str:
    return f"{model_hash}/{backend}/{precision}/{machine}"


def default_calibration_path() -> Path:
    from vla_accel.models.bundle import default_cache_dir

    return default_cache_dir() / CALIBRATION_FILE


class CalibrationStore:
    """The JSON cache. Cheap to construct; reads the file on first use."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_calibration_path()
        self._records: dict[str, CalibrationRecord] | None = None

    def _load(self) -> dict[str, CalibrationRecord]:
        if self._records is not None:
            return self._records
        records: dict[str, CalibrationRecord] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                for key, value in (data.get("records") or {}).items():
                    records[key] = CalibrationRecord.from_dict(value)
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                log.warning("calibration cache %s is unreadable (%s); ignoring it, it is rewritten on the next "
                            "calibration", self.path, exc)
                records = {}
        self._records = records
        return records

    def records(self) -> list[CalibrationRecord]:
        return list(self._load().values())

    def get(self, model_hash: str, backend: str, precision: str = "fp32",
            machine: str | None = None) -> CalibrationRecord | None:
        return self._load().get(record_key(model_hash, backend, precision, machine or machine_id()))

    def for_model(self, model_hash: str, precision: str | None = None,
                  machine: str | None = None) -> dict[str, CalibrationRecord]:
        """backend -> record for this model on this machine (one precision, or the best of all)."""
        machine = machine or machine_id()
        out: dict[str, CalibrationRecord] = {}
        for rec in self._load().values():
            if rec.model_hash != model_hash or rec.machine != machine:
                continue
            if precision is not None and rec.precision != precision:
                continue
            best = out.get(rec.backend)
            if best is None or rec.p50_ms < best.p50_ms:
                out[rec.backend] = rec
        return out

    def put(self, record: CalibrationRecord) -> None:
        self._load()[record.key] = record

    def save(self) -> Path:
        records = self._load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"version": FORMAT_VERSION, "records": {k: asdict(v) for k, v in sorted(records.items())}}
        return atomic_write_text(self.path, json.dumps(payload, indent=1, sort_keys=True))


def measure_backend(
    model: "ModelBundle",
    backend: str,
    options: "BackendOptions | None" = None,
    *,
    batch: int = 4,
    budget_s: float = 3.0,
    min_iterations: int = 3,
    max_iterations: int = 50,
) -> CalibrationRecord:
    """Load ``backend`` on ``model``, warm it up, then time batch-1 inferences and batch-``batch``
    inferences, each for about half of ``budget_s`` (at least ``min_iterations`` each). Loading
    (and a first export) is not counted in the budget. Raises the backend's error when it cannot run."""
    import dataclasses

    from vla_accel.backends.base import BackendOptions

    from vla_accel.core.spec import example_inputs
    from vla_accel.backends.registry import canonical_name, create_backend
    from vla_accel.core.metrics import percentiles, throughput

    name = canonical_name(backend)
    opts = dataclasses.replace(options) if options is not None else BackendOptions()
    opts.max_batch = max(int(opts.max_batch), int(batch))
    engine = create_backend(name, model, opts)
    engine.load()
    try:
        one = example_inputs(model.spec, 1, seed=1)
        many = example_inputs(model.spec, batch, seed=2)
        engine.infer(one)
        engine.infer(many)
        samples = time_calls(lambda: engine.infer(one), min_calls=min_iterations, max_calls=max_iterations,
                             seconds=budget_s / 2)
        done, started = 0, time.perf_counter()
        deadline = started + budget_s / 2
        while done < max_iterations * batch and (done < min_iterations * batch or time.perf_counter() < deadline):
            engine.infer(many)
            done += batch
        elapsed = time.perf_counter() - started
        stats = percentiles(samples)
        info = engine.device_info()
        return CalibrationRecord(
            model_hash=model.content_hash(),
            backend=name,
            precision=opts.precision,
            machine=machine_id(),
            p50_ms=round(stats["p50"], 4),
            p90_ms=round(stats["p90"], 4),
            throughput_fps=round(throughput(done, elapsed), 3),
            batch=int(batch),
            iterations=len(samples),
            device=info.hardware_id,
        )
    finally:
        engine.close()


def calibrate(
    model: "ModelBundle",
    backends: Iterable[str],
    options: "BackendOptions | dict[str, BackendOptions] | None" = None,
    *,
    store: CalibrationStore | None = None,
    batch: int = 4,
    budget_s: float = 3.0,
) -> tuple[list[CalibrationRecord], dict[str, str]]:
    """Measure each backend and store the results; returns (records, {backend: why it failed})."""
    store = store or CalibrationStore()
    records: list[CalibrationRecord] = []
    failures: dict[str, str] = {}
    for name in backends:
        opts = options.get(name) if isinstance(options, dict) else options
        try:
            record = measure_backend(model, name, opts, batch=batch, budget_s=budget_s)
        except VlaAccelError as exc:
            failures[name] = str(exc)
            continue
        except (RuntimeError, OSError, ValueError, ImportError) as exc:  # a runtime's own failure
            failures[name] = f"{type(exc).__name__}: {exc}"
            continue
        store.put(record)
        records.append(record)
    if records:
        store.save()
    return records, failures
