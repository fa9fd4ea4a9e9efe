"""Backend selection (``backend: auto``) and run-time fallback between backends.

``resolve_backends(name, requirement, fallback, ...)`` turns a launch value into an ordered list of
backend names: an explicit name first, then the fallback list; ``auto`` orders every backend whose
probe succeeds here by measured speed (core/calibration.py), measuring briefly what has no record.

``FallbackChain`` runs that list as one backend: it loads the first candidate that loads, and when
the running one fails mid-stream it closes it, loads the next and re-runs the same batch there, so
no frame is lost and the switch is reported (``on_switch``, ``.events``, ``device_info()``).
Like ONNX Runtime's provider list, but never silent: what runs is always reported. Optionally the
chain keeps the next candidate loaded (``standby``) and, after a fallback, tries the preferred ones
again in the background every ``recover_interval_s`` and switches back to the first that loads.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from vla_accel.errors import BackendError, InputError, SpecError, UnknownBackendError, VlaAccelError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.backends.base import Backend, BackendOptions, DeviceInfo
    from vla_accel.backends.calibration import CalibrationRecord, CalibrationStore
    from vla_accel.models.bundle import ModelBundle

log = logging.getLogger(__name__)

AUTO = "auto"
DEFAULT_MEASURE_BUDGET_S = 2.0


def _canonical(name: str) -> str:
    from vla_accel.backends.registry import canonical_name

    return canonical_name(name)


def _dedupe(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        if name not in out:
            out.append(name)
    return out


def available_backends(exclude: Sequence[str] = ()) -> dict[str, str]:
    """name -> probe detail for every registered backend whose probe succeeds here."""
    from vla_accel.backends.registry import backend_class, list_backends

    found: dict[str, str] = {}
    for name in list_backends():
        if name in exclude:
            continue
        try:
            availability = backend_class(name).probe()
        except ImportError as exc:  # the backend module itself is missing or broken
            log.debug("backend %s not importable: %s", name, exc)
            continue
        if availability.ok:
            found[name] = availability.detail
    return found


def resolve_backends(
    name: str,
    requirement: str = "latency",
    fallback: Sequence[str] | None = None,
    calibration: "CalibrationStore | Mapping[str, CalibrationRecord] | None" = None,
    *,
    model: "ModelBundle | None" = None,
    options: "BackendOptions | None" = None,
    candidates: Sequence[str] | None = None,
    measure: bool = True,
    measure_budget_s: float = DEFAULT_MEASURE_BUDGET_S,
) -> list[str]:
    """Ordered backend names to try.

    name: a backend name (or alias), or "auto".
    requirement: "latency" (order by p50 at batch 1) or "throughput" (samples/s at batch N).
    fallback: names appended after the choice (duplicates dropped), e.g. ["onnxruntime", "torch"].
    calibration: a CalibrationStore (looked up with ``model``'s content hash and this machine), or
        a mapping backend -> CalibrationRecord already selected by the caller.
    model / options: needed by ``auto`` to look up and, when ``measure``, measure the backends that
        have no record (each for about ``measure_budget_s``; measured records are stored).
    candidates: restrict ``auto`` to these backends (default: every backend whose probe succeeds).
    """
    from vla_accel.backends.calibration import REQUIREMENTS, CalibrationStore, calibrate

    if requirement not in REQUIREMENTS:
        raise SpecError(f"requirement must be one of {', '.join(REQUIREMENTS)}; got {requirement!r}")
    tail = [_canonical(n) for n in (fallback or [])]
    if name.strip().lower() != AUTO:
        return _dedupe([_canonical(name), *tail])

    present = available_backends()
    # Every backend whose probe succeeds; one that then cannot run the requested precision (an int8-only
    # Edge TPU asked for fp32) fails its measurement and is left out, with the reason logged.
    pool = [_canonical(c) for c in candidates] if candidates else list(present)
    pool = [n for n in pool if n in present]
    if not pool:
        raise BackendError("backend auto: no backend can run here (run `vla-accel doctor` to see what is missing)",
                           reason="no_backend")
    precision = options.precision if options is not None else "fp32"
    if isinstance(calibration, Mapping):
        records = {_canonical(k): v for k, v in calibration.items()}
        store = None
    else:
        store = calibration if calibration is not None else CalibrationStore()
        if model is None:
            raise BackendError(
                "backend auto needs the model to look up (or measure) backend speed; pass model=",
                reason="no_model",
            )
        records = store.for_model(model.content_hash(), precision)
    unmeasured = [n for n in pool if n not in records]
    if unmeasured and measure and model is not None:
        log.info("backend auto: no calibration for %s on this machine; measuring each for ~%.1f s "
                 "(store it ahead of time with `vla-accel doctor --calibrate`)", ", ".join(unmeasured),
                 measure_budget_s)
        measured, failures = calibrate(model, unmeasured, options, store=store or CalibrationStore(),
                                       budget_s=measure_budget_s)
        records.update({r.backend: r for r in measured})
        for failed, why in failures.items():
            log.info("backend auto: %s cannot run here: %s", failed, why)
        pool = [n for n in pool if n not in failures]
    elif unmeasured:
        log.info("backend auto: no calibration for %s; they are tried last", ", ".join(unmeasured))
    measured_pool = sorted((n for n in pool if n in records), key=lambda n: records[n].score(requirement))
    ordered = measured_pool + [n for n in pool if n not in records]
    if not ordered:
        raise BackendError("backend auto: every candidate failed to run here (see `vla-accel doctor`)",
                           reason="no_backend")
    log.info("backend auto (%s): %s", requirement, " > ".join(
        f"{n} ({records[n].p50_ms:.2f} ms p50, {records[n].throughput_fps:.1f}/s)" if n in records else n
        for n in ordered))
    return _dedupe([*ordered, *tail])


class SwitchEvent(NamedTuple):
    time: float  # time.time() of the switch
    from_backend: str  # "" at load time
    to_backend: str
    reason: str  # the error that caused it


class FallbackChain:
    """A Backend-like object over an ordered list of candidate backends.

    load(): constructs and loads candidates in order until one loads; if none does, raises a
    BackendError listing every candidate's failure. infer(): runs on the active backend; on a
    BackendError or any runtime exception (but not on bad input, which no other backend would
    accept either) it closes the active one, loads the next and re-runs the same batch there.
    """

    def __init__(
        self,
        model: "ModelBundle",
        candidates: Sequence[str],
        options: "BackendOptions | Mapping[str, BackendOptions] | None" = None,
        on_switch: "Callable[[str, str, BaseException], None] | None" = None,
        recover_interval_s: float = 0.0,
        standby: bool = False,
    ):
        if not candidates:
            raise BackendError("FallbackChain needs at least one candidate backend", reason="no_backend")
        self.model = model
        self.spec = model.spec
        self.candidates = _dedupe([_canonical(c) for c in candidates])
        self._options = options
        self.on_switch = on_switch
        self.events: list[SwitchEvent] = []
        self.failures: dict[str, str] = {}
        self._active: "Backend | None" = None
        self._index = -1
        self._lock = threading.RLock()
        # Switching back: every recover_interval_s (0 = never) a background thread tries to load the
        # candidates before the running one (e.g. a remote server that came back); the next infer()
        # then switches to the first that loaded.
        self.recover_interval_s = float(recover_interval_s)
        self._recover_at = 0.0
        self._recovery: threading.Thread | None = None
        self._recovered: "tuple[int, Backend] | None" = None
        # Standby: the candidate after the running one is loaded in the background and kept ready, so a
        # switch (e.g. a remote server that stops answering) does not wait for the fallback to load.
        self.standby = bool(standby)
        self._standby: "tuple[int, Backend] | None" = None
        self._standby_index = -1
        self._standby_thread: threading.Thread | None = None

    # --- what runs --------------------------------------------------------------------------------
    @property
    def active_name(self) -> str:
        return self.candidates[self._index] if self._active is not None else ""

    @property
    def active(self) -> "Backend | None":
        return self._active

    @property
    def name(self) -> str:
        return self.active_name

    @property
    def kind(self) -> str:
        return self._active.kind if self._active is not None else ""

    @property
    def options(self) -> "BackendOptions":
        return self._active.options if self._active is not None else self._options_for(self.candidates[0])

    @property
    def switches(self) -> int:
        """Switches after the first successful load (mid-stream fallbacks)."""
        return sum(1 for e in self.events if e.from_backend)

    @property
    def loaded(self) -> bool:
        return self._active is not None

    def _options_for(self, name: str) -> "BackendOptions":
        from vla_accel.backends.base import BackendOptions

        opts = self._options
        if isinstance(opts, Mapping):
            chosen = opts.get(name) or opts.get("*") or BackendOptions()
        else:
            chosen = opts or BackendOptions()
        return dataclasses.replace(chosen)

    # --- lifecycle --------------------------------------------------------------------------------
    def _try_from(self, start: int, previous: str, cause: BaseException | None) -> None:
        """Load the first candidate at or after ``start``; raise listing all failures if none loads."""
        from vla_accel.backends.registry import create_backend

        for index in range(start, len(self.candidates)):
            name = self.candidates[index]
            try:
                backend = self._take_standby(index) or create_backend(name, self.model, self._options_for(name))
                backend.load()
            except Exception as exc:  # noqa: BLE001 - any failure of one candidate means: try the next
                self.failures[name] = str(exc) if isinstance(exc, VlaAccelError) else f"{type(exc).__name__}: {exc}"
                log.warning("backend %s could not be loaded: %s", name, exc)
                continue
            self._active, self._index = backend, index
            reason = str(cause) if cause is not None else "; ".join(
                f"{n}: {self.failures[n]}" for n in self.candidates[:index] if n in self.failures)
            self.events.append(SwitchEvent(time.time(), previous, name, reason))
            if previous or index > 0:
                log.warning("backend fallback: now running on %s (was %s)%s", name, previous or "not loaded",
                            f": {reason}" if reason else "")
            if previous and self.on_switch is not None:
                self.on_switch(previous, name, cause)
            self._start_standby()
            return
        self._active, self._index = None, len(self.candidates)
        tried = "; ".join(f"{n}: {self.failures.get(n, 'not tried')}" for n in self.candidates)
        raise BackendError(f"no backend could run (tried {', '.join(self.candidates)}): {tried}",
                           reason="all_backends_failed")

    def load(self) -> "FallbackChain":
        with self._lock:
            if self._active is None:
                self._try_from(0, "", None)
            return self

    def fail_active(self, error: BaseException) -> None:
        """Give up the running backend (e.g. it failed a parity check) and load the next candidate;
        raises BackendError when none is left."""
        with self._lock:
            failed = self.active_name
            self.failures[failed] = str(error)
            self._close_active()
            self._try_from(self._index + 1, failed, error)

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            if self._active is None:
                raise BackendError("FallbackChain used before load()", reason="not_loaded")
            if self.recover_interval_s > 0 and self._index > 0:
                self._maybe_recover()
            while True:
                backend = self._active
                try:
                    outputs = backend.infer(inputs)
                    _check_finite(self.active_name, outputs)
                    return outputs
                except InputError:
                    raise  # bad input would fail on every backend: not a reason to switch
                except Exception as exc:  # noqa: BLE001 - a runtime can fail in any way; the next one takes over
                    failed = self.active_name
                    self.failures[failed] = str(exc) if isinstance(exc, VlaAccelError) else f"{type(exc).__name__}: {exc}"
                    log.warning("backend %s failed mid-stream (%s); switching to the next candidate", failed, exc)
                    self._close_active()
                    self._try_from(self._index + 1, failed, exc)
                    # loop: the same batch runs again on the new backend

    def _maybe_recover(self) -> None:
        """Called under the lock: swap in a preferred candidate the recovery thread loaded, or start
        that thread when its interval has passed."""
        ready, self._recovered = self._recovered, None
        if ready is not None:
            index, backend = ready
            if index >= self._index:
                backend.close()
                return
            previous, name = self.active_name, self.candidates[index]
            cause = BackendError(f"backend {name} loads again; switched back from {previous}", reason="recovered")
            self._close_active()
            self._active, self._index = backend, index
            self.events.append(SwitchEvent(time.time(), previous, name, str(cause)))
            log.warning("backend fallback: %s", cause)
            if self.on_switch is not None:
                self.on_switch(previous, name, cause)
            self._start_standby()
            return
        now = time.monotonic()
        if now >= self._recover_at and (self._recovery is None or not self._recovery.is_alive()):
            self._recover_at = now + self.recover_interval_s
            self._recovery = threading.Thread(target=self._load_preferred, args=(self._index,),
                                              name="fallback-recovery", daemon=True)
            self._recovery.start()

    def _take_standby(self, index: int) -> "Backend | None":
        """The standby backend if it is candidate ``index`` (waiting for it when it is still loading:
        never slower than loading it anew); a standby for another candidate is closed."""
        thread = self._standby_thread
        if thread is not None and thread.is_alive() and self._standby_index == index:
            thread.join()
        ready, self._standby = self._standby, None
        if ready is None:
            return None
        if ready[0] == index:
            return ready[1]
        ready[1].close()
        return None

    def _start_standby(self) -> None:
        if not self.standby:
            return
        index = self._index + 1
        thread = self._standby_thread
        if index >= len(self.candidates) or (self._standby is not None and self._standby[0] == index) or (
                thread is not None and thread.is_alive() and self._standby_index == index):
            return
        old, self._standby = self._standby, None
        if old is not None:
            old[1].close()
        self._standby_index = index

        def load_standby() -> None:
            from vla_accel.backends.registry import create_backend

            name = self.candidates[index]
            try:
                backend = create_backend(name, self.model, self._options_for(name))
                backend.load()
                backend.warmup(1, 1)
            except Exception as exc:  # noqa: BLE001 - no standby; a switch then loads it (and reports why)
                log.info("standby backend %s could not be loaded: %s", name, exc)
                return
            self._standby = (index, backend)

        self._standby_thread = threading.Thread(target=load_standby, name="fallback-standby", daemon=True)
        self._standby_thread.start()

    def _load_preferred(self, limit: int) -> None:
        from vla_accel.backends.registry import create_backend

        for index in range(limit):
            name = self.candidates[index]
            try:
                backend = create_backend(name, self.model, self._options_for(name))
                backend.load()
            except Exception as exc:  # noqa: BLE001 - still failing: stay on the fallback
                log.debug("backend %s still cannot load: %s", name, exc)
                continue
            self._recovered = (index, backend)
            return

    def warmup(self, batch_size: int = 1, iterations: int = 3) -> None:
        from vla_accel.core.spec import example_inputs

        inputs = example_inputs(self.spec, batch_size, seed=0)
        for _ in range(iterations):
            self.infer(inputs)

    def device_info(self) -> "DeviceInfo":
        with self._lock:
            if self._active is None:
                raise BackendError("FallbackChain not loaded", reason="not_loaded")
            info = self._active.device_info()
            detail = dict(info.detail)
            detail.update(
                fallback_chain=list(self.candidates),
                fallback_switches=self.switches,
                fallback_failures=dict(self.failures),
            )
            return dataclasses.replace(info, detail=detail)

    def _close_active(self) -> None:
        backend, self._active = self._active, None
        if backend is not None:
            try:
                backend.close()
            except (VlaAccelError, RuntimeError, OSError) as exc:  # closing a broken backend may fail too
                log.warning("closing failed backend %s: %s", backend.name, exc)

    def close(self, timeout: float = 5.0) -> bool:
        """Close the active backend. Waits at most ``timeout`` s for an inference in flight (a stuck
        runtime call must not hang the node's shutdown); returns False, logging it, when it could not."""
        if not self._lock.acquire(timeout=timeout):
            log.error("backend %s is still inside an inference call after %.1f s; not closing it",
                      self.active_name, timeout)
            return False
        try:
            self._close_active()
            for attr in ("_recovered", "_standby"):
                ready = getattr(self, attr)
                setattr(self, attr, None)
                if ready is not None:
                    ready[1].close()
            return True
        finally:
            self._lock.release()

    def __enter__(self) -> "FallbackChain":
        return self.load()

    def __exit__(self, *exc) -> None:
        self.close()


def _check_finite(backend: str, outputs: Mapping[str, np.ndarray]) -> None:
    """A runtime that starts returning NaN/inf is failing: raise so the chain switches, instead of the
    frames being dropped one by one after it (actions must never be NaN)."""
    for name, array in outputs.items():
        if not np.isfinite(array).all():
            raise BackendError(f"backend '{backend}' returned non-finite values in '{name}'",
                               reason="non_finite_output")


def build_backend(
    model: "ModelBundle",
    name: str,
    options: "BackendOptions | Mapping[str, BackendOptions] | None" = None,
    *,
    fallback: Sequence[str] | None = None,
    requirement: str = "latency",
    on_switch: "Callable[[str, str, BaseException], None] | None" = None,
) -> FallbackChain:
    """resolve_backends + FallbackChain in one call (what the node and the CLI use)."""
    single = options if not isinstance(options, Mapping) else None
    names = resolve_backends(name, requirement, fallback, model=model, options=single)
    return FallbackChain(model, names, options, on_switch=on_switch)


__all__ = [
    "AUTO",
    "FallbackChain",
    "SwitchEvent",
    "UnknownBackendError",
    "available_backends",
    "build_backend",
    "resolve_backends",
]
