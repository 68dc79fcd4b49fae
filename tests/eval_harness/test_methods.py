"""The method factory builds the PEFT configs a user would write, and they train what they should."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

import nlora_plugin
from eval_harness.errors import ConfigError
from eval_harness.tasks.glue.methods import build_peft_config, parse_method, unique_labels


def build(item: dict, seed: int = 0):
    return build_peft_config(parse_method(item, where="m"), head_modules=["classifier"], seed=seed)


def test_lora_and_pissa_are_stock_peft() -> None:
    lora = build({"name": "lora", "r": 8, "lora_alpha": 16, "target_modules": ["query", "key", "value"]})
    assert type(lora) is LoraConfig
    assert lora.init_lora_weights is True and lora.r == 8 and lora.lora_alpha == 16
    assert set(lora.target_modules) == {"query", "key", "value"}
    assert lora.modules_to_save == ["classifier"] and lora.task_type == "SEQ_CLS"
    pissa = build({"name": "pissa"})
    assert type(pissa) is LoraConfig and pissa.init_lora_weights == "pissa_niter_4"
    assert pissa.r == 8 and pissa.lora_alpha == 8  # alpha defaults to r


def test_nlora_family() -> None:
    slora = build({"name": "slora"})
    assert isinstance(slora, nlora_plugin.NLoraConfig)
    assert slora.init_method == "slora" and not slora.train_only_intermediate
    nlora = build({"name": "nlora", "nystrom_index": "pivoted", "nystrom_core": "optimal", "residual": True}, seed=3)
    assert nlora.init_method == "nlora" and nlora.nystrom_index == "pivoted"
    assert nlora.nystrom_core == "optimal" and nlora.residual is True and nlora.seed == 3
    assert nlora.modules_to_save == ["classifier"] and nlora.task_type == "SEQ_CLS"
    assert build({"name": "nlora", "seed": 7}, seed=3).seed == 7  # the YAML's seed wins over the run's
    inttune = build({"name": "inttune", "learning_rate": 5e-3})
    assert inttune.init_method == "nlora" and inttune.train_only_intermediate is True


def test_inttune_trains_only_n_and_the_head() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=2))
    model = get_peft_model(base, build({"name": "inttune", "r": 4}))
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable and all("lora_N" in name or "classifier" in name for name in trainable)
    assert any("lora_N" in name for name in trainable) and any("classifier" in name for name in trainable)


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"name": "dora"}, "m.name"),
        ({"name": "lora", "residual": True}, "m.residual"),
        ({"name": "nlora", "r": 0}, "m.r"),
        ({"name": "nlora", "learning_rate": "fast"}, "m.learning_rate"),
        ({"name": "nlora", "target_modules": []}, "m.target_modules"),
        ({"name": "nlora", "nystrom_index": "best"}, "nystrom_index"),
        ({"name": "nlora", "label": ""}, "m.label"),
    ],
)
def test_bad_method_entries_name_the_field(item: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        parse_method(item, where="m")


def test_two_methods_with_one_folder_are_refused() -> None:
    specs = [parse_method({"name": "nlora"}, where="m"), parse_method({"name": "slora", "label": "nlora"}, where="m")]
    with pytest.raises(ConfigError, match=r"methods\[1\].label"):
        unique_labels(specs, where="methods")
