"""Chunk execution in the ROS layer: JointTrajectory, URDF limits, diagnostics and /vla/stats fields.

Units (no graph): messages filled from plans, configure-time errors, the execution status. End to end
(marker ``ros``, real processes like test_ros_node.py): an independent subscriber checks the
JointTrajectory stream (names, monotonic times, stamps of frames really sent, no point in the past when
received), URDF limits clip and count, a malformed URDF fails configure with a clear ERROR while the
node stays up, and the managed (lifecycle) node only publishes while active.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vla_accel.core.execution import plan_trajectory
from vla_accel.core.metrics import InferenceMetrics
from vla_accel.core.spec import ActionSpec
from vla_accel.core.types import ActionChunk
from vla_accel.errors import ExecutionError, RobotDescriptionError
from vla_accel.ros import params
from vla_accel.runtime.status import OK, WARN
from vla_accel.runtime.execution_output import ExecutionOutput, fill_joint_trajectory, fill_stats

JOINTS = [f"joint{i}" for i in range(1, 7)] + ["gripper"]
TIGHT_URDF = "<robot name='arm'>" + "".join(
    f"<joint name='{j}' type='revolute'><limit lower='-0.001' upper='0.001' velocity='0.01' effort='1'/></joint>"
    for j in JOINTS[:6]) + "</robot>"


def _joint_spec():
    return ActionSpec(output="actions", steps=10, dims=7, names=tuple(JOINTS), space="joint_position", dt=0.05,
                      low=(-1.0,) * 7, high=(1.0,) * 7)


def _values(**overrides):
    return params.node_parameters(overrides)


def test_fill_joint_trajectory_message():
    msgs = pytest.importorskip("trajectory_msgs.msg", reason="needs trajectory_msgs: ./run.sh setup (ROS wheels)")
    chunk = ActionChunk(stamp_ns=5_000_000_000, dt=0.05, names=tuple(JOINTS),
                        values=np.arange(70, dtype=np.float32).reshape(10, 7) / 100, space="joint_position")
    plan = plan_trajectory(chunk, JOINTS, now_ns=5_120_000_000)
    msg = fill_joint_trajectory(msgs.JointTrajectory(), plan, msgs.JointTrajectoryPoint)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (5, 0)
    assert list(msg.joint_names) == JOINTS and len(msg.points) == 7
    t = [p.time_from_start.sec + p.time_from_start.nanosec / 1e9 for p in msg.points]
    assert t == pytest.approx([0.15 + 0.05 * i for i in range(7)])
    assert list(msg.points[0].positions) == pytest.approx(chunk.values[3].tolist())
    assert len(msg.points[0].velocities) == 0


def test_execution_output_limits_and_status():
    values = _values(joint_trajectory_topic="/jtc/joint_trajectory", robot_description=TIGHT_URDF,
                     async_execution=True, jump_warn_threshold=0.01)
    out = ExecutionOutput.from_values(values, _joint_spec())
    chunk = ActionChunk(stamp_ns=0, dt=0.05, names=tuple(JOINTS), values=np.full((10, 7), 0.5, np.float32),
                        space="joint_position")
    assert out.want_frame(0) and not out.want_frame(1)  # one inference in flight
    executed = out.on_chunk(chunk, 0)
    plan = out.trajectory(executed, 0)
    assert np.all(np.abs(plan.positions[:, :6]) <= 0.001 + 1e-12)
    assert plan.positions[0, 6] == pytest.approx(0.5)  # the gripper is not in the URDF: unlimited
    metrics = InferenceMetrics()
    out.report(metrics)
    extra = metrics.snapshot().extra
    assert extra["limits_position_clipped"] > 0 and extra["trajectories_published"] == 1
    out.sample(0)
    later = ActionChunk(stamp_ns=200_000_000, dt=0.05, names=tuple(JOINTS), values=np.zeros((10, 7), np.float32),
                        space="joint_position")
    out.on_chunk(later, 250_000_000)
    out.sample(250_000_000)
    extra = metrics.snapshot().extra
    status = out.status(extra, "vla_accel", "torch@cpu")
    assert status.level == WARN and "jump_warn_threshold" in status.message
    assert float(status.value("chunk_jump_max")) == pytest.approx(0.5)
    stats = fill_stats(type("Stats", (), {})(), extra)
    assert stats.chunk_switches == 1 and stats.limits_position_clipped > 0


def test_execution_output_configure_errors():
    with pytest.raises(RobotDescriptionError, match="not valid XML"):
        ExecutionOutput.from_values(_values(robot_description="<robot><joint"), _joint_spec())
    with pytest.raises(ExecutionError, match="TwistStamped"):
        eef = ActionSpec(output="a", steps=4, dims=2, names=("x", "y"), space="eef_delta", dt=0.1,
                         low=(-1, -1), high=(1, 1))
        ExecutionOutput.from_values(_values(joint_trajectory_topic="/t"), eef)
    with pytest.raises(RobotDescriptionError, match="no commanded joint"):
        ExecutionOutput.from_values(_values(joint_trajectory_topic="/t", robot_description=TIGHT_URDF,
                                            trajectory_joint_names=["a", "b", "c", "d", "e", "f", "g"]), _joint_spec())
    plain = ExecutionOutput.from_values(_values(), _joint_spec())
    assert plain.executor is None and plain.want_frame(0)
    assert plain.status({}, "vla_accel", "x").level == OK


def test_execution_parameters_validate():
    with pytest.raises(params.ParameterError):
        params.node_parameters({"execution_mode": "smooth"})
    with pytest.raises(params.ParameterError):
        params.node_parameters({"execution_threshold": 1.5})
    assert params.node_parameters({"execution_mode": "rtc"})["execution_mode"] == "rtc"


# --- end to end: real processes --------------------------------------------------------------------------
def _joint_model(tmp_path: Path) -> Path:
    """The tiny reference network with a joint-position action head (same weights seed)."""
    import yaml

    from vla_accel.models import load_model

    data = load_model("tiny").spec.to_dict()
    # dt 0.2 s: a 2 s chunk, so chunks still have live steps when inference is slow on a loaded machine
    data["action"].update(names=list(JOINTS), space="joint_position", dt=0.2)
    data["name"] = "tiny-joints"
    path = tmp_path / "tiny_joints.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _params_file(tmp_path: Path, node_name: str, **values) -> Path:
    import yaml

    path = tmp_path / f"{node_name}_params.yaml"
    values = {"speedup_baseline": "none", "warmup_iterations": 1, "threads": 1, **values}
    path.write_text(yaml.safe_dump({node_name: {"ros__parameters": values}}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ros():
    pytest.importorskip("rclpy", reason="needs rclpy: ./run.sh setup (ROS 2 wheels)")
    pytest.importorskip("trajectory_msgs.msg", reason="needs trajectory_msgs: ./run.sh setup")
    try:
        from vla_accel.msg import InferenceStats

        InferenceStats().chunk_jump_max  # noqa: B018 - the rebuilt message has the execution fields
    except (ImportError, AttributeError):
        pytest.skip("needs the vla_accel messages built from this msg/: bash scripts/build_ros.sh .venv")
    import test_ros_node as e2e

    listener = e2e.Listener()
    from trajectory_msgs.msg import JointTrajectory
    from rclpy.qos import QoSProfile

    listener.trajectories = []
    listener.node.create_subscription(JointTrajectory, "/jtc/joint_trajectory",
                                      lambda m: listener._add(listener.trajectories, m), QoSProfile(depth=100))
    yield e2e, listener
    listener.close()


def _ros_time_ns() -> int:
    return time.time_ns()  # ROS time without sim time = the system clock, as the node stamps with


@pytest.mark.ros
def test_joint_trajectory_stream_seen_by_an_independent_subscriber(ros, tmp_path):
    e2e, listener = ros
    model = _joint_model(tmp_path)
    pfile = _params_file(tmp_path, "vla_node", model=str(model), joint_trajectory_topic="/jtc/joint_trajectory",
                         async_execution=True, execution_mode="rtc", robot_description=TIGHT_URDF,
                         trajectory_lead_s=0.05, first_action_type="float64_array", action_topic="/vla/joint_command")
    node = e2e._start_node(["--params-file", str(pfile)])
    camera = None
    stamps_file = tmp_path / "stamps.txt"
    try:
        e2e._node_ready(listener, node)
        camera = e2e._start_camera(120.0, stamps_file)
        e2e._wait_or_report(listener, lambda: len(listener.trajectories) >= 6, 90, "6 joint trajectories", node, camera)
        listener.wait_for(lambda: any(m.limits_position_clipped > 0 for _, m in listener.stats), 20,
                          "/vla/stats counting clipped positions")
        e2e._stop_camera(camera)
        sent = {int(x) for x in stamps_file.read_text().split()}
        with listener.lock:
            received = list(listener.trajectories)
        for recv_mono, msg in received:
            assert list(msg.joint_names) == JOINTS
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            assert stamp in sent, "header.stamp must be the source frame's stamp"
            times = [p.time_from_start.sec * 1_000_000_000 + p.time_from_start.nanosec for p in msg.points]
            assert times and all(b > a for a, b in zip(times, times[1:])), "points must be monotonic in time"
            # Received at monotonic recv_mono: convert to the system clock the stamps use.
            recv_wall = recv_mono * 1e9 + (time.time_ns() - time.monotonic_ns())
            assert stamp + times[0] >= recv_wall - 1e6, "a point lay in the past when it was received"
            for p in msg.points:
                assert all(abs(v) <= 0.001 + 1e-9 for v in list(p.positions)[:6])
        status = listener.latest_status("vla_accel: execution")
        assert status is not None and int(float(dict((kv.key, kv.value) for kv in status.values)
                                                ["limits_position_clipped"])) > 0
    finally:
        e2e._kill_leftovers(camera)
        if node.poll() is None:
            e2e._sigint_and_wait(node)


@pytest.mark.ros
def test_malformed_urdf_fails_configure_with_a_clear_error(ros, tmp_path):
    e2e, listener = ros
    pfile = _params_file(tmp_path, "vla_node", model=str(_joint_model(tmp_path)), robot_description="<robot><joint",
                         joint_trajectory_topic="/jtc/joint_trajectory")
    node = e2e._start_node(["--params-file", str(pfile)])
    try:
        deadline = time.monotonic() + e2e.NODE_START_TIMEOUT_S
        status = None
        while time.monotonic() < deadline and node.poll() is None:
            status = listener.latest_status("vla_accel: backend")
            if status is not None and status.level == bytes([2]) and "robot_description" in status.message:
                break
            time.sleep(0.1)
        assert node.poll() is None, "the node must stay up after a configure error"
        assert status is not None and "not valid XML" in status.message, status
    finally:
        if node.poll() is None:
            _, out = e2e._sigint_and_wait(node)
            assert "Traceback" not in out


def _change_state(listener, transition_id: int) -> bool:
    from lifecycle_msgs.srv import ChangeState

    client = listener.node.create_client(ChangeState, "/vla_node/change_state")
    assert client.wait_for_service(timeout_sec=30.0), "the managed node's change_state service did not appear"
    request = ChangeState.Request()
    request.transition.id = transition_id
    future = client.call_async(request)
    deadline = time.monotonic() + 120.0  # configure loads the model and measures the CPU baseline
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    listener.node.destroy_client(client)
    assert future.done(), f"lifecycle transition {transition_id} timed out"
    return bool(future.result().success)


@pytest.mark.ros
def test_managed_node_publishes_only_while_active(ros, tmp_path):
    from lifecycle_msgs.msg import Transition

    e2e, listener = ros
    pfile = _params_file(tmp_path, "vla_node", model=str(_joint_model(tmp_path)), backend="torch",
                         joint_trajectory_topic="/jtc/joint_trajectory", async_execution=True,
                         speedup_baseline="none", stats_period_s=0.5)
    cmd = [sys.executable, "-m", "vla_accel.ros.managed_node", "--ros-args", "--params-file", str(pfile)]
    node = subprocess.Popen(cmd, env=e2e._env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    camera = None
    try:
        camera = e2e._start_camera(120.0, tmp_path / "stamps.txt")
        time.sleep(2.0)
        with listener.lock:
            listener.trajectories.clear()
        assert _change_state(listener, Transition.TRANSITION_CONFIGURE)
        time.sleep(1.0)
        with listener.lock:
            assert not listener.trajectories, "an inactive node must not publish trajectories"
        assert _change_state(listener, Transition.TRANSITION_ACTIVATE)
        listener.wait_for(lambda: len(listener.trajectories) >= 3, 60, "trajectories while active")
        assert _change_state(listener, Transition.TRANSITION_DEACTIVATE)
        time.sleep(0.5)  # a chunk in flight may still land
        with listener.lock:
            count = len(listener.trajectories)
        time.sleep(1.5)
        with listener.lock:
            assert len(listener.trajectories) == count, "a deactivated node must hold"
    finally:
        e2e._kill_leftovers(camera)
        if node.poll() is None:
            _, out = e2e._sigint_and_wait(node)
            assert "Traceback" not in out, out[-3000:]


def test_rtc_plan_is_handed_to_the_flow_runner_before_each_inference():
    from vla_accel.core.postprocess import Postprocessor
    from vla_accel.models import load_model

    spec = load_model("tiny-flow").spec
    if getattr(spec, "program", None) is None or spec.program.kind != "flow_matching":
        pytest.skip("needs the tiny-flow flow-matching reference program")

    class Runner:  # the attribute ProgramRunner reads in its loop
        guide = None

    runner = Runner()
    out = ExecutionOutput.from_values(_values(async_execution=True, execution_mode="rtc"), spec.action)
    assert out.attach_program(spec.program, Postprocessor(spec), lambda: runner)
    assert out.want_frame(0, stamp_ns=0) and runner.guide is None  # nothing executing yet: a free sample
    first = ActionChunk(stamp_ns=0, dt=spec.action.dt, names=spec.action.names, space=spec.action.space,
                        values=np.zeros((spec.action.steps, spec.action.dims), np.float32))
    out.on_chunk(first, 100_000_000)
    later = int(0.6 * spec.action.steps * spec.action.dt * 1e9)
    assert out.want_frame(later, stamp_ns=later)
    assert runner.guide is not None and runner.guide.frozen == 2  # the 100 ms delay estimate / 50 ms
    assert out.executor.guided and out.counters()["execution_rtc_guided_inferences"] == 1
    plain = ExecutionOutput.from_values(_values(async_execution=True, execution_mode="blend"), spec.action)
    assert not plain.attach_program(spec.program, Postprocessor(spec), lambda: runner)


def test_robot_description_from_a_topic_blocks_until_valid():
    out = ExecutionOutput.from_values(_values(joint_trajectory_topic="/t"), _joint_spec())
    out.wait_for_description("/robot_description")
    assert out.blocked and out.status({}, "vla_accel", "x").level == WARN
    problem = out.set_robot_description("<robot><joint")
    assert "not valid XML" in problem and out.status({}, "vla_accel", "x").level == 2  # ERROR, still blocked
    assert out.set_robot_description(TIGHT_URDF) == "" and not out.blocked and out.limiter is not None
    assert out.status({}, "vla_accel", "x").level == OK


@pytest.mark.ros
def test_limits_from_the_robot_description_topic(ros, tmp_path):
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from std_msgs.msg import String

    e2e, listener = ros
    pfile = _params_file(tmp_path, "vla_node", model=str(_joint_model(tmp_path)), async_execution=True,
                         joint_trajectory_topic="/jtc/joint_trajectory", robot_description_topic="/robot_description",
                         trajectory_lead_s=0.05)
    node = e2e._start_node(["--params-file", str(pfile)])
    camera = None
    try:
        e2e._node_ready(listener, node)
        with listener.lock:
            listener.trajectories.clear()
        camera = e2e._start_camera(120.0, tmp_path / "stamps.txt")
        e2e._wait_or_report(listener, lambda: (s := listener.latest_status("vla_accel: execution")) is not None
                            and "waiting for the robot description" in s.message, 60, "execution status: waiting",
                            node, camera)
        time.sleep(1.0)
        with listener.lock:
            assert not listener.trajectories, "nothing may reach the robot before the robot description"
        pub = listener.node.create_publisher(String, "/robot_description",
                                             QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        pub.publish(String(data=TIGHT_URDF))
        e2e._wait_or_report(listener, lambda: len(listener.trajectories) >= 2, 90,
                            "trajectories after the robot description", node, camera)
        with listener.lock:
            for _, msg in listener.trajectories:
                assert all(abs(v) <= 0.001 + 1e-9 for p in msg.points for v in list(p.positions)[:6])
        listener.node.destroy_publisher(pub)
    finally:
        e2e._kill_leftovers(camera)
        if node.poll() is None:
            e2e._sigint_and_wait(node)
