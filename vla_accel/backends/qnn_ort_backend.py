"""``qnn-ort``: the model on a Qualcomm Hexagon HTP through ONNX Runtime's QNN execution provider.

On a Snapdragon device this is the NPU; on x86-64 the same QNN HTP backend library runs an emulator
of it (the ``onnxruntime-qnn`` wheel ships both), so parity is checked here for real, slowly
(about 2.5 s per inference on two cores).

* Precision: ``fp16`` (the fp32 ONNX with ``enable_htp_fp16_precision=1``; plain fp32 does not fit
  the HTP and fails with QNN_COMMON_ERROR_MEM_ALLOC) or ``int8`` (a static QDQ model calibrated on
  a ``CalibrationSet``: ``extra["calibration"]``, e.g. built from a bag by
  ``vla_accel.bags.calibration``, else generated scenes; dynamic int8 does not map: MatMulInteger
  stays on the CPU).
* The HTP runs static shapes: the batch dimension is fixed to 1 (a free-dimension override) and
  batches are run row by row.
* ``extra``: ``soc_model`` (default 43, an SM8550 / Snapdragon 8 Gen 2), ``htp_arch`` (73),
  ``htp_performance_mode``, ``calibration``. The offline-compiled context binary
  (``ep.context_enable=1``) is cached per model file, precision, SoC and HTP architecture under
  ``<cache>/exports/<content hash>/qnn-ctx/`` and reloaded instead of compiling again.
* Every node must run on QNN: the session refuses CPU fallback
  (``session.disable_cpu_ep_fallback=1``) and ORT's profile of the first inferences is read back to
  report each node's provider (``device_info().detail["node_providers"]``).
* Runs in a worker process of the qnn venv (``qnn_worker.py``; why: its onnxruntime differs from
  the main one). ``VLA_ACCEL_QNN_PYTHON`` names that Python; default ``<repo>/.venv-qnn/bin/python``,
  made by ``./run.sh setup``.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from pathlib import Path
from typing import Mapping

import numpy as np

from vla_accel.backends.base import Availability, Backend, DeviceInfo, as_model_inputs
from vla_accel.errors import BackendError, BackendUnavailableError

QNN_PYTHON_ENV = "VLA_ACCEL_QNN_PYTHON"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_QNN_PYTHON = REPO / ".venv-qnn" / "bin" / "python"
WORKER = Path(__file__).with_name("qnn_worker.py")
QNN_HINT = ("The qnn-ort backend needs onnxruntime-qnn in its own venv: ./run.sh setup makes .venv-qnn "
            "(pip install -r requirements/qnn-venv/requirements.txt into a separate venv), or set "
            f"{QNN_PYTHON_ENV} to a Python that has it.")
DEFAULT_SOC = 43  # SM8550
DEFAULT_HTP_ARCH = 73
REPLY_TIMEOUT_S = 900.0  # the emulator compiles a graph for minutes on a loaded two-core machine


def qnn_python() -> Path:
    return Path(os.environ.get(QNN_PYTHON_ENV) or DEFAULT_QNN_PYTHON)


class QnnWorkerClient:
    """The parent's side of the qnn_worker protocol (see that module)."""

    def __init__(self, python: Path):
        from vla_accel.backends import qnn_worker as proto

        self._proto = proto
        self._lock = threading.Lock()
        self._proc = subprocess.Popen([str(python), str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env={**os.environ, "PYTHONNOUSERSITE": "1"})
        self._stderr: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        hello = self._read()
        if not hello.get("ok"):
            self.close()
            raise BackendUnavailableError("qnn-ort", ["onnxruntime-qnn"], f"{QNN_HINT} (worker: {hello.get('error')})")
        self.hello = hello

    def _drain(self) -> None:
        for line in self._proc.stderr:
            self._stderr = (self._stderr + [line.decode("utf-8", "replace").rstrip()])[-40:]

    def _read(self) -> dict:
        frame = self._proto.read_frame(self._proc.stdout)
        if frame is None:
            raise BackendError(f"qnn worker exited (code {self._proc.poll()}): {' | '.join(self._stderr[-5:])}",
                               reason="worker_died")
        header, arrays = frame
        header["_arrays"] = dict(zip([a["name"] for a in header.get("arrays", [])], arrays))
        return header

    def request(self, header: dict, arrays: list[tuple[str, np.ndarray]] = ()) -> dict:
        with self._lock:
            if self._proc.poll() is not None:
                raise BackendError(f"qnn worker is not running (exit {self._proc.returncode})", reason="worker_died")
            try:
                self._proto.write_frame(self._proc.stdin, header, list(arrays))
            except (BrokenPipeError, OSError) as exc:
                raise BackendError(f"qnn worker pipe closed: {exc}", reason="worker_died") from exc
            reply = self._read()
        if not reply.get("ok"):
            raise BackendError(f"qnn worker {header.get('op')} failed: {reply.get('error')}",
                               reason=f"qnn_{header.get('op')}_failed")
        return reply

    def close(self) -> None:
        proc = self._proc
        if proc.poll() is None:
            try:
                with self._lock:
                    self._proto.write_frame(proc.stdin, {"op": "close"})
                proc.wait(timeout=10)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class QnnOrtBackend(Backend):
    name = "qnn-ort"
    kind = "npu"
    precisions = ("fp16", "int8")
    description = "ONNX Runtime QNN execution provider, Hexagon HTP (x86-64 emulator here); fp16 or static int8"

    @classmethod
    def probe(cls) -> Availability:
        python = qnn_python()
        if not python.is_file():
            return Availability(False, ("onnxruntime-qnn",), f"{QNN_HINT} ({python} not found)")
        return Availability(True, detail=f"qnn venv python {python}")

    def _model_file(self) -> Path:
        if self.options.precision == "fp16":
            return self.model.export("onnx", precision="fp32")
        from vla_accel.models.calibration_set import synthetic_calibration
        from vla_accel.models.int8_static import export_onnx_qdq

        from vla_accel.models.calibration_set import CalibrationSet

        given = self.options.extra.get("calibration")
        if given is not None and not isinstance(given, CalibrationSet):
            raise BackendError(
                "qnn-ort: extra['calibration'] must be a CalibrationSet (build one from a bag or a folder with "
                "vla_accel.bags.calibration.calibration_from_source); got " + type(given).__name__,
                reason="bad_option")
        calibration = given or synthetic_calibration(self.spec, int(self.options.extra.get("calibration_samples", 32)))
        self._calibration = calibration.record()
        activation_bits = int(self.options.extra.get("activation_bits", 8))
        if activation_bits not in (8, 16):
            raise BackendError(f"qnn-ort: activation_bits must be 8 or 16, got {activation_bits}", reason="bad_option")
        return export_onnx_qdq(self.model, calibration, flavour="qnn" if activation_bits == 8 else "qnn-a16", batch=1)

    def _load(self) -> None:
        extra = self.options.extra
        soc = int(extra.get("soc_model", DEFAULT_SOC))
        arch = int(extra.get("htp_arch", DEFAULT_HTP_ARCH))
        self._calibration = None
        model_file = self._model_file()
        ctx_dir = self.model.export_dir("qnn", "ctx")
        key = f"{_file_digest(model_file)}-{self.options.precision}-soc{soc}-v{arch}"  # the file names its flavour
        ctx_file = ctx_dir / f"{key}{'-fallback' if extra.get('allow_cpu_fallback') else ''}_ctx.onnx"
        provider_options = {"backend_type": "htp", "soc_model": soc, "htp_arch": arch,
                            "htp_performance_mode": extra.get("htp_performance_mode", "burst")}
        if self.options.precision == "fp16":
            provider_options["enable_htp_fp16_precision"] = 1
        # strict by default: a node left to the CPU fails the load (``allow_cpu_fallback`` lets the
        # doctor list which ones fall back)
        strict = {} if extra.get("allow_cpu_fallback") else {"session.disable_cpu_ep_fallback": "1"}
        session_config = dict(strict)
        cached = ctx_file.is_file()
        diagnose = bool(extra.get("allow_cpu_fallback"))  # no context binary: it holds QNN nodes only
        if not cached and not diagnose:
            ctx_dir.mkdir(parents=True, exist_ok=True)
            session_config.update({"ep.context_enable": "1", "ep.context_file_path": str(ctx_file),
                                   "ep.context_embed_mode": "1"})
        self._client = QnnWorkerClient(qnn_python())
        try:
            info = self._client.request({
                "op": "load", "model": str(ctx_file if cached and not diagnose else model_file),
                "provider_options": provider_options, "session_config": session_config,
                "free_dims": {"batch": 1}, "profile": True,
            })
            if not cached and not diagnose and not ctx_file.is_file():
                raise BackendError(f"QNN did not write the context binary {ctx_file}", reason="qnn_context_missing")
            if not cached and not diagnose:  # the compile session made the binary; run from it like every later load
                self._client.close()
                self._client = QnnWorkerClient(qnn_python())
                info = self._client.request({
                    "op": "load", "model": str(ctx_file), "provider_options": provider_options,
                    "session_config": dict(strict), "free_dims": {"batch": 1},
                    "profile": True})
        except BaseException:
            self._client.close()
            raise
        if info["providers"][0] != "QNNExecutionProvider":
            self._client.close()
            raise BackendError(f"qnn-ort: session runs {info['providers']}, not QNN", reason="provider_inactive")
        self._info = info
        self._model_file_path = model_file
        self._ctx_file = ctx_file
        self._ctx_cached = cached
        self._soc, self._arch = soc, arch
        self._placement: dict | None = None
        self._input_types = {i["name"]: i["type"] for i in info["inputs"]}

    def placement(self) -> dict:
        """Node -> provider from ORT's profile (read once, after at least one inference)."""
        if self._placement is None:
            self._placement = self._client.request({"op": "placement"})
            self._placement.pop("_arrays", None)
            self._placement.pop("ok", None)
        return self._placement

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = as_model_inputs(self.name, self.spec, inputs)
        batch = next(iter(feed.values())).shape[0]
        rows = []
        output = self.spec.action.output
        for row in range(batch):
            arrays = [(name, np.ascontiguousarray(value[row:row + 1])) for name, value in feed.items()]
            reply = self._client.request({"op": "run"}, arrays)
            rows.append(np.asarray(reply["_arrays"][output], dtype=np.float32))
        return {output: np.concatenate(rows)}

    def _device_info(self) -> DeviceInfo:
        detail = {"soc_model": self._soc, "htp_arch": self._arch, "model_file": str(self._model_file_path),
                  "context_binary": str(self._ctx_file), "context_reused": self._ctx_cached,
                  "providers": self._info["providers"], "onnxruntime": self._info["ort_version"],
                  "batch": "fixed to 1 (rows run one by one)"}
        if self._placement is not None:
            detail["node_providers"] = self._placement.get("node_providers", {})
        if self._calibration is not None:
            detail["calibration"] = self._calibration
        return DeviceInfo(backend=self.name, device=f"htp-soc{self._soc}", kind="npu", parallel_units=0,
                          precision=self.options.precision,
                          runtime_version=f"onnxruntime-qnn (onnxruntime {self._info['ort_version']})",
                          detail=detail)

    def _close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
