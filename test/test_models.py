"""Reference models: specs, deterministic weights, weights/model-file errors, the torch network, export."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from vla_accel.backends.base import example_inputs
from vla_accel.core.spec import ModelSpec
from vla_accel.errors import ModelFileError, SpecError
from vla_accel.models import SPECS_DIR, builtin_models, load_model
from vla_accel.models.architecture import (
    NetworkConfig,
    count_parameters,
    flops_breakdown,
    flops_per_inference,
    parameter_shapes,
)
from vla_accel.models.weights import generate_weights, load_weights, save_weights, tensor_digest


def _spec_dict(name: str = "tiny") -> dict:
    return yaml.safe_load((SPECS_DIR / f"{name}.yaml").read_text())


def _write_spec(folder: Path, data: dict, filename: str = "model.yaml") -> Path:
    path = folder / filename
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- specs -----------------------------------------------------------------------------------------
def test_builtin_models_are_listed_and_load():
    assert builtin_models() == ["base", "base-flow", "tiny", "tiny-2cam", "tiny-ar", "tiny-diffusion", "tiny-flow"]
    tiny = load_model("tiny")
    assert [c.name for c in tiny.spec.cameras] == ["primary"]
    assert tiny.spec.state is not None and tiny.spec.state.dims == 8
    assert (tiny.spec.action.steps, tiny.spec.action.dims) == (10, 7)
    assert tiny.spec.action.mask[-1] is False  # the gripper is not un-normalised
    assert [c.name for c in load_model("tiny-2cam").spec.cameras] == ["primary", "wrist"]
    assert load_model("base").spec.instruction.max_tokens == 64


def test_spec_yaml_round_trip(tmp_path):
    spec = load_model("tiny").spec
    path = spec.to_yaml(tmp_path / "copy.yaml")
    again = ModelSpec.from_yaml(path)
    assert again.to_dict() == spec.to_dict()
    assert again.input_names == ("image_primary", "tokens", "token_mask", "state")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(colour="red"), "unknown model spec keys"),
        (lambda d: d["architecture"].update(heads=3), "divisible by heads"),
        (lambda d: d["architecture"].update(depth=0), "depth must be a positive integer"),
        (lambda d: d["architecture"].update(dropout=0.1), "unknown architecture keys"),
        (lambda d: d["cameras"][0].update(height=100), "multiple of patch_size"),
        (lambda d: d["action"].update(names=["x"]), "action names has 1 entries"),
        (lambda d: d.update(format="pickle"), "format must be one of"),
    ],
)
def test_bad_specs_raise_spec_error(tmp_path, mutate, message):
    data = _spec_dict()
    mutate(data)
    path = _write_spec(tmp_path, data)
    with pytest.raises(SpecError, match=message):
        bundle = load_model(path, cache_dir=tmp_path)
        bundle.network_config  # architecture errors surface when the network is first needed


def test_unknown_model_name_lists_builtins():
    with pytest.raises(SpecError, match="tiny-2cam"):
        load_model("no-such-model")


def test_invalid_yaml_is_a_spec_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_model(path)


# --- architecture: parameters and FLOPs ------------------------------------------------------------
def test_flops_and_parameters_match_hand_count():
    config = NetworkConfig.from_spec(load_model("tiny").spec)
    d, h, n, layers = 256, 1024, 64 + 32 + 1 + 10, 4
    per_layer = 2 * n * d * 3 * d + 2 * n * d * d + 2 * 2 * n * n * d + 2 * 2 * n * d * h
    expected = 2 * 64 * 3 * 16 * 16 * d + 2 * 8 * d + layers * per_layer + 2 * 10 * d * 7
    assert flops_per_inference(config) == expected
    assert flops_per_inference(config, batch=4) == 4 * expected
    assert set(flops_breakdown(config)) >= {"patch_embed", "attention_scores", "mlp"}
    assert 0.5e9 <= expected <= 2e9  # "comfortable on 2 CPU cores"
    base = NetworkConfig.from_spec(load_model("base").spec)
    assert 80e6 <= count_parameters(base) <= 95e6  # Octo-base scale


def test_torch_module_matches_the_weights_contract(tiny_bundle):
    from vla_accel.models.network import count_parameters as module_parameters

    module = tiny_bundle.torch_module()
    shapes = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    assert shapes == parameter_shapes(tiny_bundle.network_config)
    assert module_parameters(module) == count_parameters(tiny_bundle.network_config)
    assert not module.training


# --- the torch network's behaviour -----------------------------------------------------------------
def _run(module, spec, inputs):
    import torch

    with torch.inference_mode():
        return module(*[torch.from_numpy(inputs[n]) for n in spec.input_names]).numpy()


def test_forward_shape_range_and_batch_independence(tiny_bundle):
    module = tiny_bundle.torch_module()
    spec = tiny_bundle.spec
    inputs = example_inputs(spec, batch=3, seed=11)
    out = _run(module, spec, inputs)
    assert out.shape == (3, 10, 7) and out.dtype == np.float32
    assert np.all(np.abs(out) <= 1.0)
    single = _run(module, spec, {k: v[1:2] for k, v in inputs.items()})
    np.testing.assert_allclose(single[0], out[1], atol=1e-5)
    # different observations give different actions (the network is not input-blind)
    assert np.abs(out[0] - out[2]).max() > 1e-3


def test_padded_tokens_do_not_change_actions(tiny_bundle):
    module = tiny_bundle.torch_module()
    spec = tiny_bundle.spec
    inputs = example_inputs(spec, batch=1, seed=5)
    inputs["tokens"][:] = 0
    inputs["token_mask"][:] = 0
    inputs["tokens"][0, :6] = [1, 108, 105, 102, 116, 2]
    inputs["token_mask"][0, :6] = 1
    before = _run(module, spec, inputs)
    garbage = dict(inputs)
    garbage["tokens"] = inputs["tokens"].copy()
    garbage["tokens"][0, 6:] = np.arange(6, 32) + 50  # junk behind the mask
    np.testing.assert_allclose(_run(module, spec, garbage), before, atol=1e-6)
    changed = dict(inputs)
    changed["tokens"] = inputs["tokens"].copy()
    changed["tokens"][0, 2] = 200  # a real (unmasked) token does matter
    assert np.abs(_run(module, spec, changed) - before).max() > 1e-4


def test_torch_module_in_bfloat16_returns_float32(tiny_bundle):
    import torch

    module = tiny_bundle.torch_module(dtype=torch.bfloat16)
    out = _run(module, tiny_bundle.spec, example_inputs(tiny_bundle.spec, batch=1, seed=2))
    ref = _run(tiny_bundle.torch_module(), tiny_bundle.spec, example_inputs(tiny_bundle.spec, batch=1, seed=2))
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() < 5e-2


# --- deterministic weights ---------------------------------------------------------------------------
def test_same_seed_same_weights_and_hash(tmp_path, tiny_bundle):
    config = tiny_bundle.network_config
    assert tensor_digest(generate_weights(config)) == tensor_digest(generate_weights(config))
    other = NetworkConfig(**{**config.__dict__, "seed": config.seed + 1})
    assert tensor_digest(generate_weights(other)) != tensor_digest(generate_weights(config))
    # generated independently in a fresh cache: identical tensors, same content hash
    fresh = load_model("tiny", cache_dir=tmp_path)
    assert fresh.content_hash() == tiny_bundle.content_hash()
    _, fresh_digest = load_weights(fresh.weights_file, config)
    _, cached_digest = load_weights(tiny_bundle.ensure_weights(), config)
    assert fresh_digest == cached_digest


def _user_weights_spec(tmp_path: Path, tiny_bundle) -> Path:
    weights = tmp_path / "weights.safetensors"
    shutil.copyfile(tiny_bundle.ensure_weights(), weights)
    data = _spec_dict()
    data["name"] = "my-robot"
    data["weights"] = "weights.safetensors"
    return _write_spec(tmp_path, data)


def test_user_safetensors_weights_load(tmp_path, tiny_bundle):
    bundle = load_model(_user_weights_spec(tmp_path, tiny_bundle), cache_dir=tmp_path)
    assert bundle.name == "my-robot" and not bundle.generated_weights
    inputs = example_inputs(bundle.spec, batch=1, seed=0)
    np.testing.assert_array_equal(_run(bundle.torch_module(), bundle.spec, inputs),
                                  _run(tiny_bundle.torch_module(), tiny_bundle.spec, inputs))


def test_missing_weights_file(tmp_path, tiny_bundle):
    path = _user_weights_spec(tmp_path, tiny_bundle)
    (tmp_path / "weights.safetensors").unlink()
    with pytest.raises(ModelFileError, match="weights file not found"):
        load_model(path, cache_dir=tmp_path).torch_module()


def test_truncated_weights_file(tmp_path, tiny_bundle):
    path = _user_weights_spec(tmp_path, tiny_bundle)
    weights = tmp_path / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="weights.safetensors") as info:
        load_model(path, cache_dir=tmp_path).torch_module()
    assert info.value.reason == "corrupt_weights"


def test_bit_flipped_weights_are_detected(tmp_path, tiny_bundle):
    path = _user_weights_spec(tmp_path, tiny_bundle)
    weights = tmp_path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1000] ^= 0x40  # inside the tensor data, header intact
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupt") as info:
        load_model(path, cache_dir=tmp_path).torch_module()
    assert info.value.reason == "corrupt_weights"


def test_corrupt_generated_weights_say_how_to_regenerate(tmp_path):
    bundle = load_model("tiny", cache_dir=tmp_path)
    weights = bundle.ensure_weights()
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFileError, match="Delete .* regenerated"):
        load_model("tiny", cache_dir=tmp_path).torch_module()
    weights.unlink()
    assert load_model("tiny", cache_dir=tmp_path).torch_module() is not None  # regenerated


def test_weights_of_another_architecture_are_rejected(tmp_path):
    config = NetworkConfig.from_spec(load_model("tiny-2cam").spec)
    path = tmp_path / "other.safetensors"
    save_weights(path, generate_weights(config), config)
    tiny_config = NetworkConfig.from_spec(load_model("tiny").spec)
    with pytest.raises(ModelFileError, match="does not match the architecture"):
        load_weights(path, tiny_config)


# --- user model files -------------------------------------------------------------------------------
def _onnx_spec(tmp_path: Path, tiny_bundle, suffix: str = ".onnx") -> Path:
    onnx_file = tmp_path / f"policy{suffix}"
    shutil.copyfile(tiny_bundle.export("onnx", progress=False), onnx_file)
    data = _spec_dict()
    data.update(name="my-onnx", format="onnx", weights=onnx_file.name)
    data.pop("architecture")
    return _write_spec(tmp_path, data)


def test_user_onnx_model_file(tmp_path, tiny_bundle):
    bundle = load_model(_onnx_spec(tmp_path, tiny_bundle), cache_dir=tmp_path)
    assert bundle.model_file == tmp_path / "policy.onnx"
    assert bundle.export("onnx") == bundle.model_file
    xml = bundle.export("openvino", progress=False)  # onnx -> OpenVINO is a real conversion
    assert xml.suffix == ".xml" and xml.with_suffix(".bin").stat().st_size > 1_000_000
    quantised = bundle.export("onnx", precision="int8", progress=False)  # quantised from the user's file
    assert quantised != bundle.model_file and quantised.stat().st_size < bundle.model_file.stat().st_size / 2
    with pytest.raises(ModelFileError, match="onnx -> tflite is not available"):
        bundle.export("tflite")
    with pytest.raises(ModelFileError, match="no reference torch network"):
        bundle.torch_module()


def test_user_model_file_missing_or_wrong_kind(tmp_path, tiny_bundle):
    path = _onnx_spec(tmp_path, tiny_bundle)
    (tmp_path / "policy.onnx").unlink()
    with pytest.raises(ModelFileError, match="model file not found"):
        load_model(path, cache_dir=tmp_path).model_file
    path = _onnx_spec(tmp_path, tiny_bundle, suffix=".bin")
    with pytest.raises(ModelFileError, match="does not look like a onnx model"):
        load_model(path, cache_dir=tmp_path).model_file


# --- export cache -------------------------------------------------------------------------------------
def test_export_is_cached_and_ignores_a_killed_export(tmp_path, capsys):
    bundle = load_model("tiny", cache_dir=tmp_path)
    final_dir = bundle.export_dir("onnx", "fp32")
    # what a killed export leaves behind: a temp folder with a partial file, never the final folder
    leftover = final_dir.parent / ".onnx-fp32.killed"
    leftover.mkdir(parents=True)
    (leftover / "model.onnx").write_bytes(b"partial")
    path = bundle.export("onnx", progress=True)
    assert path == final_dir / "model.onnx" and path.stat().st_size > 1_000_000
    assert "exporting to ONNX" in capsys.readouterr().err
    mtime = path.stat().st_mtime_ns
    assert load_model("tiny", cache_dir=tmp_path).export("onnx", progress=False) == path
    assert path.stat().st_mtime_ns == mtime  # served from the cache
    assert not [p for p in final_dir.parent.iterdir() if p.name.startswith(".onnx-fp32.") and p != leftover]


def test_export_rejects_unknown_format_and_precision(tiny_bundle):
    with pytest.raises(ModelFileError, match="unknown export format"):
        tiny_bundle.export("caffe")
    with pytest.raises(ModelFileError, match="onnx export supports precision fp32, int8"):
        tiny_bundle.export("onnx", precision="fp16")


# --- commands ------------------------------------------------------------------------------------------
def test_info_command_prints_parameters_and_flops(capsys):
    from vla_accel.cli import main

    assert main(["info", "--model", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 3,454,215" in out
    assert "GFLOP" in out and "spec:" in out and "image_primary" in out


def test_export_command(capsys):
    from vla_accel.cli import main

    assert main(["export", "--model", "tiny", "--format", "onnx,openvino", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "model.onnx" in out and "model.xml" in out
    assert main(["export", "--model", "tiny", "--format", "caffe"]) == 1


def test_corrupt_user_onnx_file(tmp_path, tiny_bundle):
    path = _onnx_spec(tmp_path, tiny_bundle)
    (tmp_path / "policy.onnx").write_bytes(b"\x08\x07garbage" * 64)
    bundle = load_model(path, cache_dir=tmp_path)
    with pytest.raises(ModelFileError, match="corrupt"):
        bundle.export("openvino", progress=False)
    from vla_accel.backends.base import module_available
    from vla_accel.backends.registry import create_backend

    if not module_available("onnxruntime"):
        pytest.skip("onnxruntime missing: onnxruntime; install with pip install onnxruntime")
    with pytest.raises(ModelFileError, match="corrupt or invalid"):
        create_backend("onnxruntime", bundle).load()


def test_export_repairs_a_damaged_cache_entry(tmp_path):
    bundle = load_model("tiny", cache_dir=tmp_path)
    xml = bundle.export("openvino", progress=False)
    xml.with_suffix(".bin").unlink()
    again = load_model("tiny", cache_dir=tmp_path).export("openvino", progress=False)
    assert again == xml and xml.with_suffix(".bin").stat().st_size > 1_000_000
