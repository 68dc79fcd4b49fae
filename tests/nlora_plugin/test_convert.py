"""PiSSA-style LoRA adapters converted to plain LoRA on the original base reproduce the trained model."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict

from nlora_plugin.convert import (
    base_rewrite,
    convert_adapter_folder,
    converted_config,
    recompute_initial_adapter,
    save_initial_adapter,
)

from .conftest import tiny_llama

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _train(model: torch.nn.Module, input_ids: torch.Tensor, steps: int = 3) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def _trained_adapter(tmp_path, init: str, input_ids: torch.Tensor, **extra):
    """Train a PiSSA-style adapter; returns (trained logits, adapter folder, step-0 folder)."""
    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(init_range=0.2), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                                 init_lora_weights=init, **extra))
    save_initial_adapter(get_peft_model_state_dict(model), model.peft_config["default"].to_dict(),
                         tmp_path / "initial")
    _train(model, input_ids)
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    model.save_pretrained(tmp_path / "adapter")
    return logits, tmp_path / "adapter", tmp_path / "initial"


def _reloaded_logits(folder, input_ids: torch.Tensor, rng_seed: int | None = None) -> torch.Tensor:
    base = tiny_llama(init_range=0.2)
    if rng_seed is not None:  # the RNG state PEFT's load-time init draws from
        torch.manual_seed(rng_seed)
    model = PeftModel.from_pretrained(base, folder).eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits


@pytest.mark.parametrize("init", ["pissa_niter_2", "pissa", "olora"])
def test_converted_adapter_on_the_original_base_is_the_trained_model(tmp_path, input_ids, init):
    trained, adapter, initial = _trained_adapter(tmp_path, init, input_ids)
    converted = convert_adapter_folder(adapter, initial, tmp_path / "converted")
    config = json.loads((converted / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (8, 16.0, True)
    assert base_rewrite(config) is None  # stock PEFT loads it without touching the base
    scale = trained.abs().max()
    assert (_reloaded_logits(converted, input_ids) - trained).abs().max() <= 1e-5 * scale


def test_unconverted_randomized_pissa_reloads_as_another_model(tmp_path, input_ids):
    """The bug the conversion fixes: PEFT re-runs the randomized SVD on load, so the residual base differs."""
    trained, adapter, _ = _trained_adapter(tmp_path, "pissa_niter_2", input_ids)
    reloaded = _reloaded_logits(adapter, input_ids, rng_seed=123)  # any RNG state but the one of training
    assert (reloaded - trained).abs().max() > 1e-3 * trained.abs().max()


def test_deterministic_init_can_be_rebuilt_from_the_base(tmp_path, input_ids):
    """Full-SVD PiSSA: the step-0 adapter recomputed from the original base gives the same conversion."""
    trained, adapter, _ = _trained_adapter(tmp_path, "pissa", input_ids)
    base_dir = tmp_path / "base"
    tiny_llama(init_range=0.2).save_pretrained(base_dir)
    rebuilt = recompute_initial_adapter(adapter, base_dir, tmp_path / "rebuilt")
    converted = convert_adapter_folder(adapter, rebuilt, tmp_path / "converted")
    assert (_reloaded_logits(converted, input_ids) - trained).abs().max() <= 1e-5 * trained.abs().max()


def test_randomized_init_cannot_be_rebuilt(tmp_path, input_ids):
    _, adapter, _ = _trained_adapter(tmp_path, "pissa_niter_2", input_ids)
    with pytest.raises(ValueError, match="cannot be recomputed"):
        recompute_initial_adapter(adapter, tmp_path, tmp_path / "rebuilt")


def test_rslora_keeps_its_scale():
    config = converted_config({"r": 4, "lora_alpha": 8, "use_rslora": True, "init_lora_weights": "pissa"})
    assert config["lora_alpha"] / config["r"] ** 0.5 == pytest.approx(8 / 4 ** 0.5)
    assert converted_config({"r": 4, "lora_alpha": 8})["lora_alpha"] / 8 == pytest.approx(8 / 4)


def test_plain_lora_is_not_converted(tmp_path, input_ids):
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    model.save_pretrained(tmp_path / "a")
    with pytest.raises(ValueError, match="already plain LoRA"):
        convert_adapter_folder(tmp_path / "a", tmp_path / "a")


def test_base_rewrite_reads_an_in_memory_config_too() -> None:
    """PeftConfig.to_dict() holds a PeftType member, not the saved string (the Axolotl plugin reads that form)."""
    from peft import LoraConfig

    from nlora_plugin.convert import base_rewrite

    assert base_rewrite(LoraConfig(r=4, init_lora_weights="pissa_niter_4").to_dict()) == "pissa_niter_4"
    assert base_rewrite(LoraConfig(r=4).to_dict()) is None
