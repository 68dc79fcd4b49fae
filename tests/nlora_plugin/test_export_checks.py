"""Broken adapters are never presented as good: NaN/Inf fail `export-lora`/`merge` and leave no folder;
a NaN/Inf base weight is refused before the Nyström init, naming the layer."""

from __future__ import annotations

import os

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file, save_file

from nlora_plugin import NLoraConfig
from nlora_plugin.export import NonFiniteWeights, export_lora

from .conftest import tiny_llama
from .test_cli import base_dir, run_cli, save_adapter  # noqa: F401 - base_dir is a fixture

BAD_VALUES = {"nan": float("nan"), "inf": float("inf")}


def _broken_adapter(tmp_path, value: float):
    """A saved NLoRA adapter with one entry of one lora_N set to `value`."""
    adapter = tmp_path / "adapter"
    save_adapter(adapter, NLoraConfig(r=4, lora_alpha=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in sorted(tensors) if "lora_N" in k)
    tensors[key][0, 0] = value
    save_file(tensors, weights)
    return adapter, key


@pytest.mark.parametrize("value", sorted(BAD_VALUES))
@pytest.mark.parametrize("command", ["export-lora", "merge"])
def test_non_finite_adapter_fails_and_leaves_no_output(tmp_path, capsys, base_dir, command, value):  # noqa: F811
    adapter, key = _broken_adapter(tmp_path, BAD_VALUES[value])
    output = tmp_path / "out"
    code, out, err = run_cli(capsys, command, "--base", base_dir, "--adapter", adapter, "--output", output)
    assert code == 1, (out, err)
    assert "FAILED" in err and "NaN or Inf" in err and key.split(".lora_N")[0].split("model.", 1)[-1] in err
    assert "passed" not in out
    assert sorted(os.listdir(tmp_path)) == ["adapter"]


def test_failed_check_keeps_an_existing_folder_unchanged(tmp_path, capsys, base_dir):  # noqa: F811
    adapter, _ = _broken_adapter(tmp_path, float("nan"))
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("previous result")
    code, _, err = run_cli(capsys, "export-lora", "--base", base_dir, "--adapter", adapter, "--output", output,
                           "--overwrite")
    assert code == 1 and "unchanged" in err
    assert os.listdir(output) == ["keep.txt"]


def test_a_failing_verify_or_non_finite_tensors_leave_no_folder(tmp_path):
    """export_lora publishes the folder only after `verify` passed, and never writes NaN tensors."""
    model = get_peft_model(tiny_llama(), NLoraConfig(r=4, target_modules=["q_proj"]))

    def verify(staging):
        raise RuntimeError("check failed")

    with pytest.raises(RuntimeError):
        export_lora(model, tmp_path / "lora", verify=verify)
    assert not (tmp_path / "lora").exists() and os.listdir(tmp_path) == []
    with torch.no_grad():
        model.base_model.model.model.layers[0].self_attn.q_proj.lora_N["default"].weight[1, 1] = float("nan")
    with pytest.raises(NonFiniteWeights, match="q_proj.lora_N"):
        export_lora(model, tmp_path / "lora")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value", sorted(BAD_VALUES))
@pytest.mark.parametrize("options", [{}, {"nystrom_index": "pivoted", "nystrom_core": "optimal"},
                                     {"nystrom_core": "pinv", "residual": True}], ids=["default", "pivoted", "pinv"])
def test_non_finite_base_weight_is_refused_before_init_naming_the_layer(value, options):
    base = tiny_llama()
    with torch.no_grad():
        base.model.layers[1].mlp.down_proj.weight[3, 5] = BAD_VALUES[value]
    with pytest.raises(ValueError, match=r"layers\.1\.mlp\.down_proj.*1 NaN/Inf value"):
        get_peft_model(base, NLoraConfig(r=4, target_modules="all-linear", **options))
