"""A synthetic robot for demos, tests and benchmarks: a moving scene on a camera topic, an instruction
and joint states, published from its own process like a real camera driver would.

    python -m vla_accel.ros.synthetic_camera --rate 30 --width 640 --height 480 --seconds 20

The scene (``SyntheticScene``, numpy only) is a gradient table with a coloured block moving on a
circle, so consecutive frames differ and the model's actions change over time. ``--stamps-out``
writes every published header stamp (ns), one per line, so a test can check that each action chunk
carries the stamp of a frame that was really sent.
"""
from __future__ import annotations

import argparse
import array
import math
import sys
import time
from typing import Callable

import numpy as np


class SyntheticScene:
    """Frames of a moving block, rendered into one preallocated HxWx3 uint8 RGB buffer."""

    def __init__(self, width: int = 640, height: int = 480):
        self.width, self.height = width, height
        ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
        xs = np.linspace(0, 1, width, dtype=np.float32)[None, :]
        background = np.empty((height, width, 3), dtype=np.uint8)
        background[..., 0] = (60 + 80 * xs).astype(np.uint8)
        background[..., 1] = (90 + 60 * ys).astype(np.uint8)
        background[..., 2] = 120
        self.background = background
        self.frame = background.copy()
        self.block = max(8, min(width, height) // 8)

    def render(self, t: float) -> np.ndarray:
        """The frame at time ``t`` seconds (the same buffer, overwritten)."""
        self.frame[...] = self.background
        cx = int((0.5 + 0.3 * math.cos(t)) * (self.width - self.block))
        cy = int((0.5 + 0.3 * math.sin(1.3 * t)) * (self.height - self.block))
        self.frame[cy : cy + self.block, cx : cx + self.block] = (220, 40, 40)
        return self.frame


def encode_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    """JPEG bytes of an RGB frame (simplejpeg when importable, else Pillow)."""
    try:
        import simplejpeg

        return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB")
    except ImportError:
        import io

        from PIL import Image as PilImage

        out = io.BytesIO()
        PilImage.fromarray(rgb).save(out, format="JPEG", quality=quality)
        return out.getvalue()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=30.0, help="frames per second")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0 = until Ctrl-C)")
    p.add_argument("--topic", default="/camera/image_raw")
    p.add_argument("--compressed", action="store_true", help="publish JPEG CompressedImage on <topic>/compressed")
    p.add_argument("--instruction", default="pick up the red block")
    p.add_argument("--instruction-topic", default="/vla/instruction")
    p.add_argument("--joint-states-topic", default="/joint_states")
    p.add_argument("--joints", type=int, default=8, help="joint positions published (0 = no joint states)")
    p.add_argument("--reliable", action="store_true", help="reliable QoS (default: sensor data, best effort)")
    p.add_argument("--stamps-out", default="", help="write each published frame stamp (ns) to this file")
    p.add_argument("--wait-subscribers", type=float, default=15.0,
                   help="seconds to wait for the image and instruction topics to match a subscriber (default: 15)")
    p.add_argument("--require-subscriber", action="store_true",
                   help=f"exit with code {NO_SUBSCRIBER_EXIT} when the image topic never matched a subscriber "
                        "(default: publish anyway, like a driver that starts before its consumers)")
    p.add_argument("--pause-every", type=int, default=0, help="pause after every N frames (0 = never)")
    p.add_argument("--pause-s", type=float, default=0.0, help="length of each pause (seconds)")
    return p.parse_args(argv)


NO_SUBSCRIBER_EXIT = 3


def wait_for_match(count: Callable[[], int], timeout_s: float, ok: Callable[[], bool] = lambda: True) -> float | None:
    """Seconds until ``count()`` (matched endpoints) was positive, or None when ``timeout_s`` passed."""
    t0 = time.monotonic()
    while ok():
        if count() > 0:
            return time.monotonic() - t0
        if time.monotonic() - t0 >= timeout_s:
            return None
        time.sleep(0.05)
    return None


def _acked(publisher, timeout_s: float) -> bool:
    """Whether every matched reliable subscriber acknowledged what ``publisher`` sent (bounded wait)."""
    from rclpy.duration import Duration

    try:
        return bool(publisher.wait_for_all_acked(Duration(seconds=timeout_s)))
    except (AttributeError, RuntimeError):  # an RMW without the call: the short wait it replaces
        time.sleep(0.2)
        return True


def unmatched_hint(what: str, topic: str, qos: str) -> str:
    """What to check when an endpoint never matched its peer (the usual causes, in order)."""
    import os

    return (f"{what} on {topic} matched nothing. Check: the peer runs with the same ROS_DOMAIN_ID "
            f"(here {os.environ.get('ROS_DOMAIN_ID', '0 (unset)')}); the same transport settings "
            f"(FASTDDS_BUILTIN_TRANSPORTS here: {os.environ.get('FASTDDS_BUILTIN_TRANSPORTS', 'unset')}; "
            f"participants whose builtin transports differ do not talk); compatible QoS ({qos}: a reliable "
            f"subscriber does not match a best-effort publisher); and the topic name.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import faulthandler
    import signal
    import threading

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: every thread's stack on stderr
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import CompressedImage, Image, JointState
    from std_msgs.msg import String

    from vla_accel.ros.teardown import bounded_teardown

    # Own signal handling: SIGINT / SIGTERM end the stream wherever the camera is (waiting for a
    # subscriber, publishing, sleeping), then the stamps are written and the teardown is bounded. A
    # KeyboardInterrupt raised at an arbitrary point left the node undestroyed and the interpreter's
    # exit could hang in the middleware.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    running = lambda: not stop.is_set() and rclpy.ok()  # noqa: E731
    node = rclpy.create_node("synthetic_camera")
    stamps: list[int] = []
    sent = 0
    start = time.monotonic()
    code = 0
    try:
        qos = QoSProfile(depth=5) if args.reliable else qos_profile_sensor_data
        if args.compressed:
            topic = args.topic if args.topic.endswith("/compressed") else args.topic + "/compressed"
            image_pub = node.create_publisher(CompressedImage, topic, qos)
        else:
            image_pub = node.create_publisher(Image, args.topic, qos)
        # Latched-like instruction: reliable + transient local, so a node started later still gets it.
        ins_qos = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        ins_pub = node.create_publisher(String, args.instruction_topic, ins_qos)
        joint_pub = node.create_publisher(JointState, args.joint_states_topic, qos) if args.joints else None
        # Like a driver that starts before its consumers, but a demo or test wants its first frames
        # seen: wait (bounded) until both topics matched a subscriber, then send the instruction first.
        qos_name = "reliable" if args.reliable else "sensor_data (best effort)"
        matched_s = wait_for_match(image_pub.get_subscription_count, args.wait_subscribers, running)
        if stop.is_set():
            return 0
        if matched_s is None:
            print("synthetic_camera: " + unmatched_hint(f"for {args.wait_subscribers:g} s the image publisher",
                                                         image_pub.topic_name, qos_name), file=sys.stderr)
            if args.require_subscriber:
                code = NO_SUBSCRIBER_EXIT
                return code
        else:
            print(f"synthetic_camera: {image_pub.topic_name} matched {image_pub.get_subscription_count()} "
                  f"subscriber(s) after {matched_s:.2f} s", file=sys.stderr)
            # The instruction's subscriber is normally matched by now (same node); bounded anyway.
            if wait_for_match(ins_pub.get_subscription_count, 5.0, running) is None and not stop.is_set():
                print("synthetic_camera: " + unmatched_hint("the instruction publisher", ins_pub.topic_name,
                                                             "reliable, transient local"), file=sys.stderr)
        ins_pub.publish(String(data=args.instruction))
        # Our side matching the image subscriber is not enough: until the subscriber's side has matched this
        # publisher too, DDS discards the frames (volatile durability, never reported as lost). The image
        # publisher was announced before the instruction publisher, on the same ordered discovery channel,
        # so the instruction being acknowledged means the subscriber knows the image publisher as well.
        # That also delivers the instruction before the first frame.
        if matched_s is not None and not _acked(ins_pub, 5.0) and not stop.is_set():
            print("synthetic_camera: the instruction was not acknowledged within 5 s; the first frames may be "
                  "discarded by a subscriber still discovering this publisher", file=sys.stderr)
        scene = SyntheticScene(args.width, args.height)
        period = 1.0 / args.rate
        start = time.monotonic()
        next_t = start
        instruction_sent_at = time.monotonic()
        while running() and (args.seconds <= 0 or time.monotonic() - start < args.seconds):
            now = time.monotonic()
            if now - instruction_sent_at > 1.0:  # repeat: subscribers without transient local join late
                ins_pub.publish(String(data=args.instruction))
                instruction_sent_at = now
            rgb = scene.render(now - start)
            stamp = node.get_clock().now().to_msg()
            if args.compressed:
                msg = CompressedImage()
                msg.format = "jpeg"
                msg.data = array.array("B", encode_jpeg(rgb))
            else:
                msg = Image()
                msg.height, msg.width, msg.step, msg.encoding = args.height, args.width, args.width * 3, "rgb8"
                data = array.array("B")
                data.frombytes(rgb.tobytes())
                msg.data = data
            msg.header.stamp = stamp
            msg.header.frame_id = "camera_color_optical_frame"
            if joint_pub is not None:
                joints = JointState()
                joints.header.stamp = stamp
                joints.name = [f"joint{i + 1}" for i in range(args.joints - 1)] + ["gripper"]
                joints.position = [0.1 * math.sin(now - start + i) for i in range(args.joints)]
                joint_pub.publish(joints)
            image_pub.publish(msg)
            stamps.append(stamp.sec * 1_000_000_000 + stamp.nanosec)
            sent += 1
            next_t += period
            if args.pause_every and sent % args.pause_every == 0:
                next_t += args.pause_s  # a gap in the stream (the node's stale hold in between)
            delay = next_t - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            else:
                next_t = time.monotonic()  # running late: do not burst to catch up
    finally:
        if args.stamps_out:
            with open(args.stamps_out, "w", encoding="utf-8") as handle:
                handle.write("\n".join(str(s) for s in stamps) + ("\n" if stamps else ""))
        print(f"synthetic_camera: sent {sent} frames in {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)
        bounded_teardown("synthetic_camera", node, exit_code=code,
                         done=f"{sent} frames sent" + (", stamps written" if args.stamps_out else ""))
    return 0


if __name__ == "__main__":
    exit_code = main()
    # Everything is out (frames, stamps file, summary line) and ROS is torn down: end the process
    # here rather than in the interpreter's finalisation, where middleware objects collected late
    # were seen to hang a camera's exit.
    sys.stdout.flush()
    sys.stderr.flush()
    import os

    os._exit(exit_code)
