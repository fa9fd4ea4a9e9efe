#!/usr/bin/env python3
"""Per-tensor int8 sensitivity of a built-in model in action units (vla_accel.models.quant_report),
torch only: ranges from generated calibration scenes, losses on other generated frames.

    .venv/bin/python scripts/quant_report_tiny.py [MODEL] [OUT.json]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    import torch

    from vla_accel.models import load_model
    from vla_accel.models.calibration_set import synthetic_calibration
    from vla_accel.models.quant_report import sensitivity

    name = argv[0] if argv else "tiny"
    out = Path(argv[1] if len(argv) > 1 else f"docs/measurements/int8_tensors_{name}.json")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    bundle = load_model(name)
    calibration = synthetic_calibration(bundle.spec, 16, batch=8)
    evaluation = synthetic_calibration(bundle.spec, 4, batch=4, seed=424242)
    started = time.perf_counter()
    report = sensitivity(bundle.torch_module(), bundle.spec.input_names, calibration.batches, evaluation.batches,
                         model_info={"model": name, "torch": torch.__version__,
                                     "calibration": calibration.record(),
                                     "evaluation": "4 generated frames, seed 424242"})
    report.model["seconds"] = round(time.perf_counter() - started, 1)
    report.save(out)
    print(f"{out}: all activations in int8 (torch-simulated) max |da| {report.all_activations['max_abs_action']:.4f}")
    for row in report.worst(12):
        print(f"  {row.max_abs_action:.4f}  {row.module or '-'}: {row.tensor} ({row.op}) range {row.range} "
              f"range/rms {row.range_ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
