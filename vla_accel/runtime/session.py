"""The inference session: model, backend chain, CPU baseline, engine, loop (no ROS).

``InferenceSession(config)`` takes a ``RuntimeConfig`` (from the node's parameters, CLI options or YAML) and
* ``load()``: loads the model, builds the backend candidates (``backend`` + ``fallback``, or
  ``auto``) behind backends.selection.FallbackChain, warms it up, measures or reads the torch-CPU
  baseline for the speedup figure, and builds the core Engine and InferenceLoop;
* ``start()`` / ``submit(observation)`` / ``stop()``: run the loop; chunks go to ``on_chunks``.
``vla-accel demo --no-ros`` drives the same class in-process, so both paths run the same code.
Chosen backends import their runtime on load only (lazy registry).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vla_accel.backends.base import BackendOptions
from vla_accel.backends.registry import BASELINE_BACKEND

from vla_accel.core.spec import example_inputs
from vla_accel.core.metrics import InferenceMetrics, percentiles
from vla_accel.core.timing import time_interleaved
from vla_accel.errors import BackendError, ConfigError, VlaAccelError
from vla_accel.runtime.config import RuntimeConfig
from vla_accel.runtime.status import BackendState

log = logging.getLogger(__name__)

BASELINE_ITERATIONS = 30
BASELINE_MIN_ITERATIONS = 5
BASELINE_BUDGET_S = 15.0  # side-by-side timing stops after this long (at least BASELINE_MIN_ITERATIONS calls)


def candidate_backends(config: RuntimeConfig, bundle: Any = None) -> list[str]:
    """The ordered backends to try: backend (or auto's measured choice) then fallback, no repeats."""
    from vla_accel.backends.selection import resolve_backends

    options = backend_options(config, BASELINE_BACKEND) if config.backend == "auto" else None
    return resolve_backends(config.backend, requirement="latency", fallback=list(config.fallback),
                            model=bundle, options=options)


def backend_options(config: RuntimeConfig, name: str) -> BackendOptions:
    """BackendOptions for one candidate. A fallback that cannot run the requested precision runs
    fp32 (a CPU fallback of an int8 Edge TPU model must still work); the primary keeps it."""
    from vla_accel.backends.registry import backend_class

    extra = dict(config.backend_extra)
    # delegate_path names the primary backend's delegate library: a fallback (e.g. hexagon behind qnn)
    # must look for its own library, not be handed another vendor's.
    primary = config.backend
    if config.delegate_path and (name == primary or primary == "auto"):
        extra.setdefault("delegate_path", config.delegate_path)
    if name == "triton":
        extra.setdefault("url", config.triton_url)
        extra.setdefault("model", config.triton_model)
        extra.setdefault("timeout_s", config.triton_timeout_s)
        extra.setdefault("ssl", config.triton_ssl)
    precision = config.precision
    supported = getattr(backend_class(name), "precisions", ("fp32",))
    if precision not in supported:
        precision = "fp32" if "fp32" in supported else supported[0]
    return BackendOptions(
        device=config.device,
        precision=precision,
        threads=config.threads,
        max_batch=config.batch_size,
        cache_dir=Path(config.cache_dir) if config.cache_dir else None,
        extra=extra,
    )


def measure_baseline_ms(bundle: Any, batch_size: int, threads: int, against: Any = None,
                        iterations: int = BASELINE_ITERATIONS, side_by_side: dict | None = None,
                        budget_s: float = BASELINE_BUDGET_S) -> float:
    """p50 latency (ms) of the torch CPU backend on this model at this batch size: T_cpu in S = T_cpu / T_hw.

    With ``against`` (the loaded backend in use) the two are timed alternately, call by call, so load
    from other processes falls on both alike and the start-up ratio is logged.
    """
    from vla_accel.backends.registry import create_backend

    base: list[float] = []
    other: list[float] = []
    failure: list[BaseException] = []

    def timed() -> None:
        backend = create_backend(BASELINE_BACKEND, bundle, BackendOptions(threads=threads, max_batch=batch_size))
        with backend:
            inputs = example_inputs(bundle.spec, batch_size, seed=0)
            backend.warmup(batch_size, iterations=5)
            calls = [lambda: backend.infer(inputs)]
            samples = [base]
            if against is not None:
                calls.append(lambda: against.infer(inputs))
                samples.append(other)
            # a slow or loaded machine: the node must still come up in reasonable time
            time_interleaved(calls, calls=iterations, rotate=False, budget_s=budget_s,
                             min_calls=BASELINE_MIN_ITERATIONS, samples=samples)

    def worker() -> None:
        try:
            timed()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
            failure.append(exc)

    # Timed on a fresh thread, as the inference loop's worker runs: torch's OpenMP team of the main
    # thread can behave differently (once on a heavily loaded 2-core machine: 1.3 s per call on the main
    # thread against 67 ms on a worker thread, same model and thread count), so like is compared with like.
    thread = threading.Thread(target=worker, name="vla_baseline")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    t_cpu = percentiles(base)["p50"]
    if side_by_side is not None:
        side_by_side["calls"] = len(base)
    if other:
        t_hw = percentiles(other)["p50"]
        log.info("CPU baseline %.2f ms vs %s %.2f ms at start-up (speedup %.2f, timed alternately)", t_cpu,
                 getattr(against, "active_name", "") or getattr(against, "name", "backend"), t_hw, t_cpu / t_hw)
        if side_by_side is not None:
            side_by_side["startup_speedup"] = t_cpu / t_hw if t_hw > 0 else 0.0
    return t_cpu


def cpu_baseline_ms(mode: str, bundle: Any, batch_size: int, threads: int, against: Any = None,
                    side_by_side: dict | None = None) -> float:
    """``measure``: now; ``cache``: the torch fp32 record of backends.calibration's store (the file
    ``vla-accel doctor --calibrate`` and ``backend: auto`` share), measured and stored once when
    absent; ``none``: 0. The store holds batch-1 latencies: other batch sizes are measured."""
    if mode == "none":
        return 0.0
    if mode == "measure" or batch_size != 1:
        return measure_baseline_ms(bundle, batch_size, threads, against, side_by_side=side_by_side)
    from vla_accel.backends.calibration import CalibrationStore, calibrate

    store = CalibrationStore()
    record = store.get(bundle.content_hash(), BASELINE_BACKEND, "fp32")
    if record is None:
        measured, failures = calibrate(bundle, [BASELINE_BACKEND], BackendOptions(threads=threads), store=store,
                                       budget_s=2.0)
        if not measured:
            raise BackendError(f"torch CPU baseline could not run: {failures}", reason="baseline_failed")
        record = measured[0]
    if side_by_side is not None:
        side_by_side["baseline_measured_at"] = float(record.measured_at)
    return float(record.p50_ms)


def speedup_timing(mode: str, backend: str, cache_measured_at: float | None = None,
                   iterations: int = BASELINE_ITERATIONS) -> dict[str, str]:
    """How the live and the start-up speedup figures were timed, in words (shown on /diagnostics)."""
    if mode == "none":
        return {}
    if cache_measured_at is not None:
        age_s = max(0.0, time.time() - cache_measured_at)
        age = f"{age_s / 3600:.1f} h" if age_s >= 3600 else f"{age_s / 60:.0f} min"
        source = (f"torch fp32 CPU p50 at batch 1 from the calibration cache (vla-accel doctor --calibrate), "
                  f"measured {age} ago")
    else:
        source = (f"torch fp32 CPU p50 of {iterations} calls at batch 1 on the model's example inputs, timed at "
                  f"start-up before any subscription")
    out = {"live": f"{source} / live {backend} inference p50 (the backend call alone, batch 1, camera frames, "
                   f"under the running graph's load)"}
    if mode == "measure":
        out["startup"] = (f"torch fp32 CPU and {backend} timed alternately call by call, {iterations} calls each, "
                          f"batch 1, same example inputs, at start-up before any subscription")
    return out


class InferenceSession:
    """Model + FallbackChain + Engine + InferenceLoop, configured by a RuntimeConfig."""

    def __init__(self, config: RuntimeConfig, *, on_chunks: Callable[[list], None],
                 on_error: Callable[[BaseException], None] | None = None,
                 on_switch: Callable[[str, str, BaseException], None] | None = None):
        if not isinstance(config, RuntimeConfig):
            raise ConfigError(f"InferenceSession takes a RuntimeConfig, got {type(config).__name__}",
                              reason="bad_config")
        self.config = config
        self._on_chunks = on_chunks
        self._on_error = on_error
        self._on_switch = on_switch
        self.bundle = None
        self.spec = None
        self.chain = None
        self.engine = None
        self.loop = None
        self.metrics = InferenceMetrics()
        self.candidates: list[str] = []
        self.state = BackendState(status="loading", precision=config.precision)
        self.load_times_ms: dict[str, float] = {}
        self.speedup_timing: dict[str, str] = {}  # how each speedup figure was timed (for /diagnostics)
        self.parity: list = []  # ParityResult per backend checked at load

    # --- setup ----------------------------------------------------------------------------------
    def load_model(self) -> None:
        """The model alone (cheap: spec + weights), so callers can set up inputs before the backend."""
        from vla_accel.models import load_model

        t0 = time.perf_counter()
        self.bundle = load_model(self.config.model, cache_dir=self.config.cache_dir or None)
        self.spec = self.bundle.spec
        self.metrics.model = self.bundle.name
        self.load_times_ms["model"] = (time.perf_counter() - t0) * 1e3

    def load(self) -> None:
        """Load the backend chain, baseline, engine and loop. Raises BackendError when no candidate
        can run (``state`` then says why) or VlaAccelError for a bad model / parameters."""
        from vla_accel.core.engine import Engine
        from vla_accel.core.scheduling import InferenceLoop
        from vla_accel.backends.selection import FallbackChain

        if self.bundle is None:
            self.load_model()
        config = self.config
        self.candidates = candidate_backends(config, self.bundle)
        self.state = BackendState(status="loading", candidates=tuple(self.candidates), precision=config.precision)
        options = {name: backend_options(config, name) for name in self.candidates}
        t0 = time.perf_counter()
        chain = FallbackChain(self.bundle, self.candidates, options, on_switch=self._switched,
                              recover_interval_s=config.fallback_recover_s, standby=config.fallback_standby)
        try:
            chain.load()
            chain.warmup(config.batch_size, iterations=max(1, config.warmup_iterations))
        except VlaAccelError as exc:
            self.state = replace(self.state, status="failed", error=str(exc))
            raise
        self.chain = chain
        if config.parity_check:
            try:
                self.check_parity()
            except VlaAccelError as exc:  # every candidate failed it (or none is left to fall back to)
                self.state = replace(self.state, status="failed", error=str(exc))
                raise
        self.load_times_ms["backend"] = (time.perf_counter() - t0) * 1e3
        info = chain.device_info()
        self.candidates = list(chain.candidates)
        skipped = "; ".join(f"{name}: {why}" for name, why in chain.failures.items())
        self.state = replace(self.state, status="running", candidates=tuple(chain.candidates),
                             active=chain.active_name, device=info.device, precision=info.precision, error=skipped)
        t0 = time.perf_counter()
        try:
            # The node serves one stream, so its batches hold one observation: the baseline is measured
            # at batch 1 (metrics compares a baseline only with inferences of the same batch size).
            side_by_side: dict = {}
            baseline = cpu_baseline_ms(config.speedup_baseline, self.bundle, 1, config.threads,
                                       against=chain, side_by_side=side_by_side)
            if "startup_speedup" in side_by_side:
                # Both timed alternately in the same seconds: the ratio without the live load that the
                # running speedup (start-up baseline / live latency) includes.
                self.metrics.set_value("startup_speedup", side_by_side["startup_speedup"])
            self.speedup_timing = speedup_timing(config.speedup_baseline, chain.active_name,
                                                 side_by_side.get("baseline_measured_at"),
                                                 side_by_side.get("calls", BASELINE_ITERATIONS))
        except VlaAccelError as exc:  # the speedup figure is optional; inference must still start
            log.warning("could not measure the torch CPU baseline (speedup will read n/a): %s", exc)
            baseline = 0.0
        self.load_times_ms["baseline"] = (time.perf_counter() - t0) * 1e3
        self.metrics.set_baseline_ms(baseline, batch_size=1)
        memory = config.memory
        if config.pipeline and memory == "static":
            memory = "pool"  # overlapping batches cannot share one static buffer set
        self.engine = Engine(self.bundle, chain, max_batch=config.batch_size, memory=memory, metrics=self.metrics,
                             jpeg_reduced_decode=config.jpeg_reduced_decode)
        self.apply_clip(list(config.action_clip_low), list(config.action_clip_high))
        target = config.target_latency_ms or None
        self.loop = InferenceLoop(
            self.engine, batch_size=config.batch_size, max_batch_delay_ms=config.max_batch_delay_ms,
            adaptive_batch=config.adaptive_batch and target is not None, target_latency_ms=target,
            pipeline=config.pipeline, on_chunks=self._on_chunks, on_error=self._on_error, name="vla_node",
        )

    def check_parity(self) -> None:
        """The running backend against the model's golden reference; a failure moves to the next
        fallback (checked in turn). Raises BackendError when no candidate passes."""
        from vla_accel.runtime.parity import ParityError, ParityResult, check_parity

        chain = self.chain
        while True:
            name = chain.active_name
            precision = chain.device_info().precision or self.config.precision
            try:
                result = check_parity(self.bundle, chain.active, name, precision)
            except VlaAccelError as exc:
                result = ParityResult(name, precision, "failed", detail=str(exc))
            self.parity.append(result)
            if result.status != "failed":
                log.info("%s: %s", name, result.text)
                return
            log.error("%s failed the parity check at load: %s %s", name, result.text, result.detail)
            chain.fail_active(ParityError(f"{name} failed the parity check: {result.text} {result.detail}".strip()))

    def apply_clip(self, low: list[float], high: list[float]) -> None:
        """Replace the spec's clip bounds (both empty: back to the spec's). Takes effect on the next batch."""
        if self.engine is None:
            return
        post = self.engine.postprocessor
        action = self.spec.action
        if low and high:
            if len(low) != action.dims or len(high) != action.dims:
                raise VlaAccelError(f"action clip bounds need {action.dims} values each (the model's action dims), "
                                    f"got {len(low)} and {len(high)}", reason="bad_parameter")
            post.clip_low = np.asarray(low, dtype=np.float32)
            post.clip_high = np.asarray(high, dtype=np.float32)
        else:
            post.clip_low = np.asarray(action.clip_low, dtype=np.float32) if action.clip_low else None
            post.clip_high = np.asarray(action.clip_high, dtype=np.float32) if action.clip_high else None

    def _switched(self, old: str, new: str, error: BaseException) -> None:
        self.metrics.record_switch(new)
        info = None
        try:
            info = self.chain.device_info() if self.chain is not None else None
        except BackendError as exc:
            log.warning("device info of %s unavailable after the switch: %s", new, exc)
        if info is not None:
            self.metrics.set_device(info)
        self.state = replace(self.state, active=new, device=info.device if info else "",
                             last_switch=f"{old} -> {new}: {error}", error=str(error))
        log.warning("backend %s failed (%s); switched to %s", old, error, new)
        if self._on_switch is not None:
            self._on_switch(old, new, error)

    # --- running --------------------------------------------------------------------------------
    def start(self) -> None:
        self.loop.start()

    def submit(self, observation) -> None:
        self.loop.submit(observation)

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the loop (joins its threads within ``timeout``) and close the backend."""
        clean = True
        if self.loop is not None:
            clean = self.loop.stop(timeout)
        if self.chain is not None:
            try:
                self.chain.close()
            except BackendError as exc:
                log.warning("closing the backend failed: %s", exc)
        return clean

    @property
    def device(self) -> str:
        return self.metrics.device or self.state.device
