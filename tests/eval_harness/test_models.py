"""Model entries: the adapter is applied as PEFT applies it, parameters are counted without loading."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

import nlora_plugin
from eval_harness.models import ModelHandle, count_adapter_parameters
from tests.eval_harness.conftest import TARGETS, save_adapter


def _trainable(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


@pytest.mark.parametrize("name", ["lora", "nlora"])
def test_parameter_count_matches_peft(tiny_root, name):
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_root / "base")), str(tiny_root / name), is_trainable=True
    )
    assert count_adapter_parameters(tiny_root / name) == _trainable(reference) > 0


def test_inttune_counts_only_the_intermediate_matrices(tiny_root, tmp_path):
    config = nlora_plugin.NLoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, train_only_intermediate=True)
    folder = save_adapter(tiny_root / "base", tmp_path / "inttune", config)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_root / "base")), config)
    assert count_adapter_parameters(folder) == _trainable(model) == 2 * len(TARGETS) * 4 * 4


def test_handle_applies_the_adapter_lazily(tiny_root):
    handle = ModelHandle(label="lora", method="LoRA", seed=0, base_model=tiny_root / "base",
                         adapter=tiny_root / "lora", dtype="float32", device="cpu")
    assert handle.trainable_params > 0 and not handle.loaded
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_root / "base")), str(tiny_root / "lora")
    ).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_root / "base")).eval()
    ids = torch.tensor([[101, 2054, 2003, 1016, 4606, 1016, 102]])
    with torch.no_grad():
        ours = handle.model(input_ids=ids).logits
        assert torch.equal(ours, reference(input_ids=ids).logits)
        assert not torch.allclose(ours, base(input_ids=ids).logits)  # the adapter does something
    assert handle.loaded and not handle.model.training
    assert handle.tokenizer.padding_side == "left" and handle.tokenizer.pad_token is not None
    handle.release()
    assert not handle.loaded


def test_base_entry_has_no_trainable_params(tiny_root):
    handle = ModelHandle(label="base", method="base", seed=None, base_model=tiny_root / "base", adapter=None)
    assert handle.trainable_params is None


def test_tokens_added_in_training_resize_the_base_before_the_adapter_loads(tiny_root, tmp_path):
    from peft import LoraConfig
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_root / "base"))
    tokenizer.add_special_tokens({"additional_special_tokens": ["[NEW]"]})
    base = AutoModelForCausalLM.from_pretrained(str(tiny_root / "base"))
    base.resize_token_embeddings(len(tokenizer))
    trained = get_peft_model(base, LoraConfig(r=2, target_modules=TARGETS, modules_to_save=["embed_tokens"]))
    trained.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    handle = ModelHandle(label="x", method="LoRA", seed=None, base_model=tiny_root / "base",
                         adapter=tmp_path / "adapter", dtype="float32", device="cpu",
                         expect_identity=True)  # untrained (B = 0): the probe must find no change
    ids = torch.tensor([[101, len(tokenizer) - 1, 2003]])  # uses the new token
    with torch.no_grad():
        assert torch.equal(handle.model(input_ids=ids).logits, trained.eval()(input_ids=ids).logits)
