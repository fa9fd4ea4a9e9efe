"""``.pt2`` policy programs: a ``torch.export`` program that needs no Python model code, optionally
compiled ahead of time with AOTInductor.

``export_pt2(bundle, precision=...)`` traces the reference network (in its GPU layout: fused attention,
aligned token count, patch embedding as a GEMM) with a dynamic batch dimension and saves the
ExportedProgram (``torch.export.save``: graph + weights, device-independent). ``load_program(path,
device)`` loads it on any device (``move_to_device_pass`` rewrites the device the graph was traced
on) and returns a callable that the ``cuda`` backend captures into a CUDA graph like its own module.

``export_pt2(..., aoti_device="cuda")`` additionally compiles the program with AOTInductor into a
package of kernels plus weights for one device type (``torch._inductor.aoti_compile_and_package``);
``load_program`` recognises such a package and loads it with ``aoti_load_package``, checked first
in a child process because native code that fails to load can crash or hang its process.

The calling convention is the spec's: positional inputs in ``spec.input_names`` order (images
float32 NCHW per camera, token ids int32, token mask float32, [state float32]) and one output, the
normalised action chunk (B, steps, dims) float32. The precision is baked in: weights are cast before
tracing and inputs are cast inside the program. Exports are cached like every other format
(``ModelBundle.export_dir``), per precision and torch version (and device type for AOTInductor).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vla_accel.errors import ModelFileError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.models.bundle import ModelBundle

PT2_DEVICES = ("cpu", "cuda")
PT2_PRECISIONS = ("fp32", "fp16", "bf16")
# The largest batch a package is traced for (its batch dimension is dynamic from 1 to this).
PT2_MAX_BATCH = 256


def pt2_dir(bundle: "ModelBundle", precision: str, aoti_device: str = "") -> Path:
    import torch

    version = torch.__version__.replace("+", "_")
    kind = f"pt2-aoti-{aoti_device}" if aoti_device else "pt2"
    return bundle.export_dir(f"{kind}-torch{version}", precision)


def export_pt2(bundle: "ModelBundle", *, precision: str = "fp32", aoti_device: str = "", progress: bool = True,
               force: bool = False) -> Path:
    """Export the reference network of ``bundle`` as a torch.export program (cached); with
    ``aoti_device`` (cpu | cuda) as an AOTInductor package for that device type. Returns its path."""
    from vla_accel.models.progress import ExportProgress
    from vla_accel.models.publish import publish_directory

    aoti_device = (aoti_device or "").split(":")[0]
    if aoti_device and aoti_device not in PT2_DEVICES:
        raise ModelFileError(f"pt2 export: AOTInductor device must be one of {', '.join(PT2_DEVICES)}, "
                             f"got {aoti_device!r}", reason="bad_option")
    if precision not in PT2_PRECISIONS:
        raise ModelFileError(f"pt2 export supports precision {', '.join(PT2_PRECISIONS)}; got {precision!r}",
                             reason="bad_precision")
    if not bundle.has_torch_network:
        if bundle.spec.format == "pt2":
            return bundle.model_file
        raise ModelFileError(
            f"model '{bundle.name}' is a {bundle.spec.format} file; pt2 export needs the torch network "
            "(a reference model, or a policy imported as a torch module)",
            reason="conversion_unavailable",
        )
    import torch

    final_dir = pt2_dir(bundle, precision, aoti_device)
    target = final_dir / "model.pt2"
    if target.is_file() and not force:
        return target
    if aoti_device == "cuda" and not torch.cuda.is_available():
        raise ModelFileError(
            f"an AOTInductor package for cuda needs a CUDA build of torch and a GPU (torch {torch.__version__} "
            "sees none): export the device-independent program (no AOTInductor device) here, or compile on the "
            "GPU machine",
            reason="conversion_unavailable",
        )
    label = f"{bundle.name} pt2{'-aoti-' + aoti_device if aoti_device else ''} {precision}"
    report = ExportProgress(label, progress)
    trace_device = aoti_device or "cpu"
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    module = bundle.torch_module(trace_device, dtype if precision != "fp32" else None).use_gpu_layout()
    from vla_accel.core.spec import example_inputs

    # Batch 2 as the example: a batch-1 example would let the tracer specialise the batch to 1.
    example = example_inputs(bundle.spec, 2, seed=0)
    args = tuple(torch.from_numpy(example[name]).to(trace_device) for name in bundle.spec.input_names)
    batch = torch.export.Dim("batch", min=1, max=PT2_MAX_BATCH)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".tmp-pt2-", dir=final_dir.parent))
    try:
        report.stage("torch.export (dynamic batch)")
        with torch.inference_mode(False), torch.no_grad():
            program = torch.export.export(module, args, dynamic_shapes=(tuple({0: batch} for _ in args),))
        if aoti_device:
            report.stage(f"AOTInductor compile for {aoti_device} (a minute or more)")
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_dir / "model.pt2"))
        else:
            torch.export.save(program, str(tmp_dir / "model.pt2"))
        if final_dir.exists():
            shutil.rmtree(final_dir)
        publish_directory(tmp_dir, final_dir)
    except Exception as exc:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"pt2 export of '{bundle.name}' failed: {type(exc).__name__}: {exc}",
                             reason="export_failed") from exc
    report.stage(f"done: {target}")
    return target


def is_aoti_package(path: str | Path) -> bool:
    """True for an AOTInductor package (compiled kernels), False for a torch.export program."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any("/data/aotinductor/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{path} is not a pt2 archive ({exc})", reason="bad_model_file") from exc


def load_program(path: str | Path, device: str = "cpu", *, single_threaded: bool = False,
                 check: bool = True) -> Callable[..., Any]:
    """A callable ``program(*inputs) -> output`` on ``device`` from either kind of ``.pt2``."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"pt2 file {path} does not exist", reason="missing_file")
    if is_aoti_package(path):
        return load_pt2(path, device, single_threaded=single_threaded, check=check)
    import torch
    from torch.export.passes import move_to_device_pass

    try:
        program = torch.export.load(str(path))
        program = move_to_device_pass(program, device)
        return program.module()
    except Exception as exc:
        raise ModelFileError(f"cannot load the torch.export program {path} on {device} with torch "
                             f"{torch.__version__}: {type(exc).__name__}: {exc}", reason="bad_model_file") from exc


_CHECK_TIMEOUT_S = 90.0


def check_pt2_loads(path: str | Path, device: str = "cpu", *, single_threaded: bool = False,
                    timeout_s: float = _CHECK_TIMEOUT_S) -> None:
    """Load the package once in a child process. An AOTInductor package is native code: one built
    for another torch build or device can crash or hang the process that loads it. A crash or hang
    in the child becomes a ModelFileError here instead of taking the caller down."""
    import subprocess
    import sys

    code = ("import sys, faulthandler, torch; faulthandler.enable(); "
            "torch._inductor.aoti_load_package(sys.argv[1], run_single_threaded=sys.argv[2] == '1', "
            "device_index=int(sys.argv[3])); print('pt2 loads')")
    args = [sys.executable, "-c", code, str(path), "1" if single_threaded else "0", str(_device_index(device))]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise ModelFileError(f"loading pt2 package {path} on {device} did not finish in {timeout_s:.0f} s "
                             "(checked in a child process)", reason="bad_model_file") from exc
    if done.returncode != 0 or "pt2 loads" not in done.stdout:
        how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit code {done.returncode}"
        raise ModelFileError(
            f"loading pt2 package {path} on {device} failed in a child process ({how}): "
            f"{(done.stderr or done.stdout).strip()[-800:]}",
            reason="bad_model_file",
        )


def _device_index(device: str) -> int:
    if not device.startswith("cuda"):
        return -1
    _, _, index = device.partition(":")
    return int(index) if index else 0


def load_pt2(path: str | Path, device: str = "cpu", *, single_threaded: bool = False,
             check: bool = False) -> Callable[..., Any]:
    """Load an AOTInductor package; ``single_threaded`` drops the runner's own locking (needed when
    its calls are captured into a CUDA graph, where the caller serialises calls itself); ``check``
    loads it in a child process first (``check_pt2_loads``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"pt2 package {path} does not exist", reason="missing_file")
    if check:
        check_pt2_loads(path, device, single_threaded=single_threaded)
    try:
        return torch._inductor.aoti_load_package(str(path), run_single_threaded=single_threaded,
                                                 device_index=_device_index(device))
    except Exception as exc:  # a package for another device / torch build fails inside the loader
        raise ModelFileError(
            f"cannot load pt2 package {path} on {device} with torch {torch.__version__}: {type(exc).__name__}: "
            f"{exc} (an AOTInductor package runs on the device type and torch build it was compiled for)",
            reason="bad_model_file",
        ) from exc
