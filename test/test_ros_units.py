"""The ROS layer's pure modules, without a ROS graph: parameters, config files, launch arguments,
conversions, observation assembly and diagnostics. Message-class tests skip when the ROS message
packages (rclpy wheels) or the built vla_accel.msg are not importable."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml

from vla_accel.core.metrics import InferenceMetrics
from vla_accel.core.spec import ModelSpec
from vla_accel.core.types import ActionChunk, RawImage
from vla_accel.ros import conversions, params
from vla_accel.runtime import conversions as runtime_conversions
from vla_accel.runtime import status
from vla_accel.runtime.inputs import ObservationAssembler, joint_state_vector

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "config").glob("*.yaml"))
SPECS = REPO / "vla_accel" / "models" / "specs"


def _need(module: str, what: str):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"missing: {what}; install with: ./run.sh setup (pip install -r requirements/ros.txt)")


def _need_vla_msgs():
    try:
        import vla_accel.msg  # noqa: F401
    except ImportError:
        pytest.skip("missing: the built vla_accel messages; run ./run.sh setup, then source .ros_build/env.sh")


@pytest.fixture(scope="module")
def tiny_spec() -> ModelSpec:
    return ModelSpec.from_yaml(SPECS / "tiny.yaml")


# --- parameters -----------------------------------------------------------------------------------
def test_defaults_are_valid_and_cpu_backend():
    values = params.node_parameters()
    assert values["backend"] == "torch"  # the embedded default runs on any CPU
    assert set(values) == set(params.BY_NAME)
    for pdef in params.PARAMETERS:
        assert params.validate(pdef.name, pdef.default) is None, pdef.name
        assert pdef.description


@pytest.mark.parametrize("name,value,needle", [
    ("backend", "warp-drive", "unknown backend"),
    ("fallback", ["onnxruntime", "nope"], "unknown backend"),
    ("precision", "fp8", "one of"),
    ("threads", -1, "must be in"),
    ("batch_size", 0, "must be in"),
    ("target_latency_ms", float("nan"), "finite"),
    ("input_qos", "best_effort", "one of"),
    ("camera_transports", ["raw", "theora"], "camera_transports"),
    ("camera_topics", [], "at least one"),
    ("dry_run", "yes", "must be bool"),
    ("backend_extra", "[1, 2]", "mapping"),
    ("no_such_parameter", 1, "unknown parameter"),
])
def test_invalid_values_are_rejected_with_a_reason(name, value, needle):
    reason = params.validate(name, value)
    assert reason and needle in reason
    with pytest.raises(params.ParameterError, match=needle):
        params.node_parameters({name: value})


def test_clip_bounds_are_checked_together():
    with pytest.raises(params.ParameterError, match="together"):
        params.node_parameters({"action_clip_low": [0.0]})
    with pytest.raises(params.ParameterError, match="high >= low"):
        params.node_parameters({"action_clip_low": [1.0], "action_clip_high": [0.0]})
    ok = params.node_parameters({"action_clip_low": [-1, 0], "action_clip_high": [1, 2]})
    assert ok["action_clip_low"] == [-1.0, 0.0] and all(isinstance(v, float) for v in ok["action_clip_high"])


def test_int_for_float_parameter_is_converted():
    assert params.node_parameters({"target_latency_ms": 50})["target_latency_ms"] == 50.0


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_key_is_a_declared_parameter(path):
    values = params.load_params_file(str(path))
    unknown = sorted(set(values) - set(params.BY_NAME))
    assert not unknown, f"{path.name}: undeclared keys {unknown}"
    resolved = params.node_parameters(values)  # validates types, choices, ranges and backend names
    # A robot must keep running when its accelerator is gone: every target ends in a CPU backend.
    chain = [resolved["backend"], *resolved["fallback"]]
    assert chain[-1] in ("torch", "cpu", "onnxruntime", "openvino", "tflite"), f"{path.name}: {chain}"


def test_all_targets_have_a_config():
    names = {p.stem for p in CONFIGS}
    assert {"cpu", "jetson_tensorrt", "coral_tpu", "mali_gpu", "npu", "dsp", "fpga"} <= names


def test_every_launch_argument_maps_to_a_declared_parameter():
    source = (REPO / "launch" / "vla_accel.launch.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    arguments = next(
        ast.literal_eval(node.value) for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "ARGUMENTS" for t in node.targets)
    )
    assert set(arguments) == set(params.LAUNCH_ARGUMENTS)
    for arg, param in params.LAUNCH_ARGUMENTS.items():
        assert param is None or param in params.BY_NAME, arg
    # launch / launch_ros are imported lazily, so the file imports without them.
    assert "import launch" not in source.split("def generate_launch_description")[0]


def test_params_file_loader_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("other_node:\n  ros__parameters: {backend: torch}\n")
    with pytest.raises(params.ParameterError, match="ros__parameters"):
        params.load_params_file(str(bad))


# --- conversions ----------------------------------------------------------------------------------
class _Stamp:
    def __init__(self, sec=0, nanosec=0):
        self.sec, self.nanosec = sec, nanosec


def test_stamp_round_trip():
    stamp = runtime_conversions.ns_to_stamp(1_700_000_000_123_456_789, _Stamp())
    assert (stamp.sec, stamp.nanosec) == (1_700_000_000, 123_456_789)
    assert runtime_conversions.stamp_to_ns(stamp) == 1_700_000_000_123_456_789


def test_image_conversion_is_a_zero_copy_view():
    import array

    from vla_accel.core.image import decode_image

    class Img:
        height, width, step, encoding, is_bigendian = 2, 3, 9, "rgb8", 0
        data = array.array("B", range(18))

    msg = Img()
    raw = runtime_conversions.image_msg_to_raw(msg)
    rgb = decode_image(raw)
    assert rgb.shape == (2, 3, 3) and rgb[1, 2, 2] == 17
    msg.data[17] = 99  # the view sees the message buffer itself
    assert rgb[1, 2, 2] == 99


def test_compressed_format_mapping():
    class C:
        format = "rgb8; jpeg compressed bgr8"
        data = b"\xff\xd8"

    assert runtime_conversions.compressed_msg_to_raw(C()).encoding == "jpeg"
    C.format = "theora"
    assert runtime_conversions.compressed_msg_to_raw(C()).encoding == "theora"  # core rejects it later


def test_first_action_type_choice():
    assert runtime_conversions.resolve_first_action_type("auto", "eef_delta") == "twist"
    assert runtime_conversions.resolve_first_action_type("auto", "eef_velocity") == "twist"
    assert runtime_conversions.resolve_first_action_type("auto", "joint_position") == "float64_array"
    assert runtime_conversions.resolve_first_action_type("none", "eef_delta") == "none"
    with pytest.raises(ValueError):
        runtime_conversions.resolve_first_action_type("pose", "eef_delta")


def test_twist_from_eef_delta_is_a_velocity():
    action = np.array([0.01, -0.02, 0.03, 0.1, 0.2, 0.3, 1.0], dtype=np.float32)
    names = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
    linear, angular = runtime_conversions.twist_components(action, names, "eef_delta", 0.05)
    np.testing.assert_allclose(linear, [0.2, -0.4, 0.6], rtol=1e-6)
    np.testing.assert_allclose(angular, [2.0, 4.0, 6.0], rtol=1e-6)
    linear, _ = runtime_conversions.twist_components(action, names, "eef_velocity", 0.05)
    np.testing.assert_allclose(linear, [0.01, -0.02, 0.03], rtol=1e-6)


@pytest.mark.parametrize("policy,space,last,expected", [
    ("hold", "eef_delta", [0.1, 0.2, 0.9], [0.0, 0.0, 0.9]),  # motion stops, gripper keeps its command
    ("hold", "eef_delta", None, [0.0, 0.0, 0.0]),
    ("hold", "joint_position", [0.1, 0.2, 0.9], [0.1, 0.2, 0.9]),  # positions: stay where commanded
    ("hold", "joint_position", None, None),  # nothing safe to repeat
    ("zero", "joint_position", [0.1, 0.2, 0.9], [0.0, 0.0, 0.0]),
    ("none", "eef_delta", [0.1, 0.2, 0.9], None),
])
def test_stop_actions(policy, space, last, expected):
    names = ("x", "y", "gripper")
    out = runtime_conversions.stop_action(policy, space, names, None if last is None else np.array(last, np.float32), 3)
    if expected is None:
        assert out is None
    else:
        np.testing.assert_allclose(out, expected)


def _chunk(spec: ModelSpec, stamp_ns=1_700_000_000_000_000_123) -> ActionChunk:
    a = spec.action
    values = np.arange(a.steps * a.dims, dtype=np.float32).reshape(a.steps, a.dims) / 100
    return ActionChunk(stamp_ns=stamp_ns, dt=a.dt, names=a.names, values=values, space=a.space, model=spec.name,
                       backend="torch", frame_id="camera", timings_ms={"infer": 3.0, "total": 5.0})


def test_chunk_message_round_trip(tiny_spec):
    _need_vla_msgs()
    from vla_accel.msg import ActionChunk as ActionChunkMsg

    chunk = _chunk(tiny_spec)
    msg = conversions.fill_chunk_msg(ActionChunkMsg(), chunk, device="CPU", inference_latency_ms=3.0,
                                     total_latency_ms=5.0, batch_size=1)
    assert runtime_conversions.stamp_to_ns(msg.header.stamp) == chunk.stamp_ns
    assert (msg.steps, msg.dims, list(msg.names), msg.header.frame_id) == (10, 7, list(chunk.names), "camera")
    np.testing.assert_array_equal(runtime_conversions.chunk_values_from_msg(msg), chunk.values)


def test_standard_action_messages(tiny_spec):
    _need("geometry_msgs", "geometry_msgs (ROS 2 message wheels)")
    from geometry_msgs.msg import TwistStamped
    from std_msgs.msg import Float64MultiArray, MultiArrayDimension

    row = _chunk(tiny_spec).values[1]
    twist = conversions.fill_twist(TwistStamped(), row, tiny_spec.action.names, "eef_delta", 0.05, 5, "base")
    assert twist.twist.linear.x == pytest.approx(row[0] / 0.05, rel=1e-6) and twist.header.stamp.nanosec == 5
    arr = conversions.fill_float64_array(Float64MultiArray(), row, tiny_spec.action.names, MultiArrayDimension)
    np.testing.assert_allclose(list(arr.data), row, rtol=1e-7)
    assert arr.layout.dim[0].size == 7 and arr.layout.dim[0].label.startswith("x,y,z")


# --- observation assembly -------------------------------------------------------------------------
def _rgb_frame(h=48, w=64, value=7):
    data = np.full(h * w * 3, value, dtype=np.uint8)
    return RawImage(data=memoryview(data), encoding="rgb8", height=h, width=w, step=w * 3)


def test_assembler_counts_missing_inputs_then_builds_observations(tiny_spec):
    metrics = InferenceMetrics()
    cams = [status.CameraInput("primary", "/camera/image_raw", "raw")]
    drops = []
    asm = ObservationAssembler(tiny_spec, cams, metrics, "/vla/instruction", on_drop=drops.append)
    assert asm.on_frame("primary", _rgb_frame(), 1) is None
    assert metrics.dropped() == {"missing_instruction": 1}
    assert not asm.set_instruction("   ") and asm.instruction_drops == {"empty_instruction": 1}
    assert not asm.set_instruction("x" * 5000) and asm.instruction_drops["instruction_too_long"] == 1
    assert asm.set_instruction("pick up the red block")
    assert asm.on_frame("primary", _rgb_frame(), 2) is None  # tiny needs the robot state
    assert metrics.dropped()["missing_state"] == 1
    assert not asm.set_joint_state(["joint1"], [0.0])  # named joints missing
    assert asm.set_joint_state([f"joint{i}" for i in range(1, 8)] + ["gripper"], list(range(8)))
    obs = asm.on_frame("primary", _rgb_frame(), 3, "cam")
    assert obs is not None and obs.stamp_ns == 3 and obs.frame_id == "cam"
    assert obs.images["primary"].shape == (48, 64, 3) and obs.state.tolist() == list(range(8))
    bad = RawImage(data=b"\x00" * 10, encoding="rgb8", height=48, width=64, step=64 * 3)
    assert asm.on_frame("primary", bad, 4) is None
    assert cams[0].dropped == {"truncated": 1} and metrics.dropped()["truncated"] == 1
    assert metrics.frames_received == 3  # the 3 dropped here; the good one is counted by the loop
    assert {d.reason for d in drops} >= {"missing_instruction", "empty_instruction", "truncated"}


def test_assembler_two_cameras_waits_for_the_secondary():
    spec = ModelSpec.from_yaml(SPECS / "tiny-2cam.yaml")
    metrics = InferenceMetrics()
    cams = [status.CameraInput(c.name, f"/{c.name}", "raw") for c in spec.cameras]
    asm = ObservationAssembler(spec, cams, metrics, initial_instruction="stack the cups")
    if spec.state is not None:
        asm.set_joint_state([], list(range(spec.state.dims)))
    first, second = spec.cameras[0].name, spec.cameras[1].name
    assert asm.on_frame(first, _rgb_frame(), 1) is None and metrics.dropped() == {"missing_camera": 1}
    assert asm.on_frame(second, _rgb_frame(value=9), 2) is None
    obs = asm.on_frame(first, _rgb_frame(), 3)
    assert obs is not None and set(obs.images) == {first, second} and obs.images[second][0, 0, 0] == 9


def test_assembler_drops_observations_built_on_stale_secondary_inputs():
    spec = ModelSpec.from_yaml(SPECS / "tiny-2cam.yaml")
    metrics = InferenceMetrics()
    cams = [status.CameraInput(c.name, f"/{c.name}", "raw") for c in spec.cameras]
    asm = ObservationAssembler(spec, cams, metrics, initial_instruction="stack the cups", max_input_age_s=1.0)
    first, second = spec.cameras[0].name, spec.cameras[1].name
    s = 1_000_000_000
    asm.set_joint_state([], list(range(spec.state.dims)), now_ns=10 * s)
    asm.on_frame(second, _rgb_frame(value=9), 1, received_ns=10 * s)
    assert asm.on_frame(first, _rgb_frame(), 2, received_ns=10 * s + s // 2) is not None  # both fresh
    # The wrist camera goes silent: 1.5 s later its last frame is too old to attach.
    assert asm.on_frame(first, _rgb_frame(), 3, received_ns=11 * s + s // 2) is None
    assert metrics.dropped() == {"stale_camera": 1}
    asm.on_frame(second, _rgb_frame(value=9), 4, received_ns=11 * s + s // 2)
    # Now the joint state is the stale one.
    assert asm.on_frame(first, _rgb_frame(), 5, received_ns=11 * s + s // 2 + 1) is None
    assert metrics.dropped()["stale_state"] == 1
    asm.set_joint_state([], list(range(spec.state.dims)), now_ns=11 * s + s // 2 + 2)
    assert asm.on_frame(first, _rgb_frame(), 6, received_ns=11 * s + s // 2 + 3) is not None


def test_joint_state_vector_by_position_and_errors():
    np.testing.assert_allclose(joint_state_vector(2, (), [], [1.0, 2.0, 3.0]), [1.0, 2.0])
    with pytest.raises(Exception, match="needs 4"):
        joint_state_vector(4, (), [], [1.0])
    with pytest.raises(Exception, match="non-finite"):
        joint_state_vector(1, (), [], [float("inf")])


# --- diagnostics ----------------------------------------------------------------------------------
def _metrics_with_traffic(infer_ms=4.0, total_ms=10.0, n=20) -> InferenceMetrics:
    m = InferenceMetrics(model="tiny")
    m.set_backend("onnxruntime", "CPU", "onnxruntime@CPU", 2)
    m.set_baseline_ms(8.0)
    for i in range(n):
        m.record_received(1)
        m.record_batch(1, 1.0, infer_ms, 0.5)
        m.record_stage("total", total_ms)
        m.record_processed(1)
    m.record_dropped("truncated", 2)
    m.record_dropped("superseded", 3)
    return m


def _cam_view(age=0.05, rate=30.0, new_drops=0):
    return status.CameraView("primary", "/camera/image_raw", "raw", 30, rate, age, {"truncated": 2}, new_drops)


def test_inference_status_ok_with_every_key():
    snap = _metrics_with_traffic().snapshot()
    state = status.BackendState(status="running", candidates=("onnxruntime", "torch"), active="onnxruntime",
                                     device="CPU", precision="fp32")
    reports = status.build_reports(snap, state, [_cam_view()], None, status.DiagnosticsConfig())
    inference = reports[0]
    assert inference.name == "vla_accel: inference" and inference.level == status.OK
    assert inference.hardware_id == "onnxruntime@CPU"
    keys = {k for k, _ in inference.values}
    for key in ("latency p50 (ms)", "latency p90 (ms)", "latency p99 (ms)", "latency max (ms)", "throughput (Hz)",
                "speedup over CPU", "input rate (Hz)", "frames received", "frames processed", "frames dropped",
                "dropped: truncated", "dropped: superseded", "backend", "device", "model", "backend switches"):
        assert key in keys, key
    assert inference.value("speedup over CPU") == "2.00"  # 8 ms baseline / 4 ms
    assert inference.value("speedup at start-up (side by side)") == "n/a"  # not measured
    assert inference.value("latency p50 (ms)") == "4.00"
    assert [r.name for r in reports] == ["vla_accel: inference", "vla_accel: backend", "vla_accel: input primary"]


def test_startup_side_by_side_speedup_is_reported_next_to_the_live_one():
    metrics = _metrics_with_traffic(infer_ms=16.0)  # the live run is slower than the start-up baseline
    metrics.set_value("startup_speedup", 1.03)
    state = status.BackendState(status="running", candidates=("torch",), active="torch", device="cpu",
                                     precision="fp32")
    inference = status.build_reports(metrics.snapshot(), state, [_cam_view()], None,
                                          status.DiagnosticsConfig())[0]
    assert inference.value("speedup over CPU") == "0.50"
    assert inference.value("speedup at start-up (side by side)") == "1.03"


def test_levels_warn_error_stale():
    config = status.DiagnosticsConfig(target_latency_ms=5.0, stale_image_timeout_s=1.0)
    running = status.BackendState(status="running", candidates=("onnxruntime", "torch"), active="onnxruntime")
    snap = _metrics_with_traffic(total_ms=10.0).snapshot()
    assert status.build_reports(snap, running, [_cam_view()], None, config)[0].level == status.WARN
    stale = status.build_reports(snap, running, [_cam_view(age=3.0)], None, config)
    assert stale[0].level == status.STALE and stale[2].level == status.STALE
    failed = status.BackendState(status="failed", candidates=("tensorrt",), error="missing tensorrt")
    reports = status.build_reports(InferenceMetrics().snapshot(), failed, [_cam_view()], None, config)
    assert reports[0].level == status.ERROR and reports[1].level == status.ERROR
    assert "missing tensorrt" in reports[1].message
    fallback = status.BackendState(status="running", candidates=("tensorrt", "torch"), active="torch")
    assert status.backend_status(snap, fallback, config, "torch@CPU").level == status.WARN
    assert status.camera_status(_cam_view(new_drops=2), config, "x").level == status.WARN
    ins = status.InstructionView("/vla/instruction", "", None, 0)
    assert status.instruction_status(ins, config, "x").level == status.WARN


def test_state_key_changes_on_level_or_backend():
    config = status.DiagnosticsConfig()
    running = status.BackendState(status="running", active="onnxruntime", device="CPU")
    m = _metrics_with_traffic()
    a = status.state_key(status.build_reports(m.snapshot(), running, [_cam_view()], None, config))
    m.set_backend("torch", "CPU")
    b = status.state_key(status.build_reports(m.snapshot(), running, [_cam_view()], None, config))
    assert a != b


def test_diagnostic_array_and_stats_messages():
    _need("diagnostic_msgs", "diagnostic_msgs (ROS 2 message wheels)")
    snap = _metrics_with_traffic().snapshot()
    running = status.BackendState(status="running", active="onnxruntime", device="CPU")
    reports = status.build_reports(snap, running, [_cam_view()], None, status.DiagnosticsConfig())
    arr = conversions.to_diagnostic_array(reports, 1_700_000_000_500_000_000)
    assert arr.header.stamp.sec == 1_700_000_000 and arr.header.stamp.nanosec == 500_000_000
    assert arr.status[0].level == b"\x00" and arr.status[0].hardware_id == "onnxruntime@CPU"
    assert any(kv.key == "dropped: truncated" and kv.value == "2" for kv in arr.status[0].values)
    _need_vla_msgs()
    from vla_accel.msg import InferenceStats

    stats = conversions.fill_stats_msg(InferenceStats(), snap, 5)
    assert stats.speedup == pytest.approx(2.0) and stats.frames_dropped == 5 and stats.frames_superseded == 3


def test_package_xml_declares_the_interfaces_group():
    text = (REPO / "package.xml").read_text(encoding="utf-8")
    assert '<package format="3">' in text and "<member_of_group>rosidl_interface_packages</member_of_group>" in text
    for dep in ("rclpy", "sensor_msgs", "diagnostic_msgs", "geometry_msgs", "rosidl_default_runtime"):
        assert f"<exec_depend>{dep}</exec_depend>" in text
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    # the Python sources must be installed AFTER rosidl_generate_interfaces (Kilted: ros2/rosidl_python#141)
    assert cmake.index("rosidl_generate_interfaces(") < cmake.index("install(DIRECTORY \"${VLA_ACCEL_PY_SRC}/\"")
    for msg_file in sorted((REPO / "msg").glob("*.msg")):
        assert f'"msg/{msg_file.name}"' in cmake


def test_config_yaml_files_parse_as_ros_parameter_files():
    for path in CONFIGS:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert list(data) == ["/**"] and "ros__parameters" in data["/**"], path.name


def test_cv_bridge_path_for_encodings_the_core_does_not_decode():
    bridge = conversions.make_cv_bridge()
    if bridge is None:
        pytest.skip("missing: cv_bridge (optional); install with: sudo apt install ros-$ROS_DISTRO-cv-bridge")
    _need("sensor_msgs", "sensor_msgs (ROS 2 message wheels)")
    from sensor_msgs.msg import Image

    msg = bridge.cv2_to_imgmsg(np.full((4, 6), 1000, dtype=np.uint16), encoding="mono16")
    frame = conversions.image_msg_to_frame(msg, bridge)
    assert isinstance(frame, np.ndarray) and frame.shape == (4, 6, 3) and frame.dtype == np.uint8
    raw = Image(height=2, width=2, step=6, encoding="rgb8")
    raw.data = bytes(12)
    assert isinstance(conversions.image_msg_to_frame(raw, bridge), RawImage)  # the numpy view stays the default


def test_stage_changes_live_parameters():
    current = params.node_parameters()
    staged, reason = params.stage_changes(current, [("target_latency_ms", 40.0), ("dry_run", True)], running=True)
    assert reason == "" and staged["target_latency_ms"] == 40.0 and staged["dry_run"] is True
    assert current["dry_run"] is False  # the input is not modified
    assert params.stage_changes(current, [("model", "base")], running=True) == (
        None, "'model' is read-only while running (restart the node to change it)")
    assert params.stage_changes(current, [("model", "base")], running=False)[0]["model"] == "base"
    assert "one of" in params.stage_changes(current, [("on_stale", "explode")], running=True)[1]
    assert "together" in params.stage_changes(current, [("action_clip_low", [0.0])], running=True)[1]


# --- the session (model + backend chain + engine + loop), no ROS ------------------------------------
def test_session_runs_the_engine_and_applies_clip_overrides(tiny_spec):
    pytest.importorskip("torch", reason="missing: torch; install with: pip install torch==2.13.0 (CPU build)")
    import threading

    from vla_accel.runtime.session import InferenceSession

    got, done = [], threading.Event()

    def on_chunks(chunks):
        got.extend(chunks)
        done.set()

    values = params.node_parameters({"speedup_baseline": "measure", "warmup_iterations": 1,
                                     "action_clip_low": [-0.001] * 7, "action_clip_high": [0.001] * 7})
    session = InferenceSession(params.runtime_config(values), on_chunks=on_chunks)
    session.load_model()
    cams = [status.CameraInput("primary", "/camera/image_raw", "raw")]
    asm = ObservationAssembler(session.spec, cams, session.metrics, initial_instruction="pick up the block")
    asm.set_joint_state([], np.zeros(8))
    session.load()
    assert session.state.status == "running" and session.state.active == "torch"
    assert session.metrics.baseline_ms > 0  # measured torch CPU baseline
    session.start()
    try:
        obs = asm.on_frame("primary", _rgb_frame(), 42, "cam")
        session.submit(obs)
        assert done.wait(30), "no chunk from the session"
    finally:
        assert session.stop(timeout=2.0)
    chunk = got[0]
    assert chunk.stamp_ns == 42 and chunk.frame_id == "cam" and chunk.backend == "torch"
    assert chunk.values.shape == (10, 7) and np.all(np.abs(chunk.values) <= 0.001 + 1e-7)
    session.apply_clip([], [])  # back to the spec's bounds
    np.testing.assert_allclose(session.engine.postprocessor.clip_high, tiny_spec.action.clip_high)
    with pytest.raises(Exception, match="7 values"):
        session.apply_clip([0.0], [1.0])


def test_session_reports_failure_when_no_backend_loads():
    from vla_accel.errors import BackendError
    from vla_accel.runtime.session import InferenceSession

    values = params.node_parameters({"backend": "tensorrt", "speedup_baseline": "none"})
    session = InferenceSession(params.runtime_config(values), on_chunks=lambda chunks: None)
    with pytest.raises(BackendError):
        session.load()
    assert session.state.status == "failed" and "tensorrt" in session.state.error
