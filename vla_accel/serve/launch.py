"""``start_policy_server``: everything ``vla-accel serve`` does before the server answers.

1. load the model and its backend once in this process, so exports and compiled engines are built
   and cached here (the server's environment holds only the runtime, not the exporters);
2. write the model repository (policy + graph models);
3. start ``tritonserver`` and wait until both models are ready.
"""
from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path

from vla_accel.serve.repository import ServeConfig, write_repository
from vla_accel.serve.server import TritonServer

log = logging.getLogger(__name__)


def server_backend_options(config: ServeConfig) -> dict:
    """The served backend's options. ONNX Runtime's intra-op threads busy-wait between runs by default;
    on a server their spinning starves the gRPC and batching threads, so it is off unless asked for."""
    opts = copy.deepcopy(config.backend_options)
    if config.backend in ("onnxruntime", "ort"):
        opts.setdefault("extra", {}).setdefault("allow_spinning", False)
    return opts


def prepare_backend(config: ServeConfig):
    """Load the served backend here once (builds and caches its exports); returns the ModelBundle."""
    from vla_accel.backends.base import BackendOptions
    from vla_accel.backends.registry import create_backend
    from vla_accel.models import load_model

    bundle = load_model(config.model, cache_dir=config.cache_dir or None)
    opts = server_backend_options(config)
    options = BackendOptions(device=str(opts.get("device", "")), precision=str(opts.get("precision", "fp32")),
                             threads=int(opts.get("threads", 0)), max_batch=config.max_batch,
                             extra=dict(opts.get("extra", {})))
    backend = create_backend(config.backend, bundle, options)
    backend.load()
    backend.close()
    return bundle


def start_policy_server(config: ServeConfig, *, grpc_port: int = 8001, http_port: int = 8000,
                        metrics_port: int = 8002, host: str = "0.0.0.0", venv: str | Path | None = None,
                        workdir: str | Path | None = None, ready_timeout_s: float = 120.0,
                        tls_cert: str | Path | None = None, tls_key: str | Path | None = None) -> tuple[TritonServer, dict]:
    """Prepare, write the repository and start the server; returns (running server, level -> model name)."""
    config.validate()
    bundle = prepare_backend(config)
    config = copy.deepcopy(config)
    config.backend_options = server_backend_options(config)
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="vla_accel_serve."))
    names = write_repository(work / "repository", bundle.spec, config)
    server = TritonServer(work / "repository", grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
                          host=host, venv=venv, ready_timeout_s=ready_timeout_s, workdir=work,
                          tls_cert=tls_cert, tls_key=tls_key)
    server._own_workdir = workdir is None  # noqa: SLF001 - a temporary folder made here goes with the server
    server.start()
    return server, names
