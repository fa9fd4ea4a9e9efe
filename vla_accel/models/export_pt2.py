"""``.pt2`` policy programs: ``torch.export`` + AOTInductor packages that need no Python model code.

``export_pt2(bundle, device=..., precision=...)`` traces the reference network (in its GPU layout:
fused attention, aligned token count, patch embedding as a GEMM) with a dynamic batch dimension,
compiles it ahead of time with AOTInductor for one device type (``cpu`` or ``cuda``) and packages
kernels plus weights into one ``.pt2`` file. ``load_pt2(path, device)`` loads any such package, a
user's exported policy included, and returns a callable ``runner(*inputs) -> outputs``.

The program's calling convention is the spec's: positional inputs in ``spec.input_names`` order
(images float32 NCHW per camera, token ids int32, token mask float32, [state float32]) and one
output, the normalised action chunk (B, steps, dims) float32. The precision is baked in: weights are
cast before tracing and inputs are cast inside the program, as in the ``cuda`` backend.

Exports are cached like every other format (``ModelBundle.export_dir``), per device type, precision
and torch version: an AOTInductor package is compiled code for one torch build.
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


def _torch_dtype(torch, precision: str):
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def pt2_dir(bundle: "ModelBundle", device: str, precision: str) -> Path:
    import torch

    version = torch.__version__.replace("+", "_")
    return bundle.export_dir(f"pt2-{device}-torch{version}", precision)


def export_pt2(bundle: "ModelBundle", *, device: str = "cpu", precision: str = "fp32", progress: bool = True,
               force: bool = False) -> Path:
    """Export the reference network of ``bundle`` to an AOTInductor package (cached); returns its path."""
    from vla_accel.models.bundle import ExportProgress, publish_directory

    device_type = device.split(":")[0]
    if device_type not in PT2_DEVICES:
        raise ModelFileError(f"pt2 export: device must be one of {', '.join(PT2_DEVICES)}, got {device!r}",
                             reason="bad_option")
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

    final_dir = pt2_dir(bundle, device_type, precision)
    target = final_dir / "model.pt2"
    if target.is_file() and not force:
        return target
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ModelFileError(
            f"pt2 export for cuda needs a CUDA build of torch and a GPU (torch {torch.__version__} sees none); "
            "export with device cpu here, or run the export on the GPU machine",
            reason="conversion_unavailable",
        )
    report = ExportProgress(f"{bundle.name} pt2-{device_type} {precision}", progress)
    dtype = _torch_dtype(torch, precision)
    module = bundle.torch_module(device, dtype if precision != "fp32" else None).use_gpu_layout()
    from vla_accel.backends.base import example_inputs

    # Batch 2 as the example: a batch-1 example would let the tracer specialise the batch to 1.
    example = example_inputs(bundle.spec, 2, seed=0)
    args = tuple(torch.from_numpy(example[name]).to(device) for name in bundle.spec.input_names)
    batch = torch.export.Dim("batch", min=1, max=PT2_MAX_BATCH)
    report.stage("torch.export (dynamic batch)")
    with torch.inference_mode(False), torch.no_grad():
        program = torch.export.export(module, args, dynamic_shapes=(tuple({0: batch} for _ in args),))
    tmp_dir = Path(tempfile.mkdtemp(prefix=".tmp-pt2-", dir=final_dir.parent if final_dir.parent.exists() else None))
    try:
        report.stage(f"AOTInductor compile for {device_type} (a minute or more)")
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_dir / "model.pt2"))
        if final_dir.exists():
            shutil.rmtree(final_dir)
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        publish_directory(tmp_dir, final_dir)
    except Exception as exc:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"pt2 export of '{bundle.name}' for {device_type} failed: {type(exc).__name__}: {exc}",
                             reason="export_failed") from exc
    report.stage(f"done: {target}")
    return target


_CHECK_TIMEOUT_S = 180.0


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
