"""``vla-accel replay BAG --live``: bag player + the real node (a child process) + recorder, then a
comparison of the node's chunks with the offline replay's, matched by source frame stamp.

The node is started exactly as a user would (``python -m vla_accel.ros.vla_node --ros-args ...``)
on a private ROS domain, fed by ``BagPlayer`` with the recorded timing (slowed down by
``speed`` so a CPU node keeps up, and at least ``min_gap_s`` between messages so the node handles
a joint state recorded just before a frame before that frame, as the offline replay does), and its ``/vla/action_chunk`` and ``/vla/stats`` are recorded to
``<out>/live_actions``. The node may still supersede a frame (latest-frame policy): those chunks are
reported as missing and allowed; every chunk the node did publish must match the offline chunk of
the same stamp within the tolerance, and none may be extra.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vla_accel.bags import messages
from vla_accel.bags.compare import RegressionResult, compare_chunks
from vla_accel.bags.player import OUTPUT_TYPES, BagPlayer, BagRecorder, RosSession, require_ros
from vla_accel.bags.writer import read_action_chunks
from vla_accel.backends.registry import split_backend_spec
from vla_accel.errors import VlaAccelError

log = logging.getLogger(__name__)
NODE_READY_TIMEOUT_S = 180.0


@dataclass
class LiveOutcome:
    regression: RegressionResult
    recorded_bag: Path
    published: dict[str, int] = field(default_factory=dict)
    recorded: dict[str, int] = field(default_factory=dict)
    node_log: Path | None = None


def node_parameters(selection, options, backend: str, precision: str = "", jpeg_reduced_decode: bool = False) -> list[str]:
    """``--ros-args`` for the node so it listens to the bag's topics with the replay's settings
    (``jpeg_reduced_decode``: the JPEG decode setting of the offline run it is compared with)."""
    topics, transports = [], []
    for topic in selection.cameras.values():
        if selection.types[topic] == messages.COMPRESSED_IMAGE:
            if not topic.endswith("/compressed"):
                raise VlaAccelError(
                    f"compressed camera topic {topic!r} does not end in /compressed, which the node's "
                    "image_transport naming needs; rename it in the bag",
                    reason="bad_topic",
                )
            topics.append(topic[: -len("/compressed")])
            transports.append("compressed")
        else:
            topics.append(topic)
            transports.append("raw")

    def yaml_list(items: list[str]) -> str:
        return "[" + ", ".join(text(t) for t in items) + "]"

    def text(value: str) -> str:
        # -p values are YAML: quote strings so e.g. 'off' stays a string, not the boolean false
        return "'" + str(value).replace("'", "''") + "'"

    params = {
        "model": text(options.model),
        "backend": text(backend),
        "precision": text(precision or options.precision),
        "threads": str(options.threads),
        "camera_topics": yaml_list(topics),
        "camera_transports": yaml_list(transports),
        "input_qos": text("reliable"),  # a replay compares actions: no frame lost to best-effort transport
        "speedup_baseline": text("none"),
        "warmup_iterations": "1",
        "dry_run": "true",
        "batch_size": str(options.batch_size),
        "jpeg_reduced_decode": "true" if jpeg_reduced_decode else "false",
    }
    if selection.instruction:
        params["instruction_topic"] = text(selection.instruction)
    if selection.state:
        params["joint_states_topic"] = text(selection.state)
    args = ["--ros-args"]
    for key, value in params.items():
        args += ["-p", f"{key}:={value}"]
    return args


def _private_domain() -> int:
    # 0..101 are safe DDS domain ids on Linux; stay away from the default 0
    return 1 + os.getpid() % 100


def run_live_comparison(bag, result, options, out_dir, *, backend: str | None = None, tolerance: float = 1e-4,
                        speed: float = 0.5, min_gap_s: float = 0.02) -> LiveOutcome:
    """Drive the real node with ``bag`` and compare its chunks with ``result`` (the offline replay)."""
    require_ros()
    backend = backend or options.backends[0]
    offline = next((r for r in result.runs if r.ok and backend in (r.requested, r.backend, r.label)), None)
    if offline is None:
        raise VlaAccelError(
            f"--live compares with the offline replay of backend '{backend}': add it to --backends",
            reason="bad_argument",
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recorded_bag = out_dir / "live_actions"
    if recorded_bag.exists():
        raise VlaAccelError(f"{recorded_bag} exists already; choose another --out folder", reason="bag_exists")
    domain = _private_domain()
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    node_log = out_dir / "live_node.log"
    cmd = [sys.executable, "-m", "vla_accel.ros.vla_node", *node_parameters(result.selection, options, split_backend_spec(offline.requested)[0],
                                                                         offline.precision,
                                                                         offline.jpeg_reduced_decode)]
    log.info("live replay: starting the node on ROS domain %d: %s", domain, " ".join(cmd))
    with open(node_log, "wb") as log_file:
        node = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        with RosSession("vla_bag_replay", domain_id=domain) as ros:
            player = BagPlayer(ros.node, bag, topics=result.selection.types, speed=speed, min_gap_s=min_gap_s)
            recorder = BagRecorder(ros.node, recorded_bag, OUTPUT_TYPES)
            try:
                alive = lambda: node.poll() is None  # noqa: E731
                camera_topics = list(result.selection.cameras.values())
                if not player.wait_for_subscribers(camera_topics, NODE_READY_TIMEOUT_S, alive):
                    raise VlaAccelError(
                        f"the node did not subscribe to {camera_topics} within {NODE_READY_TIMEOUT_S:.0f} s "
                        f"(exit code {node.poll()}); its log: {node_log}\n{_tail(node_log)}",
                        reason="node_not_ready",
                    )
                # every topic's subscription must be matched before the first message goes out
                player.wait_for_subscribers(list(result.selection.types), 10.0, alive)
                player.play()
                recorder.wait_idle("/vla/action_chunk", len(offline.chunks), idle_s=3.0 / speed,
                                   timeout_s=60.0, alive=alive)
            finally:
                recorder.close()
    finally:
        _stop(node)
    live = read_action_chunks(recorded_bag).get("/vla/action_chunk", [])
    deviation = compare_chunks(live, offline.chunks, result.action_names)
    regression = RegressionResult(
        backend=f"live node ({offline.label})",
        golden_topic=f"offline {offline.label}",
        tolerance=tolerance,
        deviation=deviation,
        allow_missing=True,
        label="offline replay",
    )
    return LiveOutcome(regression, recorded_bag, dict(player.published), dict(recorder.counts), node_log)


def _stop(node: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGINT (the node publishes its stop action and exits), then SIGKILL if it hangs."""
    if node.poll() is not None:
        return
    node.send_signal(signal.SIGINT)
    try:
        node.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("live replay: the node ignored SIGINT for %.0f s; killing it", timeout_s)
        node.kill()
        node.wait(timeout=5.0)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
