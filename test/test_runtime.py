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


def test_config_defaults_agree_with_the_node_parameters():
    import dataclasses

    from vla_accel.ros import params
    from vla_accel.runtime.config import RuntimeConfig, parse_backend_extra

    declared = params.node_parameters()
    default = RuntimeConfig()
    for f in dataclasses.fields(RuntimeConfig):
        assert f.name in declared, f"RuntimeConfig.{f.name} is not a node parameter"
        value = getattr(default, f.name)
        expected = declared[f.name]
        if f.name == "backend_extra":
            expected = parse_backend_extra(expected)
        assert (list(value) if isinstance(value, tuple) else value) == expected, f.name
    assert params.runtime_config(declared) == default


def test_config_from_every_shipped_params_file():
    from pathlib import Path

    from vla_accel.ros import params
    from vla_accel.runtime.config import RuntimeConfig

    files = sorted((Path(__file__).resolve().parents[1] / "config").glob("*.yaml"))
    assert files
    for path in files:
        from_yaml = RuntimeConfig.from_yaml(path)
        assert from_yaml == params.runtime_config(params.node_parameters(params.load_params_file(str(path)))), path


def test_config_rejects_bad_values_with_reasons():
    from vla_accel.errors import ConfigError
    from vla_accel.runtime.config import RuntimeConfig

    with pytest.raises(ConfigError, match="precision must be one of") as err:
        RuntimeConfig(precision="fp8")
    assert err.value.reason == "bad_config"
    with pytest.raises(ConfigError, match="given together"):
        RuntimeConfig(action_clip_low=(0.0,))
    with pytest.raises(ConfigError, match="batch_size"):
        RuntimeConfig.from_values({"batch_size": 0})
    assert RuntimeConfig.from_values({"backend_extra": "{dla_core: 1}", "fallback": ["torch"]}).backend_extra == {
        "dla_core": 1}


def test_camera_inputs_follow_the_spec_and_image_transport_naming():
    from vla_accel.errors import ConfigError
    from vla_accel.models import load_model
    from vla_accel.runtime.wiring import camera_inputs

    spec = load_model("tiny-2cam").spec
    cams = camera_inputs(spec, ["/a", "/b"], ["compressed", "raw"])
    assert [(c.name, c.topic, c.transport) for c in cams] == [
        (spec.cameras[0].name, "/a/compressed", "compressed"), (spec.cameras[1].name, "/b", "raw")]
    with pytest.raises(ConfigError, match="one topic per camera"):
        camera_inputs(spec, ["/a"], ["raw"])


def test_timing_helpers_count_and_interleave_calls():
    import time

    from vla_accel.core.timing import time_calls, time_interleaved

    order: list[str] = []
    samples = time_calls(lambda: order.append("a"), min_calls=3, max_calls=3, warmup=2)
    assert len(samples) == 3 and len(order) == 5 and all(s >= 0 for s in samples)
    order.clear()
    a, b = time_interleaved([lambda: order.append("a"), lambda: order.append("b")], calls=3)
    assert len(a) == len(b) == 3 and order == ["a", "b", "b", "a", "a", "b"]  # the first one rotates
    order.clear()
    time_interleaved([lambda: order.append("a"), lambda: order.append("b")], calls=2, block=2, rotate=False)
    assert order == ["a"] * 3 + ["b"] * 3  # one untimed re-warm call, then the block
    # a time budget ends a long count early, once each callable has its minimum
    slow, = time_interleaved([lambda: time.sleep(0.01)], calls=1000, budget_s=0.05, min_calls=2)
    assert 2 <= len(slow) < 1000


def test_backend_spec_and_baseline_name_have_one_home():
    from vla_accel.backends.registry import BASELINE_BACKEND, canonical_name, split_backend_spec

    assert split_backend_spec(" cuda:fp16 ") == ("cuda", "fp16")
    assert split_backend_spec("onnxruntime") == ("onnxruntime", "")
    assert canonical_name(BASELINE_BACKEND) == "torch"


def test_compressed_frames_are_checked_at_input_and_decoded_in_prepare():
    """The assembler (the node's executor thread) only checks a JPEG; the prepare stage decodes it."""
    import io

    from PIL import Image

    from vla_accel.core.metrics import InferenceMetrics
    from vla_accel.core.preprocess import Preprocessor
    from vla_accel.models import load_model
    from vla_accel.runtime.wiring import build_assembler, camera_inputs

    spec = load_model("tiny-vision").spec
    rgb = np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=90)
    jpeg = out.getvalue()
    metrics = InferenceMetrics()
    cams = camera_inputs(spec, ["/cam"], ["compressed"])
    asm = build_assembler(spec, cams, metrics, instruction="pick up the block")
    primary = spec.cameras[0].name
    obs = asm.on_frame(primary, RawImage(data=jpeg, encoding="jpeg"), 1)
    assert isinstance(obs.images[primary], RawImage)  # not decoded on the receiving thread
    # no end marker: rejected at the input, counted for the camera
    assert asm.on_frame(primary, RawImage(data=jpeg[: len(jpeg) // 2], encoding="jpeg"), 2) is None
    assert cams[0].snapshot().dropped == {"corrupt_compressed": 1}
    # the prepare stage decodes it into the model input
    pre = Preprocessor(spec, 1)
    batch = pre.prepare([obs])
    try:
        assert len(batch.observations) == 1 and not batch.rejected
        image_input = batch.inputs[spec.cameras[0].input]
        assert image_input.shape[0] == 1 and np.isfinite(image_input).all()
    finally:
        batch.release()


def test_check_compressed_reasons():
    from vla_accel.core.image import check_compressed
    from vla_accel.errors import ImageError

    def reason(data: bytes, encoding: str) -> str:
        with pytest.raises(ImageError) as err:
            check_compressed(RawImage(data=data, encoding=encoding))
        return err.value.reason

    assert reason(b"", "jpeg") == "empty_image"
    assert reason(b"\xff\xd8\xff\xe0 definitely not a jpeg", "jpeg") == "corrupt_compressed"
    assert reason(b"not a png at all", "png") == "corrupt_compressed"
    assert reason(b"\x00\x01", "theora") == "unknown_encoding"
