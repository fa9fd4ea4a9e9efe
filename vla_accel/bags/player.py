"""Live replay on a ROS graph: a bag player and a bag recorder built on rclpy (no rosbag2 needed).

``BagPlayer`` publishes a bag's messages with their recorded timing, as the serialized CDR bytes
stored in the bag (rclpy publishers accept ``bytes``), so subscribers get exactly what was recorded,
header stamps included, as with ``ros2 bag play``. ``BagRecorder`` subscribes with ``raw=True`` and
writes the CDR it receives straight into an MCAP bag, as ``ros2 bag record`` does.

rclpy and the message packages are imported inside these classes only: ``vla_accel.bags`` stays
importable (and the offline replay usable) without ROS.
"""
from __future__ import annotations

import importlib
import logging
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping

from vla_accel.bags import messages
from vla_accel.bags.reader import open_reader
from vla_accel.bags.writer import ReplayBagWriter
from vla_accel.errors import VlaAccelError

log = logging.getLogger(__name__)


def require_ros(need_own_messages: bool = True) -> None:
    """Raise a clear error naming what is missing for live replay (rclpy, built vla_accel messages)."""
    from vla_accel.core.optional import module_available

    if not module_available("rclpy"):
        raise VlaAccelError(
            "live replay needs rclpy: pip install -r requirements/ros.txt (the ROS 2 Kilted wheels), "
            "or source a ROS 2 installation",
            reason="missing_ros",
        )
    if need_own_messages and not module_available("vla_accel.msg"):
        raise VlaAccelError(
            "live replay needs the built vla_accel messages (vla_accel.msg): run "
            "`bash scripts/build_ros.sh` and `source .ros_build/env.sh` (./run.sh does both)",
            reason="missing_ros",
        )


def ros_message_class(typename: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class (sensor_msgs.msg.Image)."""
    package, _, name = typename.partition("/msg/")
    if not name:
        raise VlaAccelError(f"not a ROS 2 message type name: {typename!r}", reason="bad_type")
    try:
        module = importlib.import_module(f"{package}.msg")
        return getattr(module, name)
    except (ImportError, AttributeError) as exc:
        raise VlaAccelError(
            f"message type {typename} is not available to rclpy here ({exc}); install its package "
            f"(e.g. pip install ros-kilted-{package.replace('_', '-')})",
            reason="missing_ros",
        ) from exc


def reliable_qos(depth: int = 100):
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


class RosSession:
    """A private rclpy context + one node spun on a background thread; use as a context manager.

    A private context (not the default one) keeps live replay from interfering with any other rclpy
    user in the same process; ``domain_id`` isolates the graph from other processes on the host.
    """

    def __init__(self, node_name: str, domain_id: int | None = None):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(node_name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name=f"{node_name}-spin", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while not self._stop.is_set() and self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except ExternalShutdownException:
            return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        if self.context.ok():
            self.context.shutdown()

    def __enter__(self) -> "RosSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BagPlayer:
    """Publishes ``topics`` of a bag (all when None) with the recorded timing, scaled by ``speed``."""

    def __init__(self, node, bag: str | Path, topics: Iterable[str] | None = None, speed: float = 1.0,
                 qos=None, min_gap_s: float = 0.0):
        if not speed > 0:
            raise VlaAccelError(f"playback speed must be > 0, got {speed}", reason="bad_argument")
        self.node = node
        self.bag = Path(bag)
        self.speed = float(speed)
        # Messages of different topics recorded a millisecond apart may be handled in either order by
        # a subscriber's executor (each topic is its own DDS reader); a minimum gap keeps the recorded
        # order at the subscriber, shifting the rest of the timeline by the time it adds.
        self.min_gap_ns = int(max(0.0, min_gap_s) * 1e9)
        reader = open_reader(self.bag)
        try:
            wanted = set(topics) if topics is not None else None
            self.types = {c.topic: c.msgtype for c in reader.connections if wanted is None or c.topic in wanted}
        finally:
            reader.close()
        missing = sorted(set(topics or ()) - set(self.types))
        if missing:
            raise VlaAccelError(f"topics {missing} are not in {self.bag}", reason="missing_topic")
        qos = qos or reliable_qos()
        self.publishers = {
            topic: node.create_publisher(ros_message_class(typename), topic, qos)
            for topic, typename in self.types.items()
        }
        self.published: dict[str, int] = {topic: 0 for topic in self.types}

    def wait_for_subscribers(self, topics: Iterable[str], timeout_s: float, alive=lambda: True) -> bool:
        """True once every topic in ``topics`` has a subscriber (``alive()`` False aborts)."""
        deadline = time.monotonic() + timeout_s
        topics = list(topics)
        while time.monotonic() < deadline and alive():
            if all(self.publishers[t].get_subscription_count() > 0 for t in topics):
                return True
            time.sleep(0.05)
        return False

    def play(self, stop: threading.Event | None = None) -> int:
        """Publish every message at t0 + (log_time - first_log_time) / speed. Returns messages sent."""
        reader = open_reader(self.bag)
        sent = 0
        try:
            conns = [c for c in reader.connections if c.topic in self.publishers]
            first_ns: int | None = None
            t0 = time.monotonic_ns()
            shift_ns, last_sent_ns = 0, None
            for conn, log_ns, raw in reader.messages(connections=conns):
                if stop is not None and stop.is_set():
                    break
                if first_ns is None:
                    first_ns = log_ns
                due_ns = t0 + int((log_ns - first_ns) / self.speed) + shift_ns
                if last_sent_ns is not None and due_ns < last_sent_ns + self.min_gap_ns:
                    shift_ns += last_sent_ns + self.min_gap_ns - due_ns
                    due_ns = last_sent_ns + self.min_gap_ns
                wait_s = (due_ns - time.monotonic_ns()) / 1e9
                if wait_s > 0:
                    time.sleep(wait_s)
                last_sent_ns = time.monotonic_ns()
                self.publishers[conn.topic].publish(bytes(raw))
                self.published[conn.topic] += 1
                sent += 1
        finally:
            reader.close()
        return sent


class BagRecorder:
    """Writes every message received on ``topics`` (topic -> type name) into an MCAP bag, as CDR."""

    def __init__(self, node, path: str | Path, topics: Mapping[str, str], qos=None):
        self.path = Path(path)
        self.writer = ReplayBagWriter(self.path)
        self._lock = threading.Lock()
        self._clock = node.get_clock()
        self.counts: dict[str, int] = {topic: 0 for topic in topics}
        self.last_ns = 0
        self._closed = False
        qos = qos or reliable_qos()
        self.subscriptions = [
            node.create_subscription(
                ros_message_class(typename), topic,
                lambda data, t=topic, ty=typename: self._on_message(t, ty, data), qos, raw=True,
            )
            for topic, typename in topics.items()
        ]

    def _on_message(self, topic: str, typename: str, data: bytes) -> None:
        now = self._clock.now().nanoseconds
        with self._lock:
            if self._closed:
                return
            self.writer.write_raw(topic, typename, now, data)
            self.counts[topic] += 1
            self.last_ns = time.monotonic_ns()

    def wait_idle(self, topic: str, expected: int, idle_s: float, timeout_s: float, alive=lambda: True) -> int:
        """Wait until ``expected`` messages arrived on ``topic`` or none came for ``idle_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and alive():
            with self._lock:
                count, last = self.counts[topic], self.last_ns
            if count >= expected:
                break
            if last and (time.monotonic_ns() - last) / 1e9 > idle_s:
                break
            time.sleep(0.05)
        with self._lock:
            return self.counts[topic]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.writer.close()


OUTPUT_TYPES = {
    "/vla/action_chunk": messages.ACTION_CHUNK,
    "/vla/stats": messages.INFERENCE_STATS,
}
