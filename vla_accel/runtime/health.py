"""Diagnostic levels that mean something: drop ratio and stalls over a sliding window (no rclpy).

``InputHealth`` keeps the counters of the last few metrics snapshots (frames received, processed and
dropped per reason) and answers, for the window that ends now:

* ERROR when frames keep arriving but none was processed for ``stall_error_s`` (naming the top drop
  reason, or saying inference does not complete);
* WARN when the model needs a robot state and frames are being dropped for it (``missing_state`` /
  ``stale_state``: naming the topic and the joints), as soon as the first such drop is in the window;
* WARN when the share of frames dropped over the window passes ``drop_warn_ratio`` (naming the top
  reason). ``superseded`` frames are not counted: replacing an unstarted frame by a newer one is the
  latest-frame policy working, not a fault.

``escalate(report, assessment)`` raises a StatusReport's level (never lowers it: ERROR for a failed
backend or STALE for a silent camera stay as they are) and puts the reason into its message and values.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Mapping

from vla_accel.runtime.status import ERROR, OK, WARN, StatusReport

STATE_REASONS = ("missing_state", "stale_state")
NOT_A_FAULT = ("superseded",)


@dataclass(frozen=True)
class HealthConfig:
    drop_warn_ratio: float = 0.5  # 0 = no drop-ratio warning
    stall_error_s: float = 5.0  # 0 = no stall error
    window_s: float = 5.0
    state_topic: str = ""  # set when the model takes a robot state
    state_joints: tuple[str, ...] = ()


@dataclass(frozen=True)
class WindowView:
    seconds: float  # span the counts cover
    received: int
    processed: int
    dropped: Mapping[str, int]
    stalled_s: float  # how long frames have arrived with nothing processed (0 when not stalled)

    @property
    def faulty_drops(self) -> int:
        return sum(n for reason, n in self.dropped.items() if reason not in NOT_A_FAULT)

    @property
    def drop_ratio(self) -> float:
        return self.faulty_drops / self.received if self.received else 0.0

    @property
    def top_reason(self) -> str:
        faults = {r: n for r, n in self.dropped.items() if r not in NOT_A_FAULT and n > 0}
        return max(faults.items(), key=lambda kv: kv[1])[0] if faults else ""


@dataclass(frozen=True)
class Assessment:
    level: int
    message: str
    window: WindowView


class InputHealth:
    """Counts over a sliding window of snapshots; ``update`` once per diagnostics period."""

    def __init__(self, config: HealthConfig):
        self.config = config
        self._history: deque[tuple[int, int, int, dict[str, int]]] = deque()
        self._last_received = 0
        self._last_processed = 0
        self._waiting_since_ns: int | None = None  # first update that saw new frames while none got processed

    def update(self, now_ns: int, received: int, processed: int, dropped: Mapping[str, int]) -> WindowView:
        if processed != self._last_processed:
            self._last_processed = processed
            self._waiting_since_ns = None
        elif received > self._last_received and self._waiting_since_ns is None:
            self._waiting_since_ns = now_ns
        self._last_received = received
        self._history.append((now_ns, received, processed, dict(dropped)))
        window_ns = int(self.config.window_s * 1e9)
        while len(self._history) > 2 and now_ns - self._history[1][0] >= window_ns:
            self._history.popleft()
        t0, r0, p0, d0 = self._history[0]
        # Stalled: frames keep arriving (some in the window) and none was processed since the first of them.
        stalled = 0.0
        if self._waiting_since_ns is not None and received > r0:
            stalled = (now_ns - self._waiting_since_ns) / 1e9
        return WindowView(
            seconds=(now_ns - t0) / 1e9, received=received - r0, processed=processed - p0,
            dropped={r: n - d0.get(r, 0) for r, n in dropped.items() if n - d0.get(r, 0) > 0},
            stalled_s=stalled)

    def assess(self, view: WindowView) -> Assessment:
        cfg = self.config
        return assess(view, cfg)


def assess(view: WindowView, cfg: HealthConfig) -> Assessment:
    """The level the window deserves (OK when nothing is wrong), with the reason in words."""
    top = view.top_reason
    state_drops = sum(view.dropped.get(r, 0) for r in STATE_REASONS)
    state_hint = ""
    if cfg.state_topic and state_drops:
        joints = ", ".join(cfg.state_joints) if cfg.state_joints else "its joints"
        state_hint = (f"the model needs the robot state: publish sensor_msgs/JointState on {cfg.state_topic} "
                      f"with {joints}")
    if cfg.stall_error_s > 0 and view.stalled_s >= cfg.stall_error_s:
        why = f"mostly {top}" if top else "inference is not completing"
        message = f"frames arrive but none was processed for {view.stalled_s:.0f} s ({why})"
        if state_hint and top in STATE_REASONS:
            message += f": {state_hint}"
        return Assessment(ERROR, message, view)
    if state_hint:
        return Assessment(WARN, f"{state_drops} frame(s) dropped ({top if top in STATE_REASONS else 'missing_state'}) "
                                f"in {view.seconds:.0f} s: {state_hint}", view)
    if cfg.drop_warn_ratio > 0 and view.received and view.drop_ratio > cfg.drop_warn_ratio:
        return Assessment(WARN, f"{view.drop_ratio:.0%} of frames dropped over {view.seconds:.0f} s "
                                f"({view.faulty_drops} of {view.received}; mostly {top})", view)
    return Assessment(OK, "", view)


def escalate(report: StatusReport, assessment: Assessment) -> StatusReport:
    """``report`` with its level raised to the assessment's (OK < WARN < ERROR; STALE left alone) and
    the window's figures added to its values."""
    view = assessment.window
    values = report.values + (
        ("drop ratio (window)", f"{view.drop_ratio:.3f}" if view.received else "n/a (no frames in the window)"),
        ("window (s)", f"{view.seconds:.1f}"),
        ("top drop reason (window)", view.top_reason or "none"),
    )
    if report.level in (OK, WARN) and assessment.level > report.level:
        return replace(report, level=assessment.level, message=assessment.message, values=values)
    return replace(report, values=values)
