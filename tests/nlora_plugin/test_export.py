"""Export to plain LoRA: exact, loadable by stock PEFT without importing nlora_plugin."""

import json
import subprocess
import sys

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file

from nlora_plugin import NLoraConfig, export_lora

from .conftest import tiny_llama
from .test_peft_integration import perturb_trainable

STOCK_PEFT_LOAD = """
import sys, torch
from peft import PeftModel
sys.path.insert(0, {tests_dir!r})
from conftest import tiny_llama
assert "nlora_plugin" not in sys.modules
model = PeftModel.from_pretrained(tiny_llama(), {adapter!r})
assert "nlora_plugin" not in sys.modules, "stock PEFT must not need the plugin"
ids = torch.load({ids!r})
torch.save(model(ids).logits, {out!r})
"""


def load_with_stock_peft(tmp_path, adapter_dir, input_ids) -> torch.Tensor:
    torch.save(input_ids, tmp_path / "ids.pt")
    script = STOCK_PEFT_LOAD.format(
        tests_dir=str(__import__("pathlib").Path(__file__).parent),
        adapter=str(adapter_dir),
        ids=str(tmp_path / "ids.pt"),
        out=str(tmp_path / "logits.pt"),
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=600, capture_output=True)
    return torch.load(tmp_path / "logits.pt")


@pytest.mark.parametrize(
    "options,expected_rank",
    [({}, 8), ({"train_only_intermediate": True}, 8), ({"residual": True, "nystrom_core": "optimal"}, 16)],
)
def test_exported_lora_loads_with_stock_peft_and_matches(tmp_path, input_ids, options, expected_rank):
    model = get_peft_model(tiny_llama(), NLoraConfig(r=8, lora_alpha=8, target_modules="all-linear", **options))
    perturb_trainable(model)
    expected = model(input_ids).logits
    out = export_lora(model, tmp_path / "lora")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == expected_rank
    assert config["lora_alpha"] / config["r"] == 1.0  # the scale alpha / r is kept
    assert not any("lora_N" in key for key in load_file(out / "adapter_model.safetensors"))
    logits = load_with_stock_peft(tmp_path, out, input_ids)
    assert torch.allclose(logits, expected, atol=1e-5)


def test_export_refuses_to_overwrite_without_permission(tmp_path):
    model = get_peft_model(tiny_llama(), NLoraConfig(r=4, target_modules=["q_proj"]))
    target = tmp_path / "lora"
    export_lora(model, target)
    with pytest.raises(FileExistsError, match="overwrite"):
        export_lora(model, target)
    export_lora(model, target, overwrite=True)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in target.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["lora"]  # no staging or backup folder left behind


def test_a_crash_during_export_leaves_no_folder(tmp_path, monkeypatch):
    model = get_peft_model(tiny_llama(), NLoraConfig(r=4, target_modules=["q_proj"]))

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("nlora_plugin.export.save_file", crash)
    with pytest.raises(RuntimeError):
        export_lora(model, tmp_path / "lora")
    assert list(tmp_path.iterdir()) == []


def test_exported_folder_has_ordinary_permissions(tmp_path):
    model = get_peft_model(tiny_llama(), NLoraConfig(r=4, target_modules=["q_proj"]))
    out = export_lora(model, tmp_path / "lora")
    umask = __import__("os").umask(0)
    __import__("os").umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
