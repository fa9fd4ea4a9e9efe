"""The node with ``backend: triton`` on a real ROS graph (marker ``ros``): a real Triton server on
loopback serves ``tiny``; this test process publishes a fixed camera frame, instruction and joint
state, so every chunk must equal the local onnxruntime result for that observation (1e-5, fp32).
Then the server is killed mid-stream: the node goes on with its local fallback, every frame is
processed or counted as dropped, and /diagnostics reports the switch."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytestmark = pytest.mark.ros

try:
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String
except ImportError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"missing: rclpy / ROS 2 message packages ({exc}); install with ./run.sh setup",
                allow_module_level=True)

from test_ros_node import Listener, _kill_leftovers, _node_ready, _sigint_and_wait, _start_node  # noqa: E402

INSTRUCTION = "put the block in the bowl"
JOINTS = [f"joint{i}" for i in range(1, 8)] + ["gripper"]


class FixedRobot:
    """Publishes the same frame (fresh stamps), instruction and joint state at ``rate`` Hz."""

    def __init__(self, listener: Listener, frame: np.ndarray, state: np.ndarray, rate: float = 8.0):
        self.listener, self.frame, self.state, self.period = listener, frame, state, 1.0 / rate
        self.joint_pub = listener.node.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import array

        data = array.array("B")
        data.frombytes(self.frame.tobytes())
        h, w, _ = self.frame.shape
        n = 0
        while not self._stop.is_set():
            stamp = self.listener.node.get_clock().now().to_msg()
            if n % 8 == 0:
                self.listener.instruction_pub.publish(String(data=INSTRUCTION))
            joints = JointState(name=JOINTS, position=[float(v) for v in self.state])
            joints.header.stamp = stamp
            self.joint_pub.publish(joints)
            msg = Image(height=h, width=w, encoding="rgb8", step=w * 3)
            msg.data = data
            msg.header.stamp = stamp
            self.listener.image_pub.publish(msg)
            self.sent += 1
            n += 1
            time.sleep(self.period)

    def stop(self):
        self._stop.set()
        self._thread.join(5)


@pytest.fixture(scope="module")
def listener():
    lst = Listener()
    yield lst
    lst.close()


def test_node_on_triton_matches_local_and_falls_back_when_the_server_dies(listener, triton_factory, tiny_bundle):
    from vla_accel.backends.base import BackendOptions
    from vla_accel.backends.registry import create_backend
    from vla_accel.core.engine import Engine
    from vla_accel.core.types import Observation

    server, _ = triton_factory()
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    state = (0.1 * rng.standard_normal(8)).astype(np.float32)
    local = create_backend("onnxruntime", tiny_bundle, BackendOptions(threads=1, extra={"allow_spinning": False}))
    reference = Engine(tiny_bundle, local).infer_one(
        Observation(images={"primary": frame}, instruction=INSTRUCTION, stamp_ns=1, state=state)).values.ravel()
    local.close()
    with listener.lock:
        listener.chunks.clear()
        listener.diagnostics.clear()
        listener.stats.clear()
    node = _start_node(["-p", "backend:=triton", "-p", "fallback:=[onnxruntime]", "-p", f"triton_url:={server.grpc_url}",
                        "-p", "triton_timeout_s:=3.0", "-p", "threads:=1", "-p", "fallback_standby:=true", "-p", "speedup_baseline:=none",
                        "-p", "stale_image_timeout_s:=5.0", "-p", "target_latency_ms:=5000.0"])
    robot = None
    try:
        _node_ready(listener, node)
        robot = FixedRobot(listener, frame, state)

        def count(backend):
            with listener.lock:
                return sum(1 for _, m in listener.chunks if m.backend == backend)

        listener.wait_for(lambda: count("triton") >= 5, 60, "5 chunks served by triton")
        server.kill()
        listener.wait_for(lambda: count("onnxruntime") >= 5, 60, "5 chunks from the local fallback")
        listener.wait_for(lambda: (s := listener.latest_status("vla_accel: backend")) is not None
                          and s.level == b"\x01", 10, "backend WARN after the switch")
        robot.stop()
        time.sleep(2.0)  # the last frames finish and a stats message follows
        with listener.lock:
            received_before = listener.stats[-1][1].frames_received if listener.stats else 0
        listener.wait_for(lambda: listener.stats and listener.stats[-1][1].frames_received == received_before, 5,
                          "settled stats")
        elapsed, out = _sigint_and_wait(node)
    finally:
        if robot is not None:
            robot.stop()
        _kill_leftovers(node)
    with listener.lock:
        chunks = [m for _, m in listener.chunks]
        stats = listener.stats[-1][1]
    backends = [c.backend for c in chunks]
    switch_at = backends.index("onnxruntime")
    assert set(backends[:switch_at]) == {"triton"} and set(backends[switch_at:]) == {"onnxruntime"}, backends
    for chunk in chunks:  # the served and the local path give the same actions for the same observation
        np.testing.assert_allclose(np.asarray(chunk.values, dtype=np.float32), reference, atol=1e-5, rtol=0)
    status = {kv.key: kv.value for kv in listener.latest_status("vla_accel: backend").values}
    assert status["backend switches"] == "1" and status["last switch"].startswith("triton -> onnxruntime"), status
    # nothing lost uncounted: every frame the node received was processed or counted as dropped
    assert stats.frames_received == stats.frames_processed + stats.frames_dropped, (
        stats.frames_received, stats.frames_processed, stats.frames_dropped)
    assert stats.frames_processed >= len(chunks) >= 10
    assert node.returncode == 0 and elapsed < 10.0, out[-3000:]
