"""The VLA node as a managed (lifecycle) node, for systems that bring nodes up through a lifecycle manager.

    python -m vla_accel.ros.managed_node --ros-args --params-file config/cpu.yaml
    ros2 lifecycle set /vla_node configure && ros2 lifecycle set /vla_node activate

Same parameters, topics and behaviour as vla_accel.ros.vla_node (the plain node stays the default);
the phases map onto rclpy.lifecycle transitions:

* configure: load the model and the backend (and the robot description); FAILURE on a clear error;
* activate: subscribe and start inference on the first activation; from then on frames are inferred
  and actions / trajectories published;
* deactivate: publish the ``on_stale`` hold once, stop inferring new frames and publishing actions
  (diagnostics keep coming); activate resumes;
* shutdown (or SIGINT / SIGTERM): the plain node's shutdown (hold action, threads joined).
Lifecycle transitions arrive as service calls while the node spins, so it spins a SingleThreadedExecutor
(entities created by activate are then served at once).
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions

from vla_accel.errors import VlaAccelError
from vla_accel.ros.teardown import bounded_teardown, exit_process
from vla_accel.ros.vla_node import VlaNode

log = logging.getLogger("vla_accel.managed_node")


class ManagedVlaNode(LifecycleNodeMixin, VlaNode):
    def __init__(self, overrides: dict[str, Any] | None = None, node_name: str = "vla_node"):
        VlaNode.__init__(self, overrides, node_name)
        LifecycleNodeMixin.__init__(self, enable_communication_interface=True)
        self.output_enabled = False  # unconfigured / inactive: nothing inferred, nothing published
        self._started = False
        self._shut_down = False

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.session is not None and self.session.engine is not None:
            return TransitionCallbackReturn.SUCCESS  # configured before (after a cleanup-free deactivate)
        return TransitionCallbackReturn.SUCCESS if self.configure() else TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if not self._started:
            self.activate()
            self._started = True
        self.output_enabled = True
        self._force_diagnostics.set()
        self.get_logger().info("active: inferring and publishing")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.output_enabled = False
        self._publish_stop(self.values["on_stale"], "deactivated")
        self.get_logger().info("inactive: holding, nothing inferred or published")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.output_enabled = False
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.output_enabled = False
        self.shutdown_once()
        return TransitionCallbackReturn.SUCCESS

    def shutdown_once(self) -> None:
        if not self._shut_down:
            self._shut_down = True
            self.shutdown()


def main(args: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] [%(name)s]: %(message)s")
    rclpy.init(args=sys.argv if args is None else args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    node = None
    executor = SingleThreadedExecutor()
    try:
        node = ManagedVlaNode()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except VlaAccelError as exc:
        print(f"managed_node: invalid configuration: {exc}", file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.shutdown_once()  # the on_shutdown action first: what the robot must get
        bounded_teardown("managed_node", node, executor, done="the on_shutdown action was published before it")
    return 0


def run() -> None:
    """Entry point of `python -m vla_accel.ros.managed_node` and `ros2 run vla_accel managed_node`."""
    exit_process(main())


if __name__ == "__main__":
    run()
