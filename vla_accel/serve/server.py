"""Start, await and stop a real ``tritonserver`` (the binary bundled in the nvidia-pytriton wheel).

The server runs in its own Python environment (``.venv-triton``, made by ``./run.sh setup``):
its Python backend needs numpy < 2, which the main environment does not have. That environment
also holds the local runtime the served backend uses (onnxruntime by default). The server process
gets: the repository, a backend folder holding the Python backend plus the stub built for that
environment's Python version, ``LD_LIBRARY_PATH`` with that Python's LIBDIR and the wheel's
libraries, and ``PYTHONPATH`` with that environment's site-packages and vla_accel's sources.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import vla_accel
from vla_accel.errors import VlaAccelError

log = logging.getLogger(__name__)

VENV_ENV = "VLA_ACCEL_TRITON_VENV"
SETUP_HINT = "create it with `./run.sh setup` (it installs requirements/triton-server/*.txt into .venv-triton)"


class ServerError(VlaAccelError):
    """The Triton server could not be found, started or did not become ready."""


def project_root() -> Path:
    return Path(vla_accel.__file__).resolve().parent.parent


def default_venv() -> Path:
    env = os.environ.get(VENV_ENV)
    return Path(env).expanduser() if env else project_root() / ".venv-triton"


def free_ports(count: int) -> list[int]:
    """`count` distinct free local ports. All sockets stay bound until every port is chosen, so the kernel cannot
    hand out the same port twice (separate one-port calls can: the server then fails with "cannot listen to HTTP
    and GRPC at the same address and port")."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


@dataclass(frozen=True)
class ServerEnvironment:
    """The server venv's interpreter facts (asked from its own python once)."""

    venv: Path
    python_version: str
    libdir: str
    site_packages: str
    pytriton_dir: Path

    @property
    def binary(self) -> Path:
        return self.pytriton_dir / "tritonserver" / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        return self.pytriton_dir / "tritonserver" / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"

    @property
    def libs(self) -> Path:
        return self.pytriton_dir.parent / "nvidia_pytriton.libs"

    @classmethod
    def find(cls, venv: str | Path | None = None) -> "ServerEnvironment":
        venv = Path(venv).expanduser() if venv else default_venv()
        python = venv / "bin" / "python"
        if not python.is_file():
            raise ServerError(f"Triton server environment not found at {venv}: {SETUP_HINT} "
                              f"(or point {VENV_ENV} at one)", reason="server_env_missing")
        probe = ("import json, sys, sysconfig, importlib.util as u; s = u.find_spec('pytriton'); "
                 "import numpy; print(json.dumps({'v': '%d.%d' % sys.version_info[:2], "
                 "'libdir': sysconfig.get_config_var('LIBDIR'), 'site': sysconfig.get_paths()['purelib'], "
                 "'pytriton': s.submodule_search_locations[0] if s else '', 'numpy': numpy.__version__}))")
        try:
            out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60, check=True,
                                 env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")})
        except (subprocess.SubprocessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or exc
            raise ServerError(f"Triton server environment {venv} is broken: {detail}. {SETUP_HINT}",
                              reason="server_env_broken") from exc
        facts = json.loads(out.stdout.strip().splitlines()[-1])
        if not facts["pytriton"]:
            raise ServerError(f"{venv} has no nvidia-pytriton (the tritonserver binary): {SETUP_HINT}",
                              reason="server_env_broken")
        if int(facts["numpy"].split(".")[0]) >= 2:
            raise ServerError(f"{venv} has numpy {facts['numpy']}; Triton's Python backend needs numpy < 2",
                              reason="server_env_broken")
        env = cls(venv, facts["v"], facts["libdir"], facts["site"], Path(facts["pytriton"]))
        if not env.binary.is_file():
            raise ServerError(f"tritonserver binary missing at {env.binary}", reason="server_env_broken")
        if not env.stub.is_file():
            raise ServerError(f"no Triton Python-backend stub for Python {env.python_version} in {env.stub.parent.parent}",
                              reason="server_env_broken")
        return env


class TritonServer:
    """One ``tritonserver`` process serving ``repository`` on loopback or any interface.

    ``start()`` launches it and waits (at most ``ready_timeout_s``) until the server and every model
    in the repository report ready; a server that exits or stays unready raises ServerError with
    the tail of its log. ``stop()`` sends SIGINT (Triton drains in-flight requests), then kills
    after ``stop_timeout_s``.
    """

    def __init__(self, repository: str | Path, *, grpc_port: int = 8001, http_port: int = 8000,
                 metrics_port: int = 8002, host: str = "0.0.0.0", venv: str | Path | None = None,
                 log_path: str | Path | None = None, ready_timeout_s: float = 120.0, stop_timeout_s: float = 15.0,
                 workdir: str | Path | None = None, tls_cert: str | Path | None = None,
                 tls_key: str | Path | None = None):
        self.repository = Path(repository)
        self.grpc_port, self.http_port, self.metrics_port = int(grpc_port), int(http_port), int(metrics_port)
        ports = {"gRPC": self.grpc_port, "HTTP": self.http_port, "metrics": self.metrics_port}
        if len(set(ports.values())) != len(ports):
            raise ServerError("the gRPC, HTTP and metrics ports must differ; got "
                              + ", ".join(f"{name} {port}" for name, port in ports.items()))
        self.host = host
        self.env = ServerEnvironment.find(venv)
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="vla_accel_triton."))
        self.log_path = Path(log_path) if log_path else self.workdir / "tritonserver.log"
        if bool(tls_cert) != bool(tls_key):
            raise ServerError("TLS needs both a server certificate and its key (PEM files)", reason="bad_tls")
        for path in filter(None, (tls_cert, tls_key)):
            if not Path(path).is_file():
                raise ServerError(f"TLS file not found: {path}", reason="bad_tls")
        self.tls = (str(tls_cert), str(tls_key)) if tls_cert else None
        self.process: subprocess.Popen | None = None
        self._log_file = None
        self._shm_regions: set[str] = set()

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _backend_dir(self) -> Path:
        """A backend folder with Triton's Python backend and the stub for the environment's Python."""
        backends = self.workdir / "backends"
        python = backends / "python"
        if not python.is_dir():
            python.mkdir(parents=True)
            source = self.env.pytriton_dir / "tritonserver" / "backends" / "python"
            for item in source.iterdir():
                if item.is_file():
                    (python / item.name).symlink_to(item)
            shutil.copy(self.env.stub, python / "triton_python_backend_stub")
        return backends

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AMENT_", "ROS_", "COLCON"))}
        env["PYTHONPATH"] = os.pathsep.join([self.env.site_packages, str(project_root())])
        # VLA_ACCEL_SERVE_LIBRARY_PATH goes first: libraries the policy's runtime must find before the
        # wheel's bundled ones (e.g. the cuDNN a CUDA torch was built against, newer than Triton's)
        first = [p for p in os.environ.get("VLA_ACCEL_SERVE_LIBRARY_PATH", "").split(os.pathsep) if p]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*first, self.env.libdir, str(self.env.libs)])
        env["PATH"] = os.pathsep.join([str(self.env.venv / "bin"), env.get("PATH", "/usr/bin:/bin")])
        return env

    def command(self) -> list[str]:
        return [
            str(self.env.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self._backend_dir()}",
            f"--grpc-port={self.grpc_port}", f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}", "--allow-metrics=true",
            f"--grpc-address={self.host}", f"--http-address={self.host}",
            "--allow-sagemaker=false", "--allow-vertex-ai=false",
            "--exit-on-error=true", "--strict-readiness=true", "--log-verbose=0",
            "--disable-auto-complete-config",
            # gRPC (what robots use) with TLS when a certificate is given; HTTP serves health and
            # readiness, metrics its own port: bind them to loopback or a trusted network
            *([f"--grpc-use-ssl=true", f"--grpc-server-cert={self.tls[0]}", f"--grpc-server-key={self.tls[1]}"]
              if self.tls else []),
        ]

    def start(self) -> "TritonServer":
        if self.process is not None:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        log.info("starting tritonserver (gRPC :%d, HTTP :%d, metrics :%d), log %s", self.grpc_port, self.http_port,
                 self.metrics_port, self.log_path)
        self.process = subprocess.Popen(self.command(), stdout=self._log_file, stderr=subprocess.STDOUT,
                                        env=self._environment(), start_new_session=True)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _get(self, path: str, timeout: float = 2.0) -> int:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=timeout) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return 0

    def models(self) -> list[str]:
        meta = self.repository / "vla_accel_serve.json"
        if meta.is_file():
            return list(json.loads(meta.read_text())["models"].values())
        return sorted(p.name for p in self.repository.iterdir() if (p / "config.pbtxt").is_file())

    def ready(self) -> bool:
        return self._get("/v2/health/ready") == 200 and all(
            self._get(f"/v2/models/{name}/ready") == 200 for name in self.models())

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode} before it was ready; "
                                  f"its log ({self.log_path}) ends:\n{self.log_tail()}", reason="server_exited")
            if self.ready():
                self._shm_regions |= self._mapped_shm_regions()
                return
            time.sleep(0.2)
        raise ServerError(f"tritonserver not ready after {self.ready_timeout_s:.0f} s; its log ({self.log_path}) "
                          f"ends:\n{self.log_tail()}", reason="server_not_ready")

    def _mapped_shm_regions(self) -> set[str]:
        """The Python backend's shared-memory regions this server maps (one per model instance). A
        server that is killed cannot remove them, so stop() / kill() do (they would pile up in /dev/shm)."""
        try:
            with open(f"/proc/{self.process.pid}/maps", encoding="utf-8", errors="replace") as maps:
                return {line.split()[-1] for line in maps
                        if "/dev/shm/triton_python_backend_shm_region_" in line}
        except (OSError, AttributeError):
            return set()

    def _remove_shm_regions(self) -> None:
        for path in self._shm_regions:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove the server's shared memory %s: %s", path, exc)
        self._shm_regions = set()

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the server (a crash, for fallback drills and tests)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            self._remove_shm_regions()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop within %.0f s; killing it", self.stop_timeout_s)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if process is not None:
            try:  # the Python-backend stubs run in the server's process group
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._remove_shm_regions()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()
