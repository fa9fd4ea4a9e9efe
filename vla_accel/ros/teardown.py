"""Bounded ROS teardown for the package's processes (the node, the synthetic camera).

Destroying a node and shutting the context down waits on the middleware (DDS participants, transport
threads). That normally takes milliseconds, but a teardown that hangs must not keep a process from
exiting: launch would escalate to SIGTERM / SIGKILL and a demo's Ctrl-C would look frozen. Past the
bound every thread's stack goes to stderr (so the hang can be reported) and the process exits with
the code it was going to return: whatever the process had to send (a stop action, a stamps file)
is out before teardown starts.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import threading
from typing import Any, NoReturn

TEARDOWN_TIMEOUT_S = 5.0


def bounded_teardown(process: str, node: Any, executor: Any = None, *, exit_code: int = 0,
                     timeout_s: float = TEARDOWN_TIMEOUT_S, done: str = "") -> None:
    """Remove ``node`` from ``executor``, destroy both and shut rclpy down, within ``timeout_s``;
    past it, print a line naming ``process`` (and ``done``: what was already sent) with the stacks,
    and ``os._exit(exit_code)``."""
    import rclpy

    def teardown() -> None:
        if node is not None:
            if executor is not None:
                executor.remove_node(node)
            node.destroy_node()
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if rclpy.ok():
            rclpy.shutdown()

    # A middleware call that blocks while holding the GIL would stall this thread's join as well: a
    # C-level watchdog (faulthandler's thread needs no GIL) ends the process then, stacks first.
    faulthandler.dump_traceback_later(timeout_s + 2.0, exit=True)
    worker = threading.Thread(target=teardown, name=f"{process}-teardown", daemon=True)
    worker.start()
    worker.join(timeout_s)
    faulthandler.cancel_dump_traceback_later()
    if worker.is_alive():
        after = f" ({done})" if done else ""
        print(f"{process}: ROS teardown did not finish within {timeout_s:g} s{after}; exiting without it. "
              "Stacks of every thread follow.", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


def exit_process(code: int) -> NoReturn:
    """``sys.exit(code)`` for a ROS process's entry point, with the interpreter's finalisation bounded:
    a watchdog thread of faulthandler (C level, it needs no GIL) prints every stack and ends the
    process with code 1 if finalisation still runs ``TEARDOWN_TIMEOUT_S`` later (middleware objects
    collected late were seen to hang a process's exit)."""
    sys.stdout.flush()
    sys.stderr.flush()
    faulthandler.dump_traceback_later(TEARDOWN_TIMEOUT_S, exit=True)
    sys.exit(code)
