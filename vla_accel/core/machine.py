"""What machine a figure was measured on: one description for the benchmarks, doctor, the replay
report and the calibration store."""
from __future__ import annotations

import os
import platform
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def cpu_model_name() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall through to the portable (less precise) answer
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask), else the logical CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 0


def load_average_1min() -> float:
    """The 1-minute load average (-1 where the OS has none): above the CPU count, other processes
    competed for the cores while a figure was measured."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


def machine_info() -> dict[str, Any]:
    """CPU, cores, OS and Python of this machine (no heavy import)."""
    return {
        "cpu": cpu_model_name(),
        "logical_cpus": os.cpu_count() or 0,
        "usable_cpus": usable_cpus(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def machine_description() -> str:
    """One line for reports: host, architecture, cores, Python."""
    return (f"{platform.node() or 'host'}: {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"Python {platform.python_version()}")
