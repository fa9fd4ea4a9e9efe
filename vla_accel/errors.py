"""Every error vla_accel raises on purpose.

Each one carries a short machine-readable ``reason`` (used as the drop-reason key in metrics and
diagnostics) and a human message that says what is wrong and, where it applies, how to fix it.
"""
from __future__ import annotations


class VlaAccelError(Exception):
    """Base class: ``reason`` is a stable snake_case key, ``str(err)`` is the actionable message."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class SpecError(VlaAccelError):
    """A model spec (YAML) is missing, malformed or inconsistent."""

    reason = "bad_spec"


class ModelFileError(VlaAccelError):
    """A model or weights file is missing, unreadable, corrupt or does not match its spec."""

    reason = "bad_model_file"


class InputError(VlaAccelError):
    """An observation cannot be turned into model inputs; the frame is dropped and counted."""

    reason = "bad_input"


class ImageError(InputError):
    """A camera frame is malformed: reason is one of unknown_encoding, step_mismatch,
    size_mismatch, truncated, corrupt_compressed, empty_image, missing_camera."""

    reason = "bad_image"


class InstructionError(InputError):
    """An instruction is empty, too long or not valid UTF-8: reason is one of
    empty_instruction, instruction_too_long, instruction_not_utf8, missing_instruction."""

    reason = "bad_instruction"


class StateError(InputError):
    """A robot state vector has the wrong size or non-finite values."""

    reason = "bad_state"


class BackendError(VlaAccelError):
    """A backend failed to load or failed while running."""

    reason = "backend_error"


class BackendUnavailableError(BackendError):
    """The runtime library or the hardware a backend needs is not present.

    ``missing`` names the absent pieces; the message says how to install them.
    """

    reason = "backend_unavailable"

    def __init__(self, backend: str, missing: list[str] | tuple[str, ...], hint: str):
        self.backend = backend
        self.missing = tuple(missing)
        self.hint = hint
        super().__init__(
            f"backend '{backend}' cannot run here: missing {', '.join(self.missing)}. {hint}"
        )


class UnknownBackendError(BackendError, KeyError):
    """A backend name that the registry does not know; the message lists the valid names."""

    reason = "unknown_backend"

    def __init__(self, name: str, valid: list[str] | tuple[str, ...]):
        self.name = name
        self.valid = tuple(valid)
        VlaAccelError.__init__(
            self, f"unknown backend '{name}'; valid backends: {', '.join(self.valid)}"
        )

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class ConfigError(VlaAccelError, ValueError):
    """A runtime configuration value (node parameter, CLI option or YAML key) is invalid."""

    reason = "bad_config"


class LoopStateError(VlaAccelError, RuntimeError):
    """The inference loop cannot do what was asked in its current state (e.g. restart while a thread
    of its last run is still inside a backend call)."""

    reason = "loop_busy"


class UnknownCameraError(SpecError, KeyError):
    """A camera name the model spec does not have; the message lists the spec's cameras."""

    reason = "unknown_camera"

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class RobotDescriptionError(VlaAccelError):
    """The robot description (URDF) cannot be used for joint limits: not XML, no <robot>, a joint with
    a malformed <limit>, or a joint the output names that the URDF lacks. The message says which."""

    reason = "bad_robot_description"


class ExecutionError(VlaAccelError):
    """Chunk execution cannot be set up as asked (e.g. a joint trajectory from an end-effector action
    space, or joint names that do not match the action's dimensions)."""

    reason = "bad_execution_setup"


class GraphContractError(ModelFileError):
    """A model file does not match its spec (checked at load): a graph input the spec does not feed,
    a dtype or shape mismatch, or an output name the graph lacks."""

    reason = "spec_mismatch"


class UnknownGraphError(SpecError, KeyError):
    """A graph name the policy program does not have; the message lists the program's graphs."""

    reason = "unknown_graph"

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class ImportFailedError(VlaAccelError):
    """A checkpoint from another framework cannot be imported: reason is one of lerobot_missing,
    not_a_checkpoint, unsupported_policy, unsupported_norm, unsupported_camera, missing_stats,
    missing_fps, out_exists, export_failed."""

    reason = "import_failed"


class ParityError(VlaAccelError):
    """An imported policy's actions through vla_accel differ from the source framework's by more than
    the tolerance (or cannot be compared): nothing is published."""

    reason = "parity_failed"
