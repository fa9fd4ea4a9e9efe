"""The ROS processes' exit path (vla_accel/ros/teardown.py), without ROS: ``exit_process`` returns the
code of a clean exit, and a finalisation that hangs ends within the bound with every stack printed."""
from __future__ import annotations

import subprocess
import sys
import time

from vla_accel.ros.teardown import TEARDOWN_TIMEOUT_S

RUN = "from vla_accel.ros.teardown import exit_process; exit_process({code})"


def test_exit_process_keeps_the_exit_code():
    proc = subprocess.run([sys.executable, "-c", RUN.format(code=3)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr


def test_a_hung_finalisation_ends_within_the_bound_with_stacks():
    # an exit handler that never returns stands for middleware objects whose destruction hangs
    code = "import atexit, time; atexit.register(time.sleep, 600); " + RUN.format(code=0)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Timeout" in proc.stderr and "Thread" in proc.stderr, proc.stderr  # faulthandler: the bound, the stacks
    assert elapsed < 60, f"took {elapsed:.0f} s for a bound of {TEARDOWN_TIMEOUT_S:g} s"
