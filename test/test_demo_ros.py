"""`vla-accel demo` through real ROS 2 processes (marker ``ros``): Ctrl-C (SIGINT) ends the demo with
its summary and exit code 0, after it has received chunks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.ros

try:
    import rclpy  # noqa: F401

    import vla_accel.msg  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"missing: rclpy or the built vla_accel messages ({exc}); run ./run.sh setup",
                allow_module_level=True)


def test_sigint_ends_the_demo_with_its_summary_and_exit_code_0():
    domain = 20 + os.getpid() % 80
    cmd = [sys.executable, "-m", "vla_accel.cli", "demo", "--seconds", "120", "--domain-id", str(domain),
           "--param", "speedup_baseline:=none", "--param", "warmup_iterations:=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[str] = []
    got_chunk = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[chunk] #"):
                got_chunk.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert got_chunk.wait(120), "no chunk line from the demo:\n" + "".join(lines[-40:])
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    out = "".join(lines)
    assert rc == 0, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    assert "[demo] interrupted" in out
    summary = [line for line in lines if line.startswith("[demo] received ")]
    assert summary and int(summary[-1].split()[2]) >= 1, out[-3000:]
