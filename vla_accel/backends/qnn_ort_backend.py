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
* Policy programs (flow matching, diffusion) run graph by graph through the ``ProgramRunner``: one
  worker process and HTP session per graph, each with its own cached context binary and placement
  (``device_info().detail["graphs"]``); the loop between graphs (noise, Euler / diffusion updates)
  runs on the host in float32. fp16: the fp32 graphs with the fp16 flag. int8: each graph quantised
  on what it receives while the fp32 torch program runs on the calibration observations
  (``backends/program_calibration.py``), as a static QDQ model for the HTP with the batch fixed to 1
  (``export_program_qdq``); ``activation_bits`` may name bits per graph, e.g. ``{"step": 16}``.
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
from typing import TYPE_CHECKING, Mapping

import numpy as np

from vla_accel.backends.base import Availability, Backend, DeviceInfo, as_model_inputs
from vla_accel.errors import BackendError, BackendUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.models.calibration_set import CalibrationSet

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


class _QnnGraph:
    """One graph on the HTP: a worker process holding one ONNX Runtime session over the graph's
    context binary. The batch is fixed to 1: ``run`` runs the rows one by one and stacks them."""

    def __init__(self, name: str, client: QnnWorkerClient, info: dict, model_file: Path, ctx_file: Path,
                 cached: bool):
        self.name, self.client, self.info = name, client, info
        self.model_file, self.ctx_file, self.cached = model_file, ctx_file, cached
        self.placement: dict | None = None
        self.types = {i["name"]: i["type"] for i in info["inputs"]}
        self.outputs = list(info["outputs"])

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from vla_accel.backends.program import dtype_name

        arrays = {n: np.asarray(v) for n, v in feeds.items() if n in self.types}
        unfed = [n for n in self.types if n not in arrays]
        if unfed:
            raise BackendError(f"qnn-ort graph '{self.name}': inputs {unfed} not fed", reason="unfed_input")
        for n, value in arrays.items():
            want = dtype_name(self.types[n])
            if value.dtype.name != want:
                raise BackendError(f"qnn-ort graph '{self.name}': input '{n}' is {value.dtype.name}, the graph "
                                   f"takes {want}", reason="bad_input_dtype")
        batch = next(iter(arrays.values())).shape[0]
        if any(v.shape[:1] != (batch,) for v in arrays.values()):
            raise BackendError(f"qnn-ort graph '{self.name}': inputs disagree on the batch "
                               f"({ {n: v.shape for n, v in arrays.items()} })", reason="bad_input_shape")
        rows: dict[str, list[np.ndarray]] = {}
        for row in range(batch):
            reply = self.client.request({"op": "run"}, [(n, np.ascontiguousarray(v[row:row + 1]))
                                                         for n, v in arrays.items()])
            for name in self.outputs:
                rows.setdefault(name, []).append(np.array(reply["_arrays"][name], copy=True))
        out = {name: np.concatenate(parts) for name, parts in rows.items()}
        bad = [n for n, v in out.items() if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all()]
        if bad:
            raise BackendError(f"qnn-ort graph '{self.name}': non-finite values in {bad}", reason="non_finite_output")
        return out

    def signature(self):
        from vla_accel.backends.program import GraphSignature, TensorInfo, dtype_name

        def info(entry):
            shape = tuple(d if isinstance(d, int) else None for d in entry["shape"])
            return TensorInfo(dtype_name(entry["type"]), shape)

        outputs = self.info.get("output_info") or [{"name": n, "type": "", "shape": []} for n in self.outputs]
        return GraphSignature({e["name"]: info(e) for e in self.info["inputs"]},
                              {e["name"]: (info(e) if e["type"] else TensorInfo("", None)) for e in outputs})

    def read_placement(self) -> dict:
        """Node -> provider from ORT's profile (read once, after at least one inference)."""
        if self.placement is None:
            self.placement = self.client.request({"op": "placement"})
            self.placement.pop("_arrays", None)
            self.placement.pop("ok", None)
        return self.placement

    def detail(self) -> dict:
        out = {"model_file": str(self.model_file), "context_binary": str(self.ctx_file),
               "context_reused": self.cached}
        if self.placement is not None:
            out["node_providers"] = self.placement.get("node_providers", {})
        return out

    def close(self) -> None:
        self.client.close()


def export_program_qdq(bundle, calibrations: Mapping[str, "CalibrationSet"], bits: Mapping[str, int],
                       *, progress: bool = False) -> dict[str, Path]:
    """Every graph of ``bundle``'s program as a static QDQ model the HTP takes (the ``qnn`` /
    ``qnn-a16`` flavour of ``int8_static.quantize_onnx_qdq``: LayerNorms folded, batch fixed to 1),
    each calibrated on ``calibrations[graph]``; graph name -> file. Cached per graph and flavour
    under a folder keyed by every graph's calibration set (a step graph's set depends on the
    prefix's outputs), with the graph's ``calibration.json`` beside its file."""
    import json
    import shutil
    import tempfile

    from vla_accel.core.fileio import atomic_write_text
    from vla_accel.models.int8_program import program_calibration_digest
    from vla_accel.models.int8_static import QDQ_RECIPE, quantize_onnx_qdq
    from vla_accel.models.progress import ExportProgress
    from vla_accel.models.publish import publish_directory

    root = (bundle.export_dir("onnx", "int8-static")
            / f"program-qnn-r{QDQ_RECIPE}-{program_calibration_digest(calibrations)}-b1")
    flavours = {g.name: "qnn-a16" if bits.get(g.name, 8) == 16 else "qnn" for g in bundle.spec.program.graphs}
    files = {g: root / f"{g}-{f}" / "model.onnx" for g, f in flavours.items()}
    todo = [g for g, f in files.items() if not f.is_file()]
    if not todo:
        return files
    report = ExportProgress(f"{bundle.name} onnx int8 per graph for the HTP", progress)
    sources = bundle.export_program("onnx", progress=progress)
    root.mkdir(parents=True, exist_ok=True)
    for name in todo:
        flavour = flavours[name]
        report.stage(f"graph '{name}' ({flavour}): {calibrations[name].samples} calibration samples")
        tmp_dir = Path(tempfile.mkdtemp(prefix=".graph-qnn.", dir=root))
        try:
            info = quantize_onnx_qdq(sources[name], tmp_dir / "model.onnx", calibrations[name], flavour=flavour,
                                     batch=1, report=report)
            atomic_write_text(tmp_dir / "calibration.json", json.dumps(
                {"calibration": calibrations[name].record(), "graph": name, "flavour": flavour, "batch": 1,
                 "source": str(sources[name]), **info}, indent=2, sort_keys=True, default=str))
            publish_directory(tmp_dir, files[name].parent)
        finally:
            if tmp_dir.exists():
                shutil.rmtree(tmp_dir, ignore_errors=True)
    return files


class QnnOrtBackend(Backend):
    name = "qnn-ort"
    kind = "npu"
    precisions = ("fp16", "int8")
    description = "ONNX Runtime QNN execution provider, Hexagon HTP (x86-64 emulator here); fp16 or static int8"
    program_kinds = ("single_pass", "flow_matching", "diffusion")

    @classmethod
    def probe(cls) -> Availability:
        python = qnn_python()
        if not python.is_file():
            return Availability(False, ("onnxruntime-qnn",), f"{QNN_HINT} ({python} not found)")
        return Availability(True, detail=f"qnn venv python {python}")

    def _calibration_set(self, default_samples: int):
        from vla_accel.models.calibration_set import CalibrationSet, synthetic_calibration

        given = self.options.extra.get("calibration")
        if given is not None and not isinstance(given, CalibrationSet):
            raise BackendError(
                "qnn-ort: extra['calibration'] must be a CalibrationSet (build one from a bag or a folder with "
                "vla_accel.bags.calibration.calibration_from_source); got " + type(given).__name__,
                reason="bad_option")
        samples = int(self.options.extra.get("calibration_samples", default_samples))
        return given or synthetic_calibration(self.spec, samples)

    def _activation_bits(self, graphs: list[str]) -> dict[str, int]:
        """``activation_bits``: 8 or 16 for every graph, or graph name -> bits (default 8)."""
        given = self.options.extra.get("activation_bits", 8)
        if isinstance(given, Mapping):
            unknown = sorted(set(given) - set(graphs))
            if unknown:
                raise BackendError(f"qnn-ort: activation_bits names unknown graphs {unknown} (graphs: {graphs})",
                                   reason="bad_option")
            bits = {g: int(given.get(g, 8)) for g in graphs}
        else:
            bits = {g: int(given) for g in graphs}
        bad = {g: b for g, b in bits.items() if b not in (8, 16)}
        if bad:
            raise BackendError(f"qnn-ort: activation_bits must be 8 or 16, got {bad}", reason="bad_option")
        return bits

    def _model_file(self) -> Path:
        if self.options.precision == "fp16":
            return self.model.export("onnx", precision="fp32")
        from vla_accel.models.int8_static import export_onnx_qdq

        calibration = self._calibration_set(32)
        self._calibration = calibration.record()
        bits = self._activation_bits(["model"])["model"]
        return export_onnx_qdq(self.model, calibration, flavour="qnn" if bits == 8 else "qnn-a16", batch=1)

    def _settings(self) -> None:
        extra = self.options.extra
        self._soc = int(extra.get("soc_model", DEFAULT_SOC))
        self._arch = int(extra.get("htp_arch", DEFAULT_HTP_ARCH))
        self._calibration = None
        self._graphs: dict[str, _QnnGraph] = {}
        self._placement: dict | None = None

    def _open_graph(self, name: str, model_file: Path) -> _QnnGraph:
        """One graph's session on the HTP: compiles the context binary once per model file (strict:
        no CPU fallback), then runs from it, like every later load."""
        extra = self.options.extra
        soc, arch = self._soc, self._arch
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
        client = QnnWorkerClient(qnn_python())
        try:
            info = client.request({
                "op": "load", "model": str(ctx_file if cached and not diagnose else model_file),
                "provider_options": provider_options, "session_config": session_config,
                "free_dims": {"batch": 1}, "profile": True,
            })
            if not cached and not diagnose and not ctx_file.is_file():
                raise BackendError(f"QNN did not write the context binary {ctx_file}", reason="qnn_context_missing")
            if not cached and not diagnose:  # the compile session made the binary; run from it like every later load
                client.close()
                client = QnnWorkerClient(qnn_python())
                info = client.request({
                    "op": "load", "model": str(ctx_file), "provider_options": provider_options,
                    "session_config": dict(strict), "free_dims": {"batch": 1},
                    "profile": True})
        except BaseException:
            client.close()
            raise
        if info["providers"][0] != "QNNExecutionProvider":
            client.close()
            raise BackendError(f"qnn-ort: graph '{name}' runs {info['providers']}, not QNN",
                               reason="provider_inactive")
        return _QnnGraph(name, client, info, model_file, ctx_file, cached)

    def _load(self) -> None:
        self._settings()
        graph = self._open_graph("model", self._model_file())
        self._graphs = {"model": graph}
        self._info = graph.info

    def _program_files(self) -> dict[str, Path]:
        if self.options.precision == "fp16":  # the fp32 graphs with the HTP's fp16 flag
            return self.model.export_program("onnx")
        from vla_accel.backends.program_calibration import capture_graph_calibration

        graphs = [g.name for g in self.spec.program.graphs]
        bits = self._activation_bits(graphs)
        observations = self._calibration_set(16)
        calibrations = capture_graph_calibration(self.model, observations)
        self._calibration = {name: {**c.record(), "activation_bits": bits[name]} for name, c in calibrations.items()}
        return export_program_qdq(self.model, calibrations, bits)

    def _load_program(self):
        from vla_accel.backends.program import NumpyOps

        self._settings()
        files = self._program_files()
        self._graph_paths = {name: str(path) for name, path in files.items()}
        try:
            for name, path in files.items():
                self._graphs[name] = self._open_graph(name, path)
        except BaseException:
            self._close()
            raise
        self._info = next(iter(self._graphs.values())).info
        return dict(self._graphs), NumpyOps()

    def graph_signatures(self):
        if self._runner is None:
            return None  # the single-pass path checks its feeds against the spec per call
        return {name: graph.signature() for name, graph in self._graphs.items()}

    def placement(self) -> dict:
        """Node -> provider from ORT's profile (read once, after at least one inference). For a
        program: the counts over every graph, and each graph's own under ``graphs``."""
        if self._placement is None:
            if self._runner is None:
                self._placement = self._graphs["model"].read_placement()
            else:
                per_graph = {name: graph.read_placement() for name, graph in self._graphs.items()}
                counts: dict[str, int] = {}
                for placed in per_graph.values():
                    for provider, n in placed.get("node_providers", {}).items():
                        counts[provider] = counts.get(provider, 0) + n
                self._placement = {"node_providers": counts, "graphs": per_graph}
        return self._placement

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = as_model_inputs(self.name, self.spec, inputs)
        output = self.spec.action.output
        actions = self._graphs["model"].run(feed)[output]
        return {output: np.asarray(actions, dtype=np.float32)}

    def _device_info(self) -> DeviceInfo:
        detail = {"soc_model": self._soc, "htp_arch": self._arch,
                  "providers": self._info["providers"], "onnxruntime": self._info["ort_version"],
                  "batch": "fixed to 1 (rows run one by one)"}
        if self._runner is None:
            detail.update(self._graphs["model"].detail())
        else:
            detail["graphs"] = {name: graph.detail() for name, graph in self._graphs.items()}
            detail["model_file"] = os.path.commonpath(list(self._graph_paths.values()))
            detail["model_files"] = dict(self._graph_paths)
        if self._placement is not None:
            detail["node_providers"] = self._placement.get("node_providers", {})
        if self._calibration is not None:
            detail["calibration"] = self._calibration
        return DeviceInfo(backend=self.name, device=f"htp-soc{self._soc}", kind="npu", parallel_units=0,
                          precision=self.options.precision,
                          runtime_version=f"onnxruntime-qnn (onnxruntime {self._info['ort_version']})",
                          detail=detail)

    def _close(self) -> None:
        for graph in getattr(self, "_graphs", {}).values():
            graph.close()
        self._graphs = {}
