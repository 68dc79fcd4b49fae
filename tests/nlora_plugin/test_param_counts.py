"""Trainable-parameter counts of the paper (§4.1, §4.3) on LLaMA-2-7B shapes, built on the meta device."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from nlora_plugin import NLoraConfig

LLAMA2_7B = LlamaConfig(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000
)
SEVEN_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
N_PARAMS = 32 * 7 * 128 * 128  # r² per adapted layer


def trainable_on_meta(config) -> int:
    with torch.device("meta"):
        model = LlamaForCausalLM(LLAMA2_7B)
    peft_model = get_peft_model(model, config)
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def lora_count() -> int:
    return trainable_on_meta(LoraConfig(r=128, lora_alpha=128, target_modules=SEVEN_PROJECTIONS))


def test_lora_baseline_is_320m(lora_count):
    assert lora_count == 319_815_680


@pytest.mark.parametrize("init_method", ["nlora", "slora"])
def test_slora_and_nlora_add_3_67m(lora_count, init_method):
    config = NLoraConfig(r=128, lora_alpha=128, target_modules=SEVEN_PROJECTIONS, init_method=init_method)
    assert N_PARAMS == 3_670_016
    assert trainable_on_meta(config) == lora_count + N_PARAMS


def test_inttune_trains_3_67m():
    config = NLoraConfig(r=128, lora_alpha=128, target_modules=SEVEN_PROJECTIONS, train_only_intermediate=True)
    assert trainable_on_meta(config) == N_PARAMS
