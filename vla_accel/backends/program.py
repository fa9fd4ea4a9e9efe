"""Running policy programs on any backend, and the load-time contract check every backend shares.

A backend that runs programs gives one ``GraphSession`` per graph (``run(feeds) -> outputs``, both
keyed by tensor name, values in the backend's own tensor type) and a ``TensorOps`` for the few
operations the loop needs between graphs (upload, download, argmax, clip, synchronise). The
``ProgramRunner`` owns the loop: it feeds observation inputs, runtime inputs (noise seeded per call,
the sample, time, step index, token, position) and earlier graphs' outputs by name, and never copies
a tensor passed between graphs: a device backend's sessions return device tensors, which stay on the
device for the whole loop (only the final action chunk is downloaded).

Whole-loop hook: a backend may implement ``run_program(inputs, noise) -> actions`` itself (e.g. the
CUDA backend capturing prefix + N steps in one CUDA graph); ``ProgramRunner.run`` is then not used.
The noise it must use is the one ``ProgramRunner.start_noise`` returns for the call, so results stay
comparable with every other backend.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from vla_accel.core.program import (
    HistoryStack,
    ProgramSpec,
    call_noise,
    diffusion_steps,
    diffusion_update,
    euler_step,
    flow_times,
    tokens_to_values,
)
from vla_accel.errors import BackendError, GraphContractError

# dtypes as the runtimes spell them -> numpy names
_DTYPE_ALIASES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32",
    "tensor(bool)": "bool", "tensor(uint8)": "uint8", "tensor(double)": "float64", "tensor(int8)": "int8",
    "f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32", "boolean": "bool", "u8": "uint8",
    "i8": "int8", "f64": "float64", "bf16": "bfloat16",
}


def dtype_name(value: Any) -> str:
    text = str(value)
    if text in _DTYPE_ALIASES:
        return _DTYPE_ALIASES[text]
    try:
        return np.dtype(value).name
    except TypeError:
        return text


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int | None, ...] | None  # None entries: dynamic; None: rank unknown


@dataclass(frozen=True)
class GraphSignature:
    inputs: Mapping[str, TensorInfo]
    outputs: Mapping[str, TensorInfo]


def check_graph(backend: str, graph: str, source: Any, signature: GraphSignature,
                expected: Mapping[str, TensorInfo], outputs: tuple[str, ...]) -> None:
    """Every input of the graph is fed with the right dtype and per-sample shape, and every output the
    spec names exists; else GraphContractError naming each problem (raised at load, before any frame)."""
    problems = []
    unfed = [n for n in signature.inputs if n not in expected]
    if unfed:
        problems.append(f"graph inputs {unfed} are not fed by the spec (it feeds {sorted(expected)}); a runtime "
                        "would run on uninitialised memory")
    absent = [n for n in expected if n not in signature.inputs]
    if absent:
        problems.append(f"the spec feeds {absent}, which the graph does not have (its inputs: {sorted(signature.inputs)})")
    for name, want in expected.items():
        have = signature.inputs.get(name)
        if have is None:
            continue
        if want.dtype and have.dtype and want.dtype != have.dtype:
            problems.append(f"input '{name}' is {have.dtype} in the graph, the spec feeds {want.dtype}")
        if want.shape is not None and have.shape is not None:
            if len(have.shape) != len(want.shape) + 1:
                problems.append(f"input '{name}' has rank {len(have.shape)} in the graph, the spec feeds rank "
                                f"{len(want.shape) + 1} (batch, {', '.join(map(str, want.shape))})")
            else:
                bad = [(h, w) for h, w in zip(have.shape[1:], want.shape) if h is not None and w is not None and h != w]
                if bad:
                    problems.append(f"input '{name}' has per-sample shape {tuple(have.shape[1:])} in the graph, the "
                                    f"spec feeds {tuple(want.shape)}")
    missing = [n for n in outputs if n not in signature.outputs]
    if missing:
        problems.append(f"outputs {missing} named by the spec do not exist (graph outputs: {sorted(signature.outputs)})")
    if problems:
        raise GraphContractError(
            f"backend '{backend}': graph '{graph}' ({source}) does not match the model spec: " + "; ".join(problems))


def expected_feeds(spec, graph_inputs: tuple[str, ...], produced: Mapping[str, TensorInfo]) -> dict[str, TensorInfo]:
    """What the runtime feeds each named input of a graph: observation inputs from the spec, runtime
    inputs of the program, and outputs of earlier graphs (their dtypes as those graphs declare them)."""
    from vla_accel.core.spec import input_signature

    program: ProgramSpec = spec.program
    observed = {n: TensorInfo(dt.name, tuple(shape)) for n, (shape, dt) in input_signature(spec).items()}
    for history in program.history:  # stacked on axis 1: (batch, frames, *per-sample shape)
        if history.input in observed:
            base = observed[history.input]
            observed[history.input] = TensorInfo(base.dtype, (history.frames, *base.shape))
    steps, dims = spec.action.steps, spec.action.dims
    runtime = {program.noise: TensorInfo("float32", (steps, dims)), program.sample: TensorInfo("float32", (steps, dims))}
    time_dtype = program.flow.time_dtype if program.kind == "flow_matching" else program.diffusion.time_dtype
    features = program.step_time_features
    # time features computed by the runtime: (batch, dim) float32; else the raw time (batch,)
    runtime[program.time] = (TensorInfo("float32", (features.dim,)) if features is not None
                             else TensorInfo(time_dtype, None))
    if program.step_index:
        runtime[program.step_index] = TensorInfo("int64", None)
    if program.kind == "autoregressive":
        runtime["token"] = TensorInfo("int64", (1,))
        runtime["position"] = TensorInfo("int64", (1,))
        for present, past in program.tokens.cache.items():
            if present in produced:
                runtime[past] = TensorInfo(produced[present].dtype, None)
    out = {}
    for name in graph_inputs:
        if name in observed:
            out[name] = observed[name]
        elif name in produced:
            out[name] = TensorInfo(produced[name].dtype, None)
        elif name in runtime:
            out[name] = runtime[name]
        else:
            out[name] = TensorInfo("", None)
    return out


class GraphSession(Protocol):
    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]: ...

    def signature(self) -> GraphSignature | None: ...


class NumpyOps:
    """Host tensors: the runtimes that take and return numpy arrays (onnxruntime, OpenVINO, LiteRT)."""

    def upload(self, array: np.ndarray):
        return array

    def download(self, tensor) -> np.ndarray:
        return np.asarray(tensor)

    def argmax(self, tensor):
        return np.argmax(tensor, axis=-1).astype(np.int64).reshape(-1, 1)

    def clip(self, tensor, low: float, high: float):
        return np.clip(tensor, low, high)

    def full(self, shape, value, dtype: str, like=None):
        return np.full(shape, value, dtype=dtype)

    def synchronize(self) -> None:
        """Host work is finished when the call returns."""


@dataclass
class StageTimes:
    prefix_ms: float = 0.0
    step_ms: list[float] = field(default_factory=list)
    total_ms: float = 0.0

    def as_dict(self) -> dict[str, float]:
        steps = self.step_ms
        return {
            "prefix": self.prefix_ms,
            "step": float(np.mean(steps)) if steps else 0.0,
            "steps_total": float(np.sum(steps)) if steps else 0.0,
            "program_total": self.total_ms,
            "steps": float(len(steps)),
        }


class ProgramRunner:
    """Runs one program's loop over sessions; ``run(inputs, call) -> (actions numpy, StageTimes)``.

    ``timed``: synchronise and time each graph call (the per-stage columns); a device backend in
    production may pass False to keep the loop free of synchronisation.
    ``recompute_prefix``: run the prefix graph before every step (the baseline the prefix cache is
    measured against; results are identical)."""

    def __init__(self, spec, sessions: Mapping[str, GraphSession], ops=None, *, timed: bool = True):
        self.spec = spec
        self.program: ProgramSpec = spec.program
        self.sessions = dict(sessions)
        self.ops = ops or NumpyOps()
        self.timed = timed
        self.recompute_prefix = False
        # Real-time chunking: a core.rtc.RtcGuide applied to the next flow-matching calls (None = off). It
        # corrects each Euler step's velocity and writes the frozen prefix at the end (docs/execution.md).
        self.guide = None
        self._diffusion = diffusion_steps(self.program.diffusion, self.program.steps) \
            if self.program.kind == "diffusion" else []
        # observation history: the last k values of an input, per batch row (one stream per row)
        self._history = {h.input: HistoryStack(h.frames) for h in self.program.history}

    def _time(self, value: float, batch: int, like):
        """The time input of one step: the raw time / timestep filled on the device, or the program's
        time features of it (core.program.time_features, computed on the host and uploaded)."""
        if self.program.step_time_features is not None:
            return self.ops.upload(self.program.time_feed(value, batch))
        program = self.program
        dtype = program.flow.time_dtype if program.kind == "flow_matching" else program.diffusion.time_dtype
        return self.ops.full((batch,), value, dtype, like=like)

    def stack_history(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs with every history input replaced by its last k values, stacked on axis 1."""
        if not self._history:
            return dict(inputs)
        out = dict(inputs)
        for name, stack in self._history.items():
            rows = inputs[name]
            out[name] = np.stack([stack.push(row, rows[row]) for row in range(rows.shape[0])], axis=0)
        return out

    def reset_history(self) -> None:
        for stack in self._history.values():
            stack.reset()

    def start_noise(self, inputs: Mapping[str, np.ndarray], batch: int, call: int) -> np.ndarray:
        given = inputs.get(self.program.noise)
        if given is not None:
            return np.ascontiguousarray(given, dtype=np.float32)
        return call_noise(self.program.seed, call, (batch, self.spec.action.steps, self.spec.action.dims))

    def _call(self, graph, env: dict, times: list | None) -> dict:
        feeds = {name: env[name] for name in graph.inputs}
        t0 = time.perf_counter_ns()
        out = self.sessions[graph.name].run(feeds)
        if times is not None:
            if self.timed:
                self.ops.synchronize()
            times.append((time.perf_counter_ns() - t0) / 1e6)
        missing = [n for n in graph.outputs if n not in out]
        if missing:
            raise BackendError(f"graph '{graph.name}' returned {sorted(out)}, not {missing}", reason="missing_output")
        return out

    def run(self, inputs: Mapping[str, np.ndarray], call: int) -> tuple[np.ndarray, StageTimes]:
        program, ops = self.program, self.ops
        t_start = time.perf_counter_ns()
        batch = next(iter(inputs.values())).shape[0]
        inputs = self.stack_history(inputs)
        env: dict[str, Any] = {}
        for name, value in inputs.items():
            env[name] = ops.upload(value)
        times = StageTimes()
        noise = self.start_noise(inputs, batch, call)
        env[program.noise] = ops.upload(noise)
        prefix = program.prefix
        prefix_times: list[float] = []
        if prefix is not None and not (program.kind != "autoregressive" and self.recompute_prefix):
            env.update(self._call(prefix, env, prefix_times))
        step = program.step
        step_times: list[float] = []
        if program.kind == "single_pass":
            actions = env.get(self.spec.action.output)
            if actions is None:
                actions = self._call(step, env, step_times)[self.spec.action.output]
        elif program.kind == "flow_matching":
            grid = flow_times(program.flow, program.steps)
            x = env[program.noise]
            flow = program.flow
            for i in range(program.steps):
                if self.recompute_prefix and prefix is not None:
                    env.update(self._call(prefix, env, prefix_times))
                t = grid[i] * flow.time_scale
                env[program.sample] = x
                env[program.time] = self._time(t, batch, x)
                if program.step_index:
                    env[program.step_index] = ops.full((batch,), i, "int64", like=x)
                v = self._call(step, env, step_times)[program.prediction]
                if self.guide is not None:
                    v = self.guide.velocity(x, v, grid[i])
                x = euler_step(x, v, grid[i], grid[i + 1])
            actions = x if self.guide is None else self.guide.finish(x)
        elif program.kind == "diffusion":
            x = env[program.noise]
            spec = program.diffusion
            for i, coeffs in enumerate(self._diffusion):
                if self.recompute_prefix and prefix is not None:
                    env.update(self._call(prefix, env, prefix_times))
                env[program.sample] = x
                env[program.time] = self._time(coeffs.timestep, batch, x)
                if program.step_index:
                    env[program.step_index] = ops.full((batch,), i, "int64", like=x)
                eps = self._call(step, env, step_times)[program.prediction]
                fresh = None
                if coeffs.sigma:
                    fresh = ops.upload(call_noise(program.seed, call, tuple(noise.shape), stream=i + 1))
                x = diffusion_update(x, eps, coeffs, spec, fresh, ops.clip)
            actions = x
        else:  # autoregressive
            tokens_spec = program.tokens
            count = self.spec.action.steps * self.spec.action.dims if not tokens_spec.tokens else tokens_spec.tokens
            logits = env[tokens_spec.logits]
            chosen = []
            for i in range(count):
                token = ops.argmax(logits)
                chosen.append(ops.download(token).reshape(-1))
                if i == count - 1:
                    break
                for present, past in tokens_spec.cache.items():
                    env[past] = env[present]
                env["token"] = token
                env["position"] = ops.full((batch, 1), i + 1, "int64", like=token)
                out = self._call(step, env, step_times)
                env.update(out)
                logits = out[tokens_spec.logits]
            ids = np.stack(chosen, axis=1)
            values = tokens_to_values(ids, tokens_spec)
            actions = ops.upload(values.reshape(batch, self.spec.action.steps, self.spec.action.dims))
        host = np.asarray(ops.download(actions), dtype=np.float32)
        times.prefix_ms = float(sum(prefix_times))
        times.step_ms = step_times
        times.total_ms = (time.perf_counter_ns() - t_start) / 1e6
        return host, times


Runner = Callable[[Mapping[str, np.ndarray], int], tuple[np.ndarray, StageTimes]]
