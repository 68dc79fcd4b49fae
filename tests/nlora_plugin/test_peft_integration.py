"""NLoRA through stock PEFT: save/load, encoders with a trained head, GPT-2 Conv1D, config errors."""

import json
import subprocess
import sys

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from nlora_plugin import NLoraConfig

from .conftest import tiny_bert, tiny_llama


def perturb_trainable(model, scale=0.02, seed=0):
    """Stand-in for training: move every trainable tensor so a reload has something to get right."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"init_method": "slora"},
        {"train_only_intermediate": True},
        {"residual": True, "nystrom_core": "optimal", "nystrom_index": "pivoted"},
        {"nystrom_index": "random", "nystrom_core": "pinv", "seed": 4},
    ],
)
def test_save_and_from_pretrained_give_identical_logits(tmp_path, input_ids, options):
    model = get_peft_model(tiny_llama(), NLoraConfig(r=8, lora_alpha=16, target_modules="all-linear", **options))
    perturb_trainable(model)
    expected = model(input_ids).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "NLORA" and saved["r"] == 8
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert torch.allclose(loaded(input_ids).logits, expected, atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"residual": True, "nystrom_core": "optimal"}])
def test_low_cpu_mem_usage_loading_matches(tmp_path, input_ids, options):
    model = get_peft_model(tiny_llama(), NLoraConfig(r=8, target_modules="all-linear", **options))
    perturb_trainable(model)
    expected = model(input_ids).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path, low_cpu_mem_usage=True)
    assert torch.allclose(loaded(input_ids).logits, expected, atol=1e-5)


def test_adapter_file_holds_only_adapter_tensors(tmp_path):
    model = get_peft_model(tiny_llama(), NLoraConfig(r=4, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert {k.rsplit(".", 2)[-2] for k in keys} == {"lora_A", "lora_N", "lora_B"}
    assert len(keys) == 2 * 3  # q_proj in 2 blocks × (A, N, B)


def test_from_pretrained_trainable_inttune_keeps_A_and_B_frozen(tmp_path):
    model = get_peft_model(tiny_llama(), NLoraConfig(r=4, target_modules="all-linear", train_only_intermediate=True))
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)
    trainable = [name for name, p in loaded.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_N." in name for name in trainable)


def test_adapter_config_without_the_plugin_fails_clearly(tmp_path):
    get_peft_model(tiny_llama(), NLoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path)
    code = (
        "import peft, sys\n"
        f"try:\n    peft.PeftConfig.from_pretrained({str(tmp_path)!r})\n"
        "except Exception as error:\n    print(type(error).__name__, error)\n    sys.exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 3 and "NLORA" in result.stdout


def test_bert_classifier_trains_head_and_adapter_and_reloads(tmp_path):
    model = get_peft_model(
        tiny_bert(),
        NLoraConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"], task_type="SEQ_CLS"),
    )
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("classifier" in name for name in trainable) and any("lora_N" in name for name in trainable)
    ids = torch.randint(0, 120, (4, 10), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0, 1])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(25):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    model.eval()
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-5)


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=32)).eval()


def test_gpt2_conv1d_init_merge_and_reload(tmp_path):
    base = tiny_gpt2()
    weight = base.transformer.h[0].attn.c_attn.weight.detach().clone()  # (in, out) = (32, 96)
    model = get_peft_model(base, NLoraConfig(r=4, target_modules=["c_attn", "c_proj"]))
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    assert torch.equal(layer.lora_A["default"].weight, weight.T[:4, :])
    assert torch.equal(layer.lora_B["default"].weight, weight.T[:, :4])
    ids = torch.randint(0, 50, (2, 8))
    perturb_trainable(model)
    expected = model(ids).logits
    model.save_pretrained(tmp_path)
    assert torch.allclose(PeftModel.from_pretrained(tiny_gpt2(), tmp_path)(ids).logits, expected, atol=1e-5)
    assert torch.allclose(model.merge_and_unload()(ids).logits, expected, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"r": 0}, "r"),
        ({"init_method": "svd"}, "init_method"),
        ({"nystrom_core": "inverse"}, "nystrom_core"),
        ({"nystrom_index": "last"}, "nystrom_index"),
        ({"slora_n_init": "xavier"}, "slora_n_init"),
        ({"lora_dropout": 1.5}, "lora_dropout"),
        ({"train_only_intermediate": True, "init_method": "slora"}, "train_only_intermediate"),
        ({"residual": True, "init_method": "slora"}, "residual"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"NLoraConfig\.{field}="):
        NLoraConfig(target_modules=["q_proj"], **kwargs)


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_other_decoder_families_merge_exactly(family, input_ids):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        family, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=101, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_config(config).eval(),
                           NLoraConfig(r=8, target_modules="all-linear"))
    adapted = [name for name, _ in model.named_modules() if name.endswith("lora_N")]
    assert len(adapted) == 2 * 7  # all seven projections of both blocks
    perturb_trainable(model)
    expected = model(input_ids).logits
    assert torch.allclose(model.merge_and_unload()(input_ids).logits, expected, atol=1e-4)
