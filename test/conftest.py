"""Shared test set-up.

Tiers: fast unit tests (no ROS, no heavy runtime) run always; per-backend tests skip naming the
missing runtime; ROS end-to-end tests (marker ``ros``) need rclpy and the built vla_accel messages;
``slow`` tests (soak, long benchmark-style runs) need --run-slow or VLA_ACCEL_SLOW=1.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Exports and generated weights are cached by content hash; share one cache across test runs.
os.environ.setdefault("VLA_ACCEL_CACHE", str(REPO / ".cache" / "vla_accel"))


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run slow soak/benchmark-style tests")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow") or os.environ.get("VLA_ACCEL_SLOW") == "1"
    if run_slow:
        return
    skip = pytest.mark.skip(reason="slow test: pass --run-slow or set VLA_ACCEL_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_bundle():
    from vla_accel.models import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def base_bundle():
    from vla_accel.models import load_model

    return load_model("base")
