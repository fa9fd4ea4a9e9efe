"""A non-editable install carries everything `vla-accel info` needs (model specs and golden files are
package data), and building it raises no setuptools warning about packages left out."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_non_editable_install_runs_vla_accel_info(tmp_path):
    pytest.importorskip("setuptools", reason="missing: setuptools (pip install setuptools)")
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".ros_build", ".venv*", "build", "*.egg-info", "__pycache__", "out", "replay_reports", ".pytest_cache"))
    target = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                            "--target", str(target), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    log = build.stdout + build.stderr
    assert "absent from the `packages` configuration" not in log, log[-3000:]
    installed = target / "vla_accel"
    assert (installed / "models" / "specs" / "tiny.yaml").is_file()
    assert (installed / "models" / "golden" / "tiny_fp32.npz").is_file()
    # Only the installed copy on the path (not this checkout), run from elsewhere.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "PYTHONPATH": str(target)}
    code = ("import sys, vla_accel; assert vla_accel.__file__.startswith(sys.argv[1]), vla_accel.__file__; "
            "from vla_accel.cli import main; sys.exit(main(['info', '--model', 'tiny']))")
    run = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stdout.startswith("model: tiny (built-in)"), run.stdout[:2000]
