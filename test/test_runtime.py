"""The ROS-free runtime (vla_accel.runtime) and the node's use of it."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from vla_accel.core.types import RawImage


def _need_ros():
    for module in ("rclpy", "sensor_msgs", "diagnostic_msgs"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"missing: {module}; install with: ./run.sh setup (pip install -r requirements/ros.txt)")
    try:
        import vla_accel.msg  # noqa: F401
    except ImportError:
        pytest.skip("missing: the built vla_accel messages; run ./run.sh setup, then source .ros_build/env.sh")


def _rgb(height: int = 48, width: int = 64) -> RawImage:
    data = np.random.default_rng(0).integers(0, 256, height * width * 3, dtype=np.uint8).tobytes()
    return RawImage(data=data, encoding="rgb8", height=height, width=width, step=width * 3)


def _truncated() -> RawImage:
    return RawImage(data=b"\x00" * 100, encoding="rgb8", height=48, width=64, step=64 * 3)


def test_a_drop_between_two_watchdog_ticks_turns_the_camera_status_warn():
    """The node's watchdog reads every camera ten times a second; reading must not consume the
    drops the next /diagnostics report has to show."""
    _need_ros()
    pytest.importorskip("torch", reason="missing: torch; install with: pip install torch==2.13.0 (CPU build)")
    import rclpy

    from vla_accel.ros.vla_node import VlaNode
    from vla_accel.runtime import status

    rclpy.init()
    node = None
    try:
        node = VlaNode({"model": "tiny", "instruction": "pick up the block", "speedup_baseline": "none",
                        "warmup_iterations": 0}, node_name="vla_watchdog_test")
        assert node.configure()  # torch on the CPU; not activated: frames go to the assembler only
        primary = node.session.spec.cameras[0].name
        node.assembler.set_joint_state([], np.zeros(node.session.spec.state.dims))
        assert node.assembler.on_frame(primary, _rgb(), 1) is not None
        node._on_watchdog_tick()
        assert node.assembler.on_frame(primary, _truncated(), 2) is None  # dropped: truncated
        node._on_watchdog_tick()
        camera = [r for r in node.diagnostic_reports() if r.name.endswith(f"input {primary}")][0]
        assert camera.level == status.WARN, camera
        assert "dropped since the last report" in camera.message
        # publishing the report marks those drops as reported: the next report is OK again
        node._publish_diagnostics()
        camera = [r for r in node.diagnostic_reports() if r.name.endswith(f"input {primary}")][0]
        assert camera.level == status.OK, camera
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.shutdown()


def test_camera_snapshot_resets_nothing_and_clear_keeps_later_drops():
    from vla_accel.runtime.status import CameraInput

    cam = CameraInput("primary", "/camera/image_raw", "raw")
    cam.record_frame(1_000)
    cam.record_drop("truncated")
    first = cam.snapshot(2_000)
    assert first.new_drops == 1 and cam.snapshot(3_000).new_drops == 1  # reading twice: still there
    cam.record_drop("corrupt_image")  # after the snapshot that gets published
    cam.clear(first)
    later = cam.snapshot(4_000)
    assert later.new_drops == 1 and later.dropped == {"truncated": 1, "corrupt_image": 1}
    cam.clear(later)
    assert cam.snapshot(5_000).new_drops == 0
    cam.clear(first)  # an older snapshot never un-reports drops
    assert cam.snapshot(6_000).new_drops == 0
