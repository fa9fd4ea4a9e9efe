"""``vla-accel serve``: serve a policy to a fleet from a real Triton Inference Server.

    vla-accel serve --model tiny --backend onnxruntime --max-batch 16 --max-queue-delay-us 2000 --instances 1

Generates the model repository (the policy model for raw camera frames, the graph model for the
``triton`` backend), starts ``tritonserver`` from the server environment (.venv-triton, made by
``./run.sh setup``), waits until it is ready, prints where robots connect and where metrics are,
then serves until interrupted (Ctrl-C / SIGTERM stops it cleanly). ``--check`` starts, answers one
request on each model and stops (a smoke test).
"""
from __future__ import annotations

import argparse
import json
import signal
import time

from vla_accel.errors import SpecError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="model name or spec YAML (default tiny)")
    parser.add_argument("--backend", default="onnxruntime", help="local backend the server runs (default onnxruntime)")
    parser.add_argument("--max-batch", type=int, default=16, help="Triton max_batch_size (default 16)")
    parser.add_argument("--max-queue-delay-us", type=int, default=2000,
                        help="dynamic batcher: longest wait to fill a batch, microseconds (default 2000)")
    parser.add_argument("--instances", type=int, default=1, help="model instances (processes) per model (default 1)")
    parser.add_argument("--device", default="", help="the backend's device (e.g. cuda:0)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=0, help="backend intra-op threads (0 = runtime default)")
    parser.add_argument("--backend-extra", default="", help="backend extra options as JSON")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default all interfaces)")
    parser.add_argument("--port", type=int, default=8001, help="gRPC port robots connect to (default 8001)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--tls-cert", default=None, help="PEM server certificate: gRPC over TLS")
    parser.add_argument("--tls-key", default=None, help="PEM key of --tls-cert")
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                        help="larger camera frames are refused with an error")
    parser.add_argument("--venv", default=None, help="server environment (default .venv-triton or $VLA_ACCEL_TRITON_VENV)")
    parser.add_argument("--workdir", default=None, help="where the repository and log go (default a temp folder)")
    parser.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for readiness")
    parser.add_argument("--check", action="store_true", help="start, answer one request per model, stop")


def run(args: argparse.Namespace) -> int:
    from vla_accel.serve.launch import start_policy_server
    from vla_accel.serve.repository import ServeConfig

    try:
        extra = json.loads(args.backend_extra) if args.backend_extra else {}
    except json.JSONDecodeError as exc:
        raise SpecError(f"--backend-extra must be JSON: {exc}") from exc
    options = {"precision": args.precision, "threads": args.threads}
    if args.device:
        options["device"] = args.device
    if extra:
        options["extra"] = extra
    config = ServeConfig(model=args.model, backend=args.backend, max_batch=args.max_batch,
                         max_queue_delay_us=args.max_queue_delay_us, instances=args.instances,
                         backend_options=options, max_image_pixels=args.max_image_pixels)
    server, names = start_policy_server(config, grpc_port=args.port, http_port=args.http_port,
                                        metrics_port=args.metrics_port, host=args.host, venv=args.venv,
                                        workdir=args.workdir, ready_timeout_s=args.ready_timeout,
                                        tls_cert=args.tls_cert, tls_key=args.tls_key)
    try:
        print(f"vla-accel serve: {args.model} on {args.backend} (max batch {args.max_batch}, queue delay "
              f"{args.max_queue_delay_us} us, {args.instances} instance(s)) ready", flush=True)
        print(f"  gRPC (KServe v2{', TLS' if args.tls_cert else ''}): {args.host}:{args.port}  models: {names['policy']} (raw frames), "
              f"{names['graph']} (backend triton)", flush=True)
        print(f"  metrics: {server.metrics_url}  repository: {server.repository}  log: {server.log_path}", flush=True)
        if args.check:
            return _check(server, names, config, args.tls_cert)
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        while not stop:
            if not server.running:
                print(f"vla-accel serve: tritonserver exited; log ends:\n{server.log_tail()}", flush=True)
                return 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        server.cleanup()
        print("vla-accel serve: stopped", flush=True)


def _check(server, names, config, tls_root: str | None = None) -> int:
    """One request on each model (over TLS with the server's own certificate as root when given)."""
    import numpy as np

    from vla_accel.backends.base import BackendOptions
    from vla_accel.core.spec import example_inputs
    from vla_accel.backends.registry import create_backend
    from vla_accel.models import load_model
    from vla_accel.serve.client import RemotePolicy

    bundle = load_model(config.model)
    tls = {"ssl": True, "root_certificates": tls_root} if tls_root else {}
    backend = create_backend("triton", bundle, BackendOptions(extra={"url": server.grpc_url, "timeout_s": 10, **tls}))
    with backend:
        actions = backend.infer(example_inputs(bundle.spec, 1))[bundle.spec.action.output]
    policy = RemotePolicy(server.grpc_url, names["policy"], timeout_s=10, root_certificates=tls_root)
    try:
        frames = {cam.name: np.zeros((480, 640, 3), np.uint8) for cam in bundle.spec.cameras}
        state = np.zeros(bundle.spec.state.dims, np.float32) if bundle.spec.state is not None else None
        chunk = policy.infer(frames, "check", state)
    finally:
        policy.close()
    print(f"  check: graph model -> {actions.shape}, policy model -> {chunk.shape}", flush=True)
    return 0
