"""Policy programs: what a model is when it is more than one forward pass.

A ``ProgramSpec`` (the ``program`` mapping of a model spec) names the kind of loop, the graphs it
runs and which tensors flow between them, by name:

* ``single_pass``: one graph, observation -> action chunk (the default; every older spec is one);
* ``flow_matching``: a prefix graph once per observation (vision-language features / KV cache), then
  a step graph N times integrating noise into actions: ``x <- x + (t_next - t) * v(x, t, prefix)``
  with t going from ``t_start`` to ``t_end`` (pi0 / SmolVLA: 1 -> 0 and v = noise - action, so
  ``x_{t-dt} = x_t - dt * v``; GR00T: 0 -> 1 and v = action - noise);
* ``diffusion``: a step graph K times under a DDPM or DDIM schedule whose coefficients come from the
  spec (fresh noise per DDPM step), optionally after a prefix graph computing the conditioning;
* ``autoregressive``: a prefix graph returning the first logits and a KV cache, then a next-token
  graph N-1 times feeding its ``present`` cache back as ``past``; greedy tokens are mapped to
  continuous values through bin edges (OpenVLA).
An unrolled export (one graph with the noise as an input) is a ``single_pass`` program whose graph
reads the runtime-generated ``noise``.

Runtime-generated inputs: ``noise`` (seeded per call: ``call_noise(seed, call, shape)``, so a test or
a replay reproduces a run exactly), the loop variable, the time / timestep and the step index.

This module is pure (numpy only): the spec dataclasses, their validation and the loop arithmetic
(time grids, schedules and their coefficients, bins -> values, observation history). Running the
graphs is the backends' job (``vla_accel.backends.program``), which applies these numbers with plain
arithmetic operators, so the same code updates numpy arrays on the host or torch tensors on a device.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from vla_accel.errors import SpecError, UnknownGraphError

PROGRAM_KINDS = ("single_pass", "flow_matching", "diffusion", "autoregressive")
DIFFUSION_SCHEDULERS = ("ddpm", "ddim")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTIONS = ("epsilon", "sample")
TENSOR_DTYPES = ("float32", "float16", "int32", "int64", "bool", "uint8")
# Names of runtime-generated tensors a graph may read (besides observation inputs and the outputs of
# graphs that ran before it); the spec may rename them (``ProgramSpec.sample`` etc.).
RUNTIME_ROLES = ("noise", "sample", "time", "step_index", "token", "position")


def _int(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _num(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{what} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class GraphSpec:
    """One graph of a program. ``inputs`` / ``outputs`` are tensor names; ``file`` the model file of a
    user export (relative to the spec), empty for reference networks; ``batch`` 0 = dynamic, else the
    fixed batch the graph was exported with (the runtime splits or pads batches to fit it);
    ``dtypes`` optionally declares inputs' dtypes (checked against the graph at load)."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    file: str = ""
    batch: int = 0
    dtypes: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.name:
            raise SpecError("every program graph needs a name")
        if not self.outputs:
            raise SpecError(f"program graph '{self.name}' needs at least one output name")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 0:
            raise SpecError(f"program graph '{self.name}' batch must be 0 (dynamic) or a positive integer")
        for key, value in self.dtypes.items():
            if value not in TENSOR_DTYPES:
                raise SpecError(f"program graph '{self.name}' dtype of '{key}' must be one of "
                                f"{', '.join(TENSOR_DTYPES)}; got {value!r}")


TIME_FEATURE_KINDS = ("sinusoidal",)
SINUSOIDAL_MAX_PERIOD = 10000.0


@dataclass(frozen=True)
class TimeFeaturesSpec:
    """Time features the runtime computes for the step graph's time input, in place of the raw time.

    ``sinusoidal``: for the time value v fed today (the flow time times ``time_scale``, or the
    diffusion timestep), the graph receives ``[sin(v * scale * f), cos(v * scale * f)]`` (B, dim)
    float32 with the ``dim / 2`` frequencies ``f_k = SINUSOIDAL_MAX_PERIOD ** (-k / (dim / 2))``
    (``sinusoidal_frequencies``). The graph then holds no trigonometry and its time input lies in
    [-1, 1], which integer accelerators quantise well (angles up to 1000 rad on one 8-bit grid do not)."""

    kind: str = "sinusoidal"
    dim: int = 0
    scale: float = 1.0

    def validate(self, what: str) -> None:
        if self.kind not in TIME_FEATURE_KINDS:
            raise SpecError(f"{what} time_features kind must be one of {', '.join(TIME_FEATURE_KINDS)}; "
                            f"got {self.kind!r}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 2 or self.dim % 2:
            raise SpecError(f"{what} time_features dim must be an even integer >= 2 (sin and cos halves); "
                            f"got {self.dim!r}")
        if not _num(self.scale, f"{what} time_features scale") > 0:
            raise SpecError(f"{what} time_features scale must be > 0; got {self.scale!r}")


def _time_features(value: Any, what: str) -> TimeFeaturesSpec | None:
    if value is None or isinstance(value, TimeFeaturesSpec):
        return value
    if not isinstance(value, Mapping):
        raise SpecError(f"{what} time_features must be a mapping such as {{kind: sinusoidal, dim: 128, "
                        f"scale: 1000.0}}; got {value!r}")
    fields = set(TimeFeaturesSpec.__dataclass_fields__)
    bad = set(value) - fields
    if bad:
        raise SpecError(f"unknown {what} time_features keys {sorted(bad)}; allowed: {sorted(fields)}")
    if "dim" not in value:
        raise SpecError(f"{what} time_features needs 'dim': the width of the features the step graph takes")
    return TimeFeaturesSpec(**value)


def sinusoidal_exponents(dim: int) -> np.ndarray:
    """The ``dim // 2`` log-frequencies of sinusoidal time features, float32: ``f_k = exp(e_k)``. The one
    definition every path uses: the runtime's features (``time_features``) and the reference network's
    in-graph embedding of a raw t (torch exponentiates these same values)."""
    half = dim // 2
    return np.arange(half, dtype=np.float32) * np.float32(-math.log(SINUSOIDAL_MAX_PERIOD) / half)


def sinusoidal_frequencies(dim: int) -> np.ndarray:
    return np.exp(sinusoidal_exponents(dim))


def time_features(t: Any, spec: TimeFeaturesSpec) -> np.ndarray:
    """(B,) time values (or a scalar) -> (B, dim) float32 ``[sin(t * scale * f), cos(t * scale * f)]``.
    The angles are formed in float64, so large angles (t * scale ~ 1000 rad) lose no precision."""
    values = np.atleast_1d(np.asarray(t, dtype=np.float64)).reshape(-1, 1)
    angles = values * float(spec.scale) * sinusoidal_frequencies(spec.dim).astype(np.float64).reshape(1, -1)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1).astype(np.float32)


@dataclass(frozen=True)
class FlowSpec:
    """Flow matching: ``x <- x + (t_next - t) * v`` on the grid t_start -> t_end in ``steps`` steps.
    ``time_scale`` multiplies t before it is fed (GR00T feeds t * 1000 discretised: time_dtype int64).
    ``time_features``: when set, the time input receives features of the scaled t computed by the
    runtime (``TimeFeaturesSpec``), not t itself; absent (the default), t as it is."""

    t_start: float = 1.0
    t_end: float = 0.0
    time_scale: float = 1.0
    time_dtype: str = "float32"
    time_features: TimeFeaturesSpec | None = None

    def __post_init__(self):
        object.__setattr__(self, "time_features", _time_features(self.time_features, "flow"))

    def validate(self) -> None:
        _num(self.t_start, "flow t_start")
        _num(self.t_end, "flow t_end")
        _num(self.time_scale, "flow time_scale")
        if self.t_start == self.t_end:
            raise SpecError("flow t_start and t_end must differ")
        if self.time_dtype not in ("float32", "int64"):
            raise SpecError(f"flow time_dtype must be float32 or int64, got {self.time_dtype!r}")
        if self.time_features is not None:
            self.time_features.validate("flow")


@dataclass(frozen=True)
class DiffusionSpec:
    """DDPM / DDIM with a beta schedule over ``train_steps``; ``prediction`` what the step graph returns."""

    scheduler: str = "ddim"
    train_steps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: str = "epsilon"
    clip_sample: float = 0.0  # > 0: clip the predicted clean sample to [-c, c] (Diffusion Policy: 1.0)
    time_dtype: str = "int64"
    time_features: TimeFeaturesSpec | None = None  # as FlowSpec's: features of the timestep, not it

    def __post_init__(self):
        object.__setattr__(self, "time_features", _time_features(self.time_features, "diffusion"))

    def validate(self) -> None:
        if self.scheduler not in DIFFUSION_SCHEDULERS:
            raise SpecError(f"diffusion scheduler must be one of {', '.join(DIFFUSION_SCHEDULERS)}")
        _int(self.train_steps, "diffusion train_steps", 2)
        if self.beta_schedule not in BETA_SCHEDULES:
            raise SpecError(f"diffusion beta_schedule must be one of {', '.join(BETA_SCHEDULES)}")
        if not 0 < _num(self.beta_start, "beta_start") < _num(self.beta_end, "beta_end") < 1:
            raise SpecError("diffusion needs 0 < beta_start < beta_end < 1")
        if self.prediction not in PREDICTIONS:
            raise SpecError(f"diffusion prediction must be one of {', '.join(PREDICTIONS)}")
        if _num(self.clip_sample, "clip_sample") < 0:
            raise SpecError("diffusion clip_sample must be >= 0")
        if self.time_dtype not in ("float32", "int64"):
            raise SpecError(f"diffusion time_dtype must be float32 or int64, got {self.time_dtype!r}")
        if self.time_features is not None:
            self.time_features.validate("diffusion")


@dataclass(frozen=True)
class TokenSpec:
    """Autoregressive decoding: ``tokens`` tokens (default: action steps x dims), greedy; a token id maps
    to bin ``id - token_offset`` (or ``token_offset - id`` when ``reverse``, as OpenVLA counts down from
    the vocabulary end), clipped to the centres of ``bins`` edges spaced evenly over [low, high]."""

    bins: int = 256
    low: float = -1.0
    high: float = 1.0
    token_offset: int = 0
    reverse: bool = False
    tokens: int = 0
    logits: str = "logits"
    cache: Mapping[str, str] = field(default_factory=dict)  # present output name -> past input name

    def validate(self) -> None:
        _int(self.bins, "autoregressive bins", 2)
        if not _num(self.low, "bins low") < _num(self.high, "bins high"):
            raise SpecError("autoregressive bins need low < high")
        _int(self.token_offset, "autoregressive token_offset", 0)
        _int(self.tokens, "autoregressive tokens", 0)

    def centres(self) -> np.ndarray:
        edges = np.linspace(self.low, self.high, self.bins, dtype=np.float64)
        return ((edges[:-1] + edges[1:]) / 2.0).astype(np.float32)


@dataclass(frozen=True)
class HistorySpec:
    """Observation history: the last ``frames`` values of input ``input`` stacked on a new axis 1
    (oldest first; the first call repeats the current value), fed as ``input``."""

    input: str
    frames: int = 2


@dataclass(frozen=True)
class ProgramSpec:
    kind: str = "single_pass"
    steps: int = 1
    graphs: tuple[GraphSpec, ...] = ()
    sample: str = "x_t"  # the loop variable's input name in the step graph
    time: str = "t"  # the time / timestep input name
    step_index: str = ""  # optional: the step index input name
    noise: str = "noise"  # the runtime-generated noise (an input of an unrolled graph, or the loop start)
    prediction: str = ""  # the step graph's output read by the loop (velocity / epsilon / logits)
    seed: int = 0  # noise seed; call c of a run draws from (seed, c)
    flow: FlowSpec = field(default_factory=FlowSpec)
    diffusion: DiffusionSpec = field(default_factory=DiffusionSpec)
    tokens: TokenSpec = field(default_factory=TokenSpec)
    history: tuple[HistorySpec, ...] = ()

    @property
    def is_single_pass(self) -> bool:
        return self.kind == "single_pass"

    def graph(self, name: str) -> GraphSpec:
        for graph in self.graphs:
            if graph.name == name:
                return graph
        raise UnknownGraphError(f"no graph '{name}' in the program; graphs: {[g.name for g in self.graphs]}")

    @property
    def prefix(self) -> GraphSpec | None:
        return self.graphs[0] if len(self.graphs) == 2 else None

    @property
    def step(self) -> GraphSpec:
        return self.graphs[-1]

    @property
    def step_time_features(self) -> TimeFeaturesSpec | None:
        """The loop's time features (flow or diffusion section), None where the time input takes the
        raw time / timestep."""
        if self.kind == "flow_matching":
            return self.flow.time_features
        if self.kind == "diffusion":
            return self.diffusion.time_features
        return None

    def time_feed(self, value: float, batch: int) -> np.ndarray:
        """What the time input receives for time ``value`` (already multiplied by ``time_scale``) at
        ``batch``: (B,) of the declared time dtype, or (B, dim) float32 time features."""
        features = self.step_time_features
        if features is not None:
            return np.repeat(time_features(value, features), batch, axis=0)
        dtype = self.flow.time_dtype if self.kind == "flow_matching" else self.diffusion.time_dtype
        return np.full((batch,), value, dtype=dtype)

    def runtime_inputs(self) -> tuple[str, ...]:
        names = [self.noise]
        if self.kind in ("flow_matching", "diffusion"):
            names += [self.sample, self.time]
        if self.kind == "autoregressive":
            names += ["token", "position", *self.tokens.cache.values()]
        if self.step_index:
            names.append(self.step_index)
        return tuple(names)

    def validate(self, observation_inputs: Sequence[str], action_output: str) -> None:
        if self.kind not in PROGRAM_KINDS:
            raise SpecError(f"program kind must be one of {', '.join(PROGRAM_KINDS)}; got {self.kind!r}")
        _int(self.steps, "program steps")
        _int(self.seed, "program seed", 0)
        for graph in self.graphs:
            graph.validate()
        names = [g.name for g in self.graphs]
        if len(set(names)) != len(names):
            raise SpecError(f"program graph names must be unique, got {names}")
        if self.kind == "single_pass":
            if len(self.graphs) > 1:
                raise SpecError("a single_pass program has one graph")
        elif not 1 <= len(self.graphs) <= 2:
            raise SpecError(f"a {self.kind} program has a step graph, optionally after a prefix graph "
                            f"(1 or 2 graphs); got {len(self.graphs)}")
        if self.kind == "autoregressive" and len(self.graphs) != 2:
            raise SpecError("an autoregressive program needs a prefix graph and a next-token graph")
        self.flow.validate()
        self.diffusion.validate()
        self.tokens.validate()
        if self.kind in ("flow_matching", "diffusion") and not self.prediction:
            raise SpecError(f"a {self.kind} program needs 'prediction': the step graph output the loop reads")
        # Every graph input must be fed: by an observation input, a runtime input or an earlier output.
        available = set(observation_inputs) | set(self.runtime_inputs())
        for graph in self.graphs:
            unfed = [n for n in graph.inputs if n not in available]
            if unfed:
                raise SpecError(
                    f"program graph '{graph.name}' reads {unfed}, which nothing feeds (observation inputs: "
                    f"{sorted(observation_inputs)}; runtime inputs: {list(self.runtime_inputs())}; outputs of "
                    "earlier graphs)"
                )
            available |= set(graph.outputs)
        if self.kind in ("flow_matching", "diffusion") and self.prediction not in self.step.outputs:
            raise SpecError(f"prediction '{self.prediction}' is not an output of graph '{self.step.name}'")
        if self.kind == "single_pass" and self.graphs and action_output not in self.graphs[0].outputs:
            raise SpecError(f"action output '{action_output}' is not an output of graph '{self.graphs[0].name}'")
        if self.kind == "autoregressive":
            for present, past in self.tokens.cache.items():
                if present not in self.step.outputs or present not in self.graphs[0].outputs:
                    raise SpecError(f"cache output '{present}' must be an output of both graphs")
                if past not in self.step.inputs:
                    raise SpecError(f"cache input '{past}' is not an input of graph '{self.step.name}'")


def program_from_dict(data: Mapping[str, Any] | None) -> ProgramSpec:
    """Build a ProgramSpec from the spec's ``program`` mapping (None: single_pass)."""
    if not data:
        return ProgramSpec()
    if not isinstance(data, Mapping):
        raise SpecError(f"program must be a mapping, got {data!r}")
    allowed = set(ProgramSpec.__dataclass_fields__)
    unknown = set(data) - allowed
    if unknown:
        raise SpecError(f"unknown program keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    kwargs = dict(data)

    def sub(kind: type, key: str):
        value = kwargs.get(key) or {}
        if not isinstance(value, Mapping):
            raise SpecError(f"program {key} must be a mapping")
        fields = set(kind.__dataclass_fields__)
        bad = set(value) - fields
        if bad:
            raise SpecError(f"unknown program {key} keys {sorted(bad)}; allowed: {sorted(fields)}")
        return kind(**value)

    kwargs["flow"] = sub(FlowSpec, "flow")
    kwargs["diffusion"] = sub(DiffusionSpec, "diffusion")
    kwargs["tokens"] = sub(TokenSpec, "tokens")
    graphs = []
    for g in kwargs.get("graphs") or ():
        if not isinstance(g, Mapping):
            raise SpecError(f"program graphs must be mappings, got {g!r}")
        bad = set(g) - set(GraphSpec.__dataclass_fields__)
        if bad:
            raise SpecError(f"unknown program graph keys {sorted(bad)}")
        g = dict(g)
        g["inputs"] = tuple(g.get("inputs") or ())
        g["outputs"] = tuple(g.get("outputs") or ())
        g["dtypes"] = dict(g.get("dtypes") or {})
        graphs.append(GraphSpec(**g))
    kwargs["graphs"] = tuple(graphs)
    history = []
    for h in kwargs.get("history") or ():
        if not isinstance(h, Mapping) or "input" not in h:
            raise SpecError(f"program history entries need an input name, got {h!r}")
        history.append(HistorySpec(str(h["input"]), _int(h.get("frames", 2), "history frames")))
    kwargs["history"] = tuple(history)
    return ProgramSpec(**kwargs)


# --- loop arithmetic ------------------------------------------------------------------------------
def flow_times(flow: FlowSpec, steps: int) -> np.ndarray:
    """The ``steps + 1`` times of the Euler grid, from t_start to t_end (float64)."""
    return np.linspace(flow.t_start, flow.t_end, steps + 1, dtype=np.float64)


def euler_step(x, velocity, t: float, t_next: float):
    """One explicit Euler step ``x + (t_next - t) * v``: plain operators, so numpy or torch tensors."""
    return x + velocity * float(t_next - t)


def betas(spec: DiffusionSpec) -> np.ndarray:
    n = spec.train_steps
    if spec.beta_schedule == "linear":
        return np.linspace(spec.beta_start, spec.beta_end, n, dtype=np.float64)
    if spec.beta_schedule == "scaled_linear":
        return np.linspace(spec.beta_start**0.5, spec.beta_end**0.5, n, dtype=np.float64) ** 2
    # squaredcos_cap_v2 (improved DDPM's cosine schedule, capped at 0.999)
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], dtype=np.float64)


@dataclass(frozen=True)
class DiffusionStep:
    """``x_next = c_x0 * x0 + c_x * x + c_eps * eps + sigma * z`` where x0 / eps come from the prediction:
    eps prediction -> x0 = (x - sqrt(1 - a) * eps) / sqrt(a); sample prediction -> eps from x0."""

    timestep: int
    sqrt_alpha_bar: float
    sqrt_one_minus_alpha_bar: float
    c_x0: float
    c_x: float
    c_eps: float
    sigma: float


def diffusion_steps(spec: DiffusionSpec, steps: int) -> list[DiffusionStep]:
    """The K inference steps (timesteps evenly spaced, "leading": t_k = k * train_steps // K, run from
    high to low) with their DDPM or DDIM (eta = 0) coefficients."""
    if steps > spec.train_steps:
        raise SpecError(f"diffusion steps {steps} exceed train_steps {spec.train_steps}")
    b = betas(spec)
    alpha_bar = np.cumprod(1.0 - b)
    stride = spec.train_steps // steps
    timesteps = (np.arange(steps) * stride)[::-1]
    out = []
    for t in timesteps:
        t = int(t)
        prev = t - stride
        a = float(alpha_bar[t])
        a_prev = float(alpha_bar[prev]) if prev >= 0 else 1.0
        if spec.scheduler == "ddim":
            c_x0, c_x, c_eps, sigma = math.sqrt(a_prev), 0.0, math.sqrt(1.0 - a_prev), 0.0
        else:
            alpha = a / a_prev
            beta = 1.0 - alpha
            c_x0 = math.sqrt(a_prev) * beta / (1.0 - a)
            c_x = math.sqrt(alpha) * (1.0 - a_prev) / (1.0 - a)
            c_eps = 0.0
            variance = max((1.0 - a_prev) / (1.0 - a) * beta, 1e-20)
            sigma = math.sqrt(variance) if prev >= 0 else 0.0
        out.append(DiffusionStep(t, math.sqrt(a), math.sqrt(1.0 - a), c_x0, c_x, c_eps, sigma))
    return out


def diffusion_update(x, prediction, step: DiffusionStep, spec: DiffusionSpec, noise=None, clip=None):
    """One scheduler step on numpy arrays or torch tensors (``clip(v, lo, hi)`` given for clipping)."""
    if spec.prediction == "epsilon":
        eps = prediction
        x0 = (x - eps * step.sqrt_one_minus_alpha_bar) * (1.0 / step.sqrt_alpha_bar)
    else:
        x0 = prediction
        eps = (x - x0 * step.sqrt_alpha_bar) * (1.0 / step.sqrt_one_minus_alpha_bar)
    if spec.clip_sample > 0:
        x0 = clip(x0, -spec.clip_sample, spec.clip_sample)
    out = x0 * step.c_x0
    if step.c_x:
        out = out + x * step.c_x
    if step.c_eps:
        out = out + eps * step.c_eps
    if step.sigma and noise is not None:
        out = out + noise * step.sigma
    return out


def tokens_to_values(tokens: np.ndarray, spec: TokenSpec) -> np.ndarray:
    """Token ids -> continuous values at their bins' centres (float32, same shape)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    index = (spec.token_offset - tokens) if spec.reverse else (tokens - spec.token_offset)
    centres = spec.centres()
    return centres[np.clip(index, 0, len(centres) - 1)]


def call_noise(seed: int, call: int, shape: tuple[int, ...], stream: int = 0) -> np.ndarray:
    """Standard normal float32 noise for call ``call`` (and ``stream``: 0 the start sample, k >= 1 the
    k-th fresh draw of a DDPM loop) of a program seeded with ``seed``: reproducible across backends,
    runs and machines with the same numpy."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(call), int(stream)])))
    return rng.standard_normal(shape, dtype=np.float32)


class HistoryStack:
    """The last ``frames`` values of one input per stream, stacked oldest first on axis 1."""

    def __init__(self, frames: int):
        self.frames = int(frames)
        self._values: dict[Any, deque] = {}

    def push(self, key: Any, value: np.ndarray) -> np.ndarray:
        value = np.array(value, copy=True)  # callers reuse their input buffers
        queue = self._values.get(key)
        if queue is None:
            queue = self._values[key] = deque([value] * self.frames, maxlen=self.frames)
        else:
            queue.append(value)
        return np.stack(list(queue), axis=0)

    def reset(self) -> None:
        self._values.clear()
