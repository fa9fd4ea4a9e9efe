"""ONNX Runtime + QNN execution provider in a worker process (run by the qnn venv's Python).

Why a process: ``onnxruntime-qnn`` ships its own onnxruntime (1.32) that cannot share a Python
environment with the main one (1.31), so it lives in ``.venv-qnn`` and the ``qnn-ort`` backend talks
to this script over its stdin / stdout. This file imports only the standard library, numpy and
onnxruntime: it is run as a script, not as part of the vla_accel package.

Protocol (one request, one reply, in order): a frame is a 4-byte little-endian length, a UTF-8 JSON
header of that length, then the raw bytes of the arrays the header lists (``{"name", "dtype",
"shape"}`` each, C order, concatenated). Only the dtypes in ``DTYPES`` are accepted; nothing is ever
unpickled. Requests: ``load`` (model path, provider and session options), ``run`` (input arrays),
``close``. Replies carry ``ok`` and either the result or ``error`` / ``error_type``.
"""
from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
import traceback

import numpy as np

DTYPES = ("float32", "float16", "int32", "int64", "int8", "uint8", "bool")
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 1 << 30


class ProtocolError(ValueError):
    """A malformed frame on the worker pipe (this script runs without the vla_accel package, so it
    cannot use vla_accel.errors)."""


def read_frame(stream) -> tuple[dict, list[np.ndarray]] | None:
    raw = stream.read(4)
    if not raw:
        return None
    if len(raw) != 4:
        raise ProtocolError("truncated frame length")
    (length,) = struct.unpack("<I", raw)
    if length > MAX_HEADER:
        raise ProtocolError(f"frame header of {length} bytes is over the limit")
    header = json.loads(stream.read(length).decode("utf-8"))
    arrays = []
    for spec in header.get("arrays", []):
        dtype = str(spec["dtype"])
        if dtype not in DTYPES:
            raise ProtocolError(f"dtype {dtype!r} not accepted (allowed: {DTYPES})")
        shape = tuple(int(s) for s in spec["shape"])
        if any(s < 0 for s in shape):
            raise ProtocolError(f"negative dimension in {shape}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if nbytes > MAX_PAYLOAD:
            raise ProtocolError(f"array of {nbytes} bytes is over the limit")
        data = stream.read(nbytes)
        if len(data) != nbytes:
            raise ProtocolError("truncated array payload")
        arrays.append(np.frombuffer(data, dtype=dtype).reshape(shape))
    return header, arrays


def write_frame(stream, header: dict, arrays: list[tuple[str, np.ndarray]] = ()) -> None:
    header = dict(header)
    header["arrays"] = [{"name": name, "dtype": a.dtype.name, "shape": list(a.shape)} for name, a in arrays]
    blob = json.dumps(header).encode("utf-8")
    stream.write(struct.pack("<I", len(blob)))
    stream.write(blob)
    for _, array in arrays:
        stream.write(np.ascontiguousarray(array).tobytes())
    stream.flush()


class Worker:
    def __init__(self):
        import onnxruntime as ort

        try:  # onnxruntime-qnn 2.x ships the QNN EP as a plugin library to register
            import onnxruntime_qnn
        except ImportError:
            onnxruntime_qnn = None
        if onnxruntime_qnn is not None and "QNNExecutionProvider" not in ort.get_available_providers():
            ort.register_execution_provider_library(onnxruntime_qnn.get_ep_name(), onnxruntime_qnn.get_library_path())
        if "QNNExecutionProvider" not in ort.get_available_providers():
            raise ImportError(f"this onnxruntime has no QNNExecutionProvider ({ort.get_available_providers()})")
        self.ort = ort
        self.session = None
        self.profile_prefix = None

    def load(self, req: dict) -> dict:
        ort = self.ort
        options = ort.SessionOptions()
        for name, value in (req.get("free_dims") or {}).items():
            options.add_free_dimension_override_by_name(str(name), int(value))
        for key, value in (req.get("session_config") or {}).items():
            options.add_session_config_entry(str(key), str(value))
        options.log_severity_level = int(req.get("log_severity", 3))
        profile = bool(req.get("profile", True))
        if profile:
            options.enable_profiling = True
            self.profile_prefix = os.path.join(tempfile.mkdtemp(prefix="qnn-profile-"), "ort")
            options.profile_file_prefix = self.profile_prefix
        provider_options = {str(k): str(v) for k, v in (req.get("provider_options") or {}).items()}
        devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"] \
            if hasattr(ort, "get_ep_devices") else []
        if devices:  # a plugin EP (onnxruntime-qnn 2.x) is attached to its devices
            options.add_provider_for_devices(devices, provider_options)
            self.session = ort.InferenceSession(req["model"], sess_options=options)
        else:
            self.session = ort.InferenceSession(req["model"], sess_options=options,
                                                providers=[("QNNExecutionProvider", provider_options)])
        return {
            "providers": self.session.get_providers(),
            "available_providers": ort.get_available_providers(),
            "ort_version": ort.__version__,
            "inputs": [{"name": i.name, "type": i.type, "shape": [s if isinstance(s, int) else str(s) for s in i.shape]}
                       for i in self.session.get_inputs()],
            "outputs": [o.name for o in self.session.get_outputs()],
            "output_info": [{"name": o.name, "type": o.type,
                             "shape": [s if isinstance(s, int) else str(s) for s in o.shape]}
                            for o in self.session.get_outputs()],
        }

    def run(self, arrays: list[np.ndarray], names: list[str]) -> list[tuple[str, np.ndarray]]:
        feed = dict(zip(names, arrays))
        outputs = self.session.run(None, feed)
        return [(o.name, np.asarray(v)) for o, v in zip(self.session.get_outputs(), outputs)]

    def placement(self) -> dict:
        """Per-node execution provider from ORT's profile of the runs so far."""
        if self.session is None or self.profile_prefix is None:
            return {}
        path = self.session.end_profiling()
        self.profile_prefix = None
        counts: dict[str, int] = {}
        nodes: dict[str, str] = {}
        try:
            with open(path, encoding="utf-8") as handle:
                events = json.load(handle)
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass
        for event in events:
            args = event.get("args") or {}
            if event.get("cat") == "Node" and "provider" in args:
                name = str(args.get("op_name", "")) + ":" + str(event.get("name", "")).rsplit("_kernel_time", 1)[0]
                nodes[name] = args["provider"]
        for provider in nodes.values():
            counts[provider] = counts.get(provider, 0) + 1
        return {"node_providers": counts, "nodes": nodes}


def main() -> int:
    # The protocol gets its own copy of the stdout pipe; fd 1 then points at stderr, so native
    # libraries that log to stdout (the QNN backend does) cannot corrupt the stream.
    sys.stdout.flush()
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stdin = sys.stdin.buffer
    try:
        worker = Worker()
    except Exception as exc:  # noqa: BLE001 (reported to the parent, which raises a clear error)
        write_frame(stdout, {"ok": False, "error": f"{type(exc).__name__}: {exc}", "error_type": "import"})
        return 1
    write_frame(stdout, {"ok": True, "ready": True, "ort_version": worker.ort.__version__,
                         "providers": worker.ort.get_available_providers()})
    while True:
        try:
            frame = read_frame(stdin)
        except (ValueError, UnicodeDecodeError) as exc:
            write_frame(stdout, {"ok": False, "error": str(exc), "error_type": "protocol"})
            return 2
        if frame is None:
            return 0
        header, arrays = frame
        op = header.get("op")
        try:
            if op == "load":
                write_frame(stdout, {"ok": True, **worker.load(header)})
            elif op == "run":
                names = [a["name"] for a in header.get("arrays", [])]
                write_frame(stdout, {"ok": True}, worker.run(arrays, names))
            elif op == "placement":
                write_frame(stdout, {"ok": True, **worker.placement()})
            elif op == "close":
                write_frame(stdout, {"ok": True})
                return 0
            else:
                write_frame(stdout, {"ok": False, "error": f"unknown op {op!r}", "error_type": "protocol"})
        except Exception as exc:  # noqa: BLE001 (every runtime failure goes back as a reply)
            write_frame(stdout, {"ok": False, "error": f"{type(exc).__name__}: {exc}", "error_type": op or "",
                                 "trace": traceback.format_exc(limit=3)})


if __name__ == "__main__":
    sys.exit(main())
