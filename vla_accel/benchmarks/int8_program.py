"""int8 policy programs end to end: per-graph calibration captured from the fp32 program, the int8
graphs run by the same ``ProgramRunner`` loop as every backend, the whole action chunk compared with
the fp32 torch program under the same seeded noise.

* ``capture_graph_calibration``: runs the fp32 torch program on representative observations and
  records what each graph receives (the prefix: the observations; the step graph: every step's
  sample, time, state and prefix outputs), one ``CalibrationSet`` per graph with the observation
  set's provenance.
* ``int8_program_sessions``: graph sessions over the files of ``models/int8_program.py`` for
  onnxruntime (CPU), OpenVINO (CPU, f32 hint) and LiteRT (integer inputs and outputs quantised /
  dequantised with each tensor's own scale and zero point).
* ``program_error``: the fp32 torch program and an int8 program on the same inputs and calls
  (``call`` picks the seeded noise), max / mean |Δa| and correlation of the action chunks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from vla_accel.backends.program_calibration import capture_graph_calibration, torch_program_runner  # noqa: F401
from vla_accel.errors import BackendError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.models.calibration_set import CalibrationSet


class _OrtGraph:
    def __init__(self, path):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        self.inputs = {i.name for i in self.session.get_inputs()}

    def run(self, feeds):
        return dict(zip(self.names, self.session.run(None, {n: feeds[n] for n in self.inputs})))

    def signature(self):
        return None


class _OpenVinoGraph:
    def __init__(self, path):
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.request = compiled.create_infer_request()
        self.inputs = [i.get_any_name() for i in compiled.inputs]
        self.outputs = [(o, o.get_any_name()) for o in compiled.outputs]

    def run(self, feeds):
        result = self.request.infer({n: feeds[n] for n in self.inputs})
        return {name: np.array(result[port]) for port, name in self.outputs}

    def signature(self):
        return None


class _LiteRTGraph:
    """One .tflite graph at batch 1 (rows one by one); integer inputs are quantised with the tensor's
    scale / zero point, integer outputs dequantised, so the loop between graphs stays in float."""

    def __init__(self, path):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        signatures = interpreter.get_signature_list()
        key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
        self.runner = interpreter.get_signature_runner(key)
        self.inputs = self.runner.get_input_details()
        self.outputs = self.runner.get_output_details()
        self.path = path

    @staticmethod
    def _to(value: np.ndarray, detail) -> np.ndarray:
        dtype = np.dtype(detail["dtype"])
        scale, zero = detail["quantization"]
        if np.issubdtype(dtype, np.integer) and scale and np.issubdtype(value.dtype, np.floating):
            info = np.iinfo(dtype)
            return np.clip(np.round(value / scale + zero), info.min, info.max).astype(dtype)
        return np.ascontiguousarray(value, dtype=dtype)

    def run(self, feeds):
        batch = next(iter(feeds.values())).shape[0]
        rows: dict[str, list] = {}
        for row in range(batch):
            args = {n: self._to(np.asarray(feeds[n][row:row + 1]), d) for n, d in self.inputs.items()}
            try:
                out = self.runner(**args)
            except (ValueError, RuntimeError) as exc:
                raise BackendError(f"LiteRT inference of {self.path} failed: {exc}", reason="infer_failed") from exc
            for name, value in out.items():
                scale, zero = self.outputs[name]["quantization"]
                value = np.asarray(value)
                if np.issubdtype(value.dtype, np.integer) and scale:
                    value = (value.astype(np.float32) - zero) * scale
                rows.setdefault(name, []).append(np.array(value, copy=True))
        return {name: np.concatenate(parts) for name, parts in rows.items()}

    def signature(self):
        return None


SESSION_TYPES: dict[str, Callable[[Any], Any]] = {"onnx": _OrtGraph, "openvino": _OpenVinoGraph, "tflite": _LiteRTGraph}


def int8_program_sessions(fmt: str, graphs: Mapping[str, Any]) -> dict[str, Any]:
    """Graph name -> session for the files of ``export_program_int8`` (``GraphInt8`` per graph)."""
    return {name: SESSION_TYPES[fmt](entry.path) for name, entry in graphs.items()}


def program_runner(bundle, sessions):
    from vla_accel.backends.program import NumpyOps, ProgramRunner

    return ProgramRunner(bundle.spec, sessions, NumpyOps(), timed=False)


def program_outputs(runner, batches: Sequence[Mapping[str, np.ndarray]], first_call: int = 0) -> np.ndarray:
    return np.concatenate([runner.run(batch, first_call + i)[0] for i, batch in enumerate(batches)])


def program_noise(runner, batches: Sequence[Mapping[str, np.ndarray]], first_call: int = 0) -> np.ndarray:
    """The seeded start noise of each call (what ``program_outputs`` integrated from)."""
    return np.concatenate([runner.start_noise(batch, next(iter(batch.values())).shape[0], first_call + i)
                           for i, batch in enumerate(batches)])


def program_error(bundle, sessions, batches: Sequence[Mapping[str, np.ndarray]], first_call: int = 10_000,
                  expected: np.ndarray | None = None) -> dict[str, float]:
    """max / mean |Δa| and correlation of the int8 program's action chunks against the fp32 torch
    program's, same inputs, same seeded noise per call. For flow matching and diffusion also the
    same statistics of the chunk's displacement from its start noise (``displacement_*``): the
    chunk is noise plus what the step graph integrated, so the chunk's correlation is high whatever
    the step graph does; the displacement's is not."""
    from vla_accel.models.int8_export import error_stats

    reference = torch_program_runner(bundle)
    if expected is None:
        expected = program_outputs(reference, batches, first_call)
    runner = program_runner(bundle, sessions)
    actual = program_outputs(runner, batches, first_call)
    stats = error_stats(actual, expected)
    if bundle.spec.program.kind in ("flow_matching", "diffusion"):
        noise = program_noise(reference, batches, first_call)
        moved = error_stats(actual - noise, expected - noise)
        stats.update({f"displacement_{k}": v for k, v in moved.items()})
        stats["displacement_range"] = float(np.abs(expected - noise).max())
    return stats
