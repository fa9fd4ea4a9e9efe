"""The VLA node's parameters: one table shared by the node, the launch file, config/*.yaml and tests.

``PARAMETERS`` declares every parameter once (type, default, description, range or choices, and
whether it is read-only: things that need a reload, such as the model or the backend, cannot change
while running). ``node_parameters(overrides)`` returns the full, validated set as a plain dict (what
the launch file passes and what tests check), ``validate(name, value)`` returns the reason a value is
rejected (the node's on-set callback uses it), and ``declare_all(node)`` declares them on an rclpy
node with ParameterDescriptors (ranges, read_only, descriptions) for ``ros2 param describe``.

No rclpy at import: only ``declare_all`` touches it.
"""
from __future__ import annotations

import array
import math
from dataclasses import dataclass
from typing import Any, Mapping

from vla_accel.backends.base import PRECISIONS
from vla_accel.core.execution import EXECUTION_MODES
from vla_accel.core.rtc import RTC_SCHEDULES
from vla_accel.core.buffers import MEMORY_STRATEGIES
from vla_accel.core.streaming import STREAM_MODES
from vla_accel.errors import ConfigError
from vla_accel.runtime.config import BASELINE_MODES, RuntimeConfig, parse_backend_extra
from vla_accel.runtime.config import CAMERA_TRANSPORTS as TRANSPORTS
from vla_accel.runtime.conversions import FIRST_ACTION_TYPES
from vla_accel.runtime.conversions import STOP_POLICIES as STALE_POLICIES

# Option lists owned by the ROS layer; the others come from the modules that use them.
QOS_PROFILES = ("sensor_data", "reliable")
EXECUTORS = ("events", "single_threaded")


class ParameterError(ConfigError):
    """A node parameter (launch argument, YAML key or live `ros2 param set`) is invalid."""

    reason = "bad_parameter"


@dataclass(frozen=True)
class ParameterDef:
    """One declared parameter. ``kind``: str | int | float | bool | str_list | float_list."""

    name: str
    kind: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    read_only: bool = False


def _p(name, kind, default, description, **kw) -> ParameterDef:
    return ParameterDef(name, kind, default, description, **kw)


PARAMETERS: tuple[ParameterDef, ...] = (
    # --- model and backend (need a reload: read-only) -------------------------------------------
    _p("model", "str", "tiny-vision", "model name (tiny-vision: camera + instruction; tiny, tiny-2cam, base: also "
       "joint states; policy programs: tiny-flow, base-flow, tiny-diffusion, tiny-ar) or path to a model spec YAML",
       read_only=True),
    _p("backend", "str", "torch",
       "backend to run (torch = CPU baseline, onnxruntime, openvino, cuda, tensorrt, edgetpu, litert-gpu, "
       "hexagon, qnn, npu, opencl, triton = a policy server, ...) or 'auto'", read_only=True),
    _p("fallback", "str_list", [], "backends tried in order when the backend cannot load or fails while "
       "running; end with a CPU backend", read_only=True),
    _p("fallback_recover_s", "float", 0.0, "after a fallback, try the preferred backend again every this many "
       "seconds and switch back when it loads (e.g. a Triton server that is back); 0 = stay on the fallback",
       low=0.0, high=3600.0, read_only=True),
    _p("fallback_standby", "bool", False, "keep the next fallback backend loaded in the background, so a switch "
       "(e.g. a policy server that stops answering) does not wait for it to load", read_only=True),
    _p("triton_url", "str", "localhost:8001", "backend triton: the policy server's gRPC host:port", read_only=True),
    _p("triton_model", "str", "", "backend triton: Triton model name (empty = <model>_graph)", read_only=True),
    _p("triton_timeout_s", "float", 1.0, "backend triton: per-request deadline; past it the fallback runs the frame",
       low=0.001, high=60.0, read_only=True),
    _p("triton_ssl", "bool", False, "backend triton: TLS to the server (root_certificates etc. via backend_extra)",
       read_only=True),
    _p("device", "str", "", "runtime device (empty = the backend's default: CPU, cuda:0, NPU, ...)", read_only=True),
    _p("precision", "str", "fp32", "inference precision", choices=PRECISIONS, read_only=True),
    _p("threads", "int", 0, "intra-op CPU threads (0 = runtime default)", low=0, high=256, read_only=True),
    _p("delegate_path", "str", "", "LiteRT delegate library (libedgetpu.so.1, libQnnTFLiteDelegate.so, ...)",
       read_only=True),
    _p("backend_extra", "str", "", "extra backend options as a YAML/JSON mapping, e.g. '{dla_core: 0}'",
       read_only=True),
    _p("cache_dir", "str", "", "export / engine cache folder (empty = VLA_ACCEL_CACHE or ~/.cache/vla_accel)",
       read_only=True),
    _p("parity_check", "bool", True, "at load, run the model's golden input on the backend and compare with the "
       "fp32 reference at the precision's tolerance; a failure moves to the next fallback", read_only=True),
    _p("warmup_iterations", "int", 3, "warm-up inferences before accepting frames", low=0, high=100, read_only=True),
    # --- inputs ---------------------------------------------------------------------------------
    _p("camera_topics", "str_list", ["/camera/image_raw"],
       "one image topic per model camera, in the model spec's camera order", read_only=True),
    _p("camera_transports", "str_list", ["raw"],
       "per camera: raw (sensor_msgs/Image) or compressed (sensor_msgs/CompressedImage on <topic>/compressed); "
       "one entry applies to every camera", read_only=True),
    _p("instruction_topic", "str", "/vla/instruction", "std_msgs/String instruction topic (latest kept)",
       read_only=True),
    _p("instruction", "str", "", "instruction used until one arrives on instruction_topic (empty = wait)"),
    _p("joint_states_topic", "str", "/joint_states",
       "sensor_msgs/JointState topic for models with a state input (ignored otherwise)", read_only=True),
    _p("input_qos", "str", "sensor_data", "QoS of image and joint-state subscriptions", choices=QOS_PROFILES,
       read_only=True),
    # --- outputs --------------------------------------------------------------------------------
    _p("action_chunk_topic", "str", "/vla/action_chunk", "vla_accel/ActionChunk output", read_only=True),
    _p("action_topic", "str", "/vla/action", "first action of each chunk as a standard controller message",
       read_only=True),
    _p("first_action_type", "str", "auto", "auto (twist for eef_delta/eef_velocity, float64_array otherwise), "
       "twist (geometry_msgs/TwistStamped), float64_array (std_msgs/Float64MultiArray) or none",
       choices=FIRST_ACTION_TYPES, read_only=True),
    _p("stats_topic", "str", "/vla/stats", "vla_accel/InferenceStats output", read_only=True),
    _p("dry_run", "bool", False, "run the model and publish chunks and stats, but nothing on action_topic"),
    _p("action_clip_low", "float_list", [], "per-dimension lower clip bound (empty = the model spec's)"),
    _p("action_clip_high", "float_list", [], "per-dimension upper clip bound (empty = the model spec's)"),
    _p("stats_period_s", "float", 1.0, "InferenceStats and /diagnostics period", low=0.05, high=60.0,
       read_only=True),
    # --- timing and safety ----------------------------------------------------------------------
    _p("target_latency_ms", "float", 0.0, "latency goal: p99 above it turns diagnostics WARN (0 = none)",
       low=0.0, high=60000.0),
    _p("min_input_rate_hz", "float", 0.0, "input rate below it turns diagnostics WARN (0 = none)",
       low=0.0, high=1000.0),
    _p("stale_image_timeout_s", "float", 1.0, "no frame for this long: inputs are stale (STALE diagnostics, "
       "on_stale action); also the oldest a secondary camera frame or joint state may be when attached",
       low=0.01, high=3600.0),
    _p("drop_warn_ratio", "float", 0.5, "share of frames dropped over the diagnostics window (superseded ones "
       "not counted) above which inference turns WARN, naming the top reason (0 = never)", low=0.0, high=1.0),
    _p("stall_error_s", "float", 5.0, "frames arriving with none processed for this long turns inference ERROR, "
       "naming the top drop reason (0 = never)", low=0.0, high=3600.0),
    _p("max_image_bytes", "int", 64 * 1024 * 1024, "frames whose data is larger are dropped as image_too_large "
       "before they are decoded or kept (default 64 MiB: far above any model input; a 4K rgb8 frame is 25 MB)",
       low=1024, high=2**31 - 1, read_only=True),
    _p("jpeg_reduced_decode", "bool", False, "decode JPEG (CompressedImage) frames in the DCT domain at the largest "
       "power-of-two reduction (1/2, 1/4, 1/8) that still covers the model input, instead of at full size: "
       "faster (a 640x480 frame for a 128x128 input decodes at 320x240), but pixel values differ slightly "
       "from full decode + resize (max |action| change 3.3e-4 on the sample bag, above the 1e-4 fp32 parity "
       "tolerance, hence off by default); /diagnostics shows the setting and the frames per decode path",
       read_only=True),
    _p("stale_instruction_timeout_s", "float", 0.0, "instruction older than this is stale (0 = never)",
       low=0.0, high=86400.0),
    _p("on_stale", "str", "hold", "published once when inputs go stale: hold, zero or none",
       choices=STALE_POLICIES),
    _p("on_shutdown", "str", "hold", "published when the node stops: hold, zero or none", choices=STALE_POLICIES),
    _p("speedup_baseline", "str", "measure", "CPU baseline for the speedup figure: measure (torch CPU at start), "
       "cache (calibration file, measured once), none", choices=BASELINE_MODES, read_only=True),
    # --- scheduling (InferenceLoop) ---------------------------------------------------------------
    _p("batch_size", "int", 1, "largest micro-batch", low=1, high=64, read_only=True),
    _p("max_batch_delay_ms", "float", 0.0, "longest wait to fill a batch", low=0.0, high=1000.0, read_only=True),
    _p("adaptive_batch", "bool", False, "shrink the batch when latency exceeds target_latency_ms", read_only=True),
    _p("memory", "str", "static", "input buffer strategy", choices=MEMORY_STRATEGIES, read_only=True),
    _p("pipeline", "bool", False, "overlap preprocessing of the next batch with inference", read_only=True),
    _p("executor", "str", "events", "rclpy executor of the node's callbacks: events (rclpy.experimental."
       "EventsExecutor, Jazzy and newer; falls back to single_threaded where absent) or single_threaded "
       "(rebuilds its wait set in Python after every callback, holding the GIL while the inference worker "
       "wants it: ~0.2 ms more node overhead per frame)", choices=EXECUTORS, read_only=True),
    # --- control-rate output ----------------------------------------------------------------------
    _p("stream_actions", "bool", False, "publish actions at control_rate_hz from the chunks (ActionStreamer) "
       "instead of the first action of each chunk", read_only=True),
    _p("streaming_mode", "str", "latest", "how overlapping chunks combine", choices=STREAM_MODES, read_only=True),
    _p("control_rate_hz", "float", 0.0, "action output rate with stream_actions (0 = 1 / the spec's dt)",
       low=0.0, high=1000.0, read_only=True),
    # --- chunk execution (vla_accel.core.execution; docs/execution.md) ---------------------------
    _p("async_execution", "bool", False, "execute chunks asynchronously: infer the next chunk while the current "
       "one runs (execution_threshold), skip the steps the inference delay left in the past, join chunks with "
       "execution_mode; the control-rate output (stream_actions) samples the executed chunks", read_only=True),
    _p("execution_mode", "str", "naive", "how a new chunk takes over: naive (hard switch), ensemble, blend, rtc "
       "(real-time chunking: frozen prefix + guidance / blending)", choices=EXECUTION_MODES, read_only=True),
    _p("execution_threshold", "float", 0.5, "start the next inference when this share of the chunk is left "
       "(earlier when the measured delay needs it)", low=0.0, high=1.0, read_only=True),
    _p("rtc_schedule", "str", "exp", "RTC weights over the overlap after the frozen prefix",
       choices=RTC_SCHEDULES, read_only=True),
    _p("rtc_max_guidance", "float", 5.0, "RTC guidance weight cap (flow-matching programs)", low=0.0, high=100.0,
       read_only=True),
    _p("jump_warn_threshold", "float", 0.0, "a chunk switch jumping more than this (action units) turns the "
       "execution diagnostics WARN (0 = never)", low=0.0, high=1e6),
    _p("joint_trajectory_topic", "str", "", "publish each chunk as trajectory_msgs/JointTrajectory here (e.g. "
       "/joint_trajectory_controller/joint_trajectory; empty = off); joint action spaces only", read_only=True),
    _p("trajectory_joint_names", "str_list", [], "controller joint name per action dimension (empty = the "
       "spec's action names)", read_only=True),
    _p("trajectory_lead_s", "float", 0.0, "only points at least this far ahead of publishing are sent "
       "(transport delay to the controller)", low=0.0, high=10.0, read_only=True),
    _p("robot_description", "str", "", "URDF text: joint position / velocity limits applied to what is "
       "published (clipped values counted on diagnostics); a malformed URDF fails configure", read_only=True),
    _p("robot_description_topic", "str", "", "when robot_description is empty: read the URDF from this "
       "std_msgs/String topic (transient local, e.g. /robot_description); nothing reaches the robot until a valid "
       "one arrived", read_only=True),
)
BY_NAME: dict[str, ParameterDef] = {p.name: p for p in PARAMETERS}

# Launch arguments of launch/vla_accel.launch.py -> the parameter each one sets (None: launch-only).
LAUNCH_ARGUMENTS: dict[str, str | None] = {
    "backend": "backend",
    "model": "model",
    "camera_topic": "camera_topics",
    "instruction_topic": "instruction_topic",
    "params_file": None,
    "namespace": None,
}


def _type_ok(pdef: ParameterDef, value: Any) -> bool:
    if pdef.kind == "str":
        return isinstance(value, str)
    if pdef.kind == "bool":
        return isinstance(value, bool)
    if pdef.kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if pdef.kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if pdef.kind == "str_list":
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    if pdef.kind == "float_list":
        return isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return False


def validate(name: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for parameter ``name``, or None when it is."""
    pdef = BY_NAME.get(name)
    if pdef is None:
        return f"unknown parameter '{name}'; known: {', '.join(sorted(BY_NAME))}"
    if not _type_ok(pdef, value):
        return f"'{name}' must be {pdef.kind}, got {type(value).__name__} {value!r}"
    if pdef.choices and value not in pdef.choices:
        return f"'{name}' must be one of {', '.join(pdef.choices)}, got {value!r}"
    if pdef.kind in ("int", "float"):
        if not math.isfinite(value):
            return f"'{name}' must be finite, got {value!r}"
        if pdef.low is not None and value < pdef.low or pdef.high is not None and value > pdef.high:
            return f"'{name}' must be in [{pdef.low:g}, {pdef.high:g}], got {value!r}"
    if pdef.kind == "float_list" and not all(math.isfinite(v) for v in value):
        return f"'{name}' values must be finite, got {list(value)!r}"
    if name in ("backend", "fallback"):
        return _validate_backends(name, [value] if isinstance(value, str) else list(value))
    if name == "camera_topics":
        if not value or any(not t.strip() for t in value):
            return "'camera_topics' needs at least one non-empty topic"
    if name == "camera_transports":
        bad = [t for t in value if t not in TRANSPORTS]
        if not value or bad:
            return f"'camera_transports' entries must be one of {', '.join(TRANSPORTS)}, got {list(value)!r}"
    if name == "model" and not value.strip():
        return "'model' must name a model (tiny, base, ...) or a spec YAML path"
    if name == "backend_extra" and value.strip():
        try:
            parse_backend_extra(value)
        except ConfigError as exc:
            return str(exc)
    return None


def _validate_backends(name: str, names: list[str]) -> str | None:
    from vla_accel.backends.registry import canonical_name
    from vla_accel.errors import UnknownBackendError

    for backend in names:
        if name == "backend" and backend == "auto":
            continue
        try:
            canonical_name(backend)
        except UnknownBackendError as exc:
            return f"'{name}': {exc}"
    return None


def node_parameters(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every parameter with its default, ``overrides`` applied and validated (ParameterError lists all
    problems). Integers given for float parameters become floats, as ROS would need them."""
    values = {p.name: (list(p.default) if isinstance(p.default, list) else p.default) for p in PARAMETERS}
    problems = []
    for name, value in (overrides or {}).items():
        pdef = BY_NAME.get(name)
        if pdef is not None and pdef.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if pdef is not None and pdef.kind == "float_list" and isinstance(value, (list, tuple)):
            value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        reason = validate(name, value)
        if reason:
            problems.append(reason)
        else:
            values[name] = list(value) if isinstance(value, tuple) else value
    problems += cross_check(values)
    if problems:
        raise ParameterError("invalid node parameters: " + "; ".join(problems))
    return values


def runtime_config(values: Mapping[str, Any]) -> RuntimeConfig:
    """The runtime's typed configuration from the node's (validated) parameter values."""
    return RuntimeConfig.from_values(values)


def cross_check(values: Mapping[str, Any]) -> list[str]:
    """Problems that involve several parameters."""
    problems = []
    low, high = values.get("action_clip_low") or [], values.get("action_clip_high") or []
    if bool(low) != bool(high):
        problems.append("action_clip_low and action_clip_high must be given together")
    elif low and (len(low) != len(high) or any(h < l for l, h in zip(low, high))):
        problems.append("action_clip_low / action_clip_high must have equal lengths and high >= low")
    return problems


def stage_changes(current: Mapping[str, Any], changes: list[tuple[str, Any]],
                  running: bool) -> tuple[dict[str, Any] | None, str]:
    """Validate live changes (the node's on-set callback): (new values, "") or (None, reason).
    While ``running``, read-only parameters are refused (their descriptors say so too)."""
    staged = dict(current)
    for name, value in changes:
        if isinstance(value, (tuple, array.array)):
            value = list(value)
        pdef = BY_NAME.get(name)
        if pdef is not None and pdef.read_only and running:
            return None, f"'{name}' is read-only while running (restart the node to change it)"
        reason = validate(name, value)
        if reason:
            return None, reason
        staged[name] = value
    problems = cross_check(staged)
    if problems:
        return None, "; ".join(problems)
    return staged, ""


def load_params_file(path: str, node_name: str = "vla_node") -> dict[str, Any]:
    """Read a ROS 2 parameters YAML (``<node>: {ros__parameters: {...}}``, ``/**`` wildcard accepted)."""
    import yaml
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ParameterError(f"{path}: expected a mapping of node names to ros__parameters")
    merged: dict[str, Any] = {}
    for key in ("/**", node_name, f"/{node_name}"):
        section = data.get(key)
        if isinstance(section, dict):
            merged.update(section.get("ros__parameters") or {})
    if not merged:
        raise ParameterError(f"{path}: no '{node_name}: ros__parameters:' (or '/**') section")
    return merged


# --- rclpy ------------------------------------------------------------------------------------------
def declare_all(node: Any, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Declare every parameter on ``node`` with a ParameterDescriptor; returns the current values.

    ``overrides`` replace defaults (command-line and params-file values still win: rclpy applies
    them at declaration). Raises ParameterError when the resulting set is invalid.
    """
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
    from rclpy.exceptions import ParameterUninitializedException
    from rclpy.parameter import Parameter

    ros_types = {
        "str": (ParameterType.PARAMETER_STRING, Parameter.Type.STRING),
        "int": (ParameterType.PARAMETER_INTEGER, Parameter.Type.INTEGER),
        "float": (ParameterType.PARAMETER_DOUBLE, Parameter.Type.DOUBLE),
        "bool": (ParameterType.PARAMETER_BOOL, Parameter.Type.BOOL),
        "str_list": (ParameterType.PARAMETER_STRING_ARRAY, Parameter.Type.STRING_ARRAY),
        "float_list": (ParameterType.PARAMETER_DOUBLE_ARRAY, Parameter.Type.DOUBLE_ARRAY),
    }
    defaults = dict(overrides or {})
    for pdef in PARAMETERS:
        msg_type, param_type = ros_types[pdef.kind]
        description = pdef.description
        if pdef.choices:
            description += f" (one of: {', '.join(pdef.choices)})"
        descriptor = ParameterDescriptor(
            name=pdef.name, type=msg_type, description=description, read_only=pdef.read_only,
            additional_constraints=f"one of: {', '.join(pdef.choices)}" if pdef.choices else "",
        )
        if pdef.kind == "int" and pdef.low is not None:
            descriptor.integer_range = [IntegerRange(from_value=int(pdef.low), to_value=int(pdef.high), step=0)]
        if pdef.kind == "float" and pdef.low is not None:
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(pdef.low), to_value=float(pdef.high), step=0.0)]
        default = defaults.get(pdef.name, pdef.default)
        if isinstance(default, list) and not default:
            # rclpy infers an empty list as a byte array (then [0.1, ...] is refused as a type mismatch):
            # declare the type alone; unset reads back as the empty default below.
            node.declare_parameter(pdef.name, param_type, descriptor)
        else:
            node.declare_parameter(pdef.name, default, descriptor)
    current = {}
    for pdef in PARAMETERS:
        try:
            value = node.get_parameter(pdef.name).value
        except ParameterUninitializedException:
            value = []
        current[pdef.name] = list(value) if isinstance(value, (list, tuple, array.array)) else value
    return node_parameters(current)
