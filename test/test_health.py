"""Diagnostic levels from the drop / stall window (vla_accel.runtime.health): pure, no ROS."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vla_accel.core.metrics import InferenceMetrics
from vla_accel.core.spec import ModelSpec
from vla_accel.core.types import RawImage
from vla_accel.ros import params
from vla_accel.runtime.status import ERROR, OK, STALE, WARN, CameraInput, StatusReport
from vla_accel.runtime.health import HealthConfig, InputHealth, assess, escalate
from vla_accel.runtime.inputs import ObservationAssembler

SPECS = Path(__file__).resolve().parents[1] / "vla_accel" / "models" / "specs"
S = 1_000_000_000


def _report(level=OK):
    return StatusReport("vla_accel: inference", level, "fine", "torch@cpu", (("frames received", "0"),))


def test_healthy_stream_stays_ok_and_superseded_frames_are_not_faults():
    health = InputHealth(HealthConfig(drop_warn_ratio=0.5, stall_error_s=5.0))
    for t in range(6):
        view = health.update(t * S, received=30 * t, processed=10 * t, dropped={"superseded": 20 * t})
    assert view.drop_ratio == 0.0 and view.top_reason == ""
    result = assess(view, health.config)
    assert result.level == OK
    assert escalate(_report(), result).level == OK


def test_drop_ratio_over_threshold_warns_naming_the_top_reason():
    health = InputHealth(HealthConfig(drop_warn_ratio=0.3, stall_error_s=0.0))
    health.update(0, 0, 0, {})
    view = health.update(2 * S, received=60, processed=20, dropped={"truncated": 30, "unknown_encoding": 10})
    assert round(view.drop_ratio, 3) == round(40 / 60, 3)
    result = health.assess(view)
    assert result.level == WARN and "truncated" in result.message and "67%" in result.message
    report = escalate(_report(), result)
    assert report.level == WARN and report.value("top drop reason (window)") == "truncated"
    # Below the threshold: OK.
    quiet = InputHealth(HealthConfig(drop_warn_ratio=0.9, stall_error_s=0.0))
    quiet.update(0, 0, 0, {})
    assert quiet.assess(quiet.update(2 * S, 60, 20, {"truncated": 40})).level == OK


def test_frames_arriving_with_nothing_processed_is_an_error_after_the_stall_period():
    health = InputHealth(HealthConfig(drop_warn_ratio=0.0, stall_error_s=3.0))
    health.update(0, 0, 0, {})  # started; no frames for a while does not count as a stall
    health.update(10 * S, 0, 0, {})
    health.update(11 * S, 30, 0, {"bad_state": 30})  # frames arrive, none processed: waiting since 11 s
    assert health.assess(health.update(13 * S, 90, 0, {"bad_state": 90})).level == OK  # 2 s < 3 s
    view = health.update(15 * S, 150, 0, {"bad_state": 150})
    result = health.assess(view)
    assert result.level == ERROR and "none was processed for 4 s" in result.message and "bad_state" in result.message
    # Progress again: no longer stalled.
    assert health.update(16 * S, 180, 10, {"bad_state": 150}).stalled_s == 0.0


def test_missing_state_warns_at_once_naming_topic_and_joints():
    cfg = HealthConfig(state_topic="/joint_states", state_joints=("joint1", "gripper"))
    health = InputHealth(cfg)
    health.update(0, 0, 0, {})
    result = health.assess(health.update(S // 2, 5, 0, {"missing_state": 5}))
    assert result.level == WARN
    assert "/joint_states" in result.message and "joint1, gripper" in result.message
    assert "missing_state" in result.message


def test_escalate_never_lowers_and_leaves_stale_alone():
    cfg = HealthConfig(drop_warn_ratio=0.1, stall_error_s=0.0)
    health = InputHealth(cfg)
    health.update(0, 0, 0, {})
    result = health.assess(health.update(S, 10, 0, {"truncated": 10}))
    assert escalate(_report(STALE), result).level == STALE
    assert escalate(_report(ERROR), result).level == ERROR


def test_thresholds_are_parameters_with_ranges():
    assert params.BY_NAME["drop_warn_ratio"].low == 0.0 and params.BY_NAME["drop_warn_ratio"].high == 1.0
    assert params.validate("drop_warn_ratio", 1.5) is not None
    assert params.validate("stall_error_s", -1.0) is not None
    assert params.validate("max_image_bytes", 10) is not None


def test_oversized_frames_are_dropped_before_decoding():
    spec = ModelSpec.from_yaml(SPECS / "tiny-vision.yaml")
    metrics = InferenceMetrics()
    cams = [CameraInput("primary", "/camera/image_raw", "raw")]
    drops = []
    asm = ObservationAssembler(spec, cams, metrics, initial_instruction="pick", on_drop=drops.append,
                               max_image_bytes=1_000_000)
    big = np.zeros((1000, 1000, 3), dtype=np.uint8)  # 3 MB
    obs = asm.on_frame("primary", RawImage(big.data, "rgb8", 1000, 1000, 3000), 1)
    assert obs is None and drops[-1].reason == "image_too_large" and "3000000 bytes" in drops[-1].message
    assert metrics.snapshot().dropped == {"image_too_large": 1}
    small = np.zeros((480, 640, 3), dtype=np.uint8)
    assert asm.on_frame("primary", RawImage(small.data, "rgb8", 480, 640, 1920), 2) is not None
