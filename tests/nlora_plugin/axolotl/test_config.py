"""The plugin's config surface: shipped YAMLs validate, bad `nlora:` blocks stop the run early and clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from axolotl.cli.config import load_cfg
from axolotl.integrations.base import PluginManager
from axolotl.utils.config import prepare_plugins, validate_config
from axolotl.utils.dict import DictDefault

from nlora_plugin.axolotl import NLoraOptions
from nlora_plugin.axolotl.plugin import build_nlora_config

from .conftest import CONFIGS, DEEPSPEED_CONFIGS, REPO, tiny_recipe

SHIPPED = sorted(CONFIGS.glob("*.yaml"))


def validated(raw: dict) -> DictDefault:
    """Axolotl's own config validation, with the config's plugins registered (what `axolotl train` runs)."""
    cfg = DictDefault(raw)
    prepare_plugins(cfg)
    return validate_config(cfg)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_passes_axolotl_validation(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    cfg = validated(raw)
    assert cfg.adapter == raw["adapter"]
    if raw["adapter"] in ("nlora", "slora", "inttune"):
        assert "nlora_plugin.axolotl.NLoraPlugin" in raw["plugins"]
        NLoraOptions(**(raw.get("nlora") or {}))  # the plugin's own model accepts the block as written
        assert cfg.merge_method == "legacy"  # `axolotl merge-lora` must go through PEFT


@pytest.mark.parametrize("name", ["zero2.json", "zero3.json"])
def test_deepspeed_configs_are_accepted(name: str) -> None:
    stage = json.loads((DEEPSPEED_CONFIGS / name).read_text())["zero_optimization"]["stage"]
    assert stage == int(name[4])
    raw = yaml.safe_load((CONFIGS / "tiny-nlora.yaml").read_text())
    cfg = validated({**raw, "deepspeed": str(DEEPSPEED_CONFIGS / name)})
    assert cfg.deepspeed == str(DEEPSPEED_CONFIGS / name)


def test_tiny_inttune_uses_the_paper_inttune_lr() -> None:
    assert yaml.safe_load((CONFIGS / "tiny-inttune.yaml").read_text())["learning_rate"] == 2e-3


def test_yaml_maps_onto_nlora_config(tiny_decoder: Path, tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    raw = yaml.safe_load(tiny_recipe("tiny-inttune.yaml", tiny_decoder, tmp_path).read_text())
    raw["nlora"] = {"nystrom_core": "optimal", "nystrom_index": "random", "pinv_rtol": 0.05, "seed": 7}
    cfg = validated(raw)
    config = build_nlora_config(LlamaForCausalLM.from_pretrained(tiny_decoder), cfg)
    assert (config.init_method, config.train_only_intermediate) == ("nlora", True)
    assert (config.r, config.lora_alpha, config.nystrom_core, config.nystrom_index) == (8, 8, "optimal", "random")
    assert (config.pinv_rtol, config.seed, config.task_type) == (0.05, 7, "CAUSAL_LM")
    # lora_target_linear: every linear layer of the blocks, never the LM head
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize(
    ("block", "named"),
    [
        ({"nystrom_cor": "sample"}, "nystrom_cor"),  # typo in a field name
        ({"nystrom_index": "last"}, "nystrom_index"),  # not one of the Literal choices
        ({"pinv_rtol": 2.0}, "pinv_rtol"),
        ({"init_method": "slora"}, "nlora.init_method"),  # chosen by `adapter:`, not here
    ],
)
def test_bad_nlora_block_stops_config_loading(tiny_decoder: Path, tmp_path: Path, block: dict, named: str) -> None:
    """load_cfg is the step `axolotl train` runs before it loads any model."""
    path = tiny_recipe("tiny-nlora.yaml", tiny_decoder, tmp_path, nlora=block)
    with pytest.raises(Exception, match=named) as error:
        load_cfg(str(path))
    assert "nlora" in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lora_r": -8}, r"lora_r is -8; adapter: nlora needs a whole number of at least 1"),
        ({"lora_r": 0}, r"lora_r is 0"),
        ({"lora_r": 33}, r"lora_r is 33, larger than num_key_value_heads × head_dim .* = 32 .*use lora_r <= 32"),
        ({"lora_alpha": -16}, r"lora_alpha is -16; use a positive number"),
        ({"lora_dropout": 1.5}, r"lora_dropout is 1.5; use a number from 0 up to \(not including\) 1"),
        ({"adapter": "inttune", "lora_r": 65}, r"lora_r is 65, larger than .* = 32 .*adapter: inttune samples"),
    ],
)
def test_bad_lora_fields_stop_config_loading(tiny_decoder: Path, tmp_path: Path, overrides: dict,
                                             message: str) -> None:
    """Refused by load_cfg, before any model loads (the tiny decoder: hidden 64, k/v outputs 2 heads × 16)."""
    with pytest.raises(Exception, match=message):
        load_cfg(str(tiny_recipe("tiny-nlora.yaml", tiny_decoder, tmp_path, **overrides)))


def test_slora_and_a_rank_at_the_limit_are_accepted(tiny_decoder: Path, tmp_path: Path) -> None:
    assert load_cfg(str(tiny_recipe("tiny-nlora.yaml", tiny_decoder, tmp_path, lora_r=32))).lora_r == 32
    slora = tiny_recipe("tiny-nlora.yaml", tiny_decoder, tmp_path, adapter="slora", lora_r=128, nlora=None)
    assert load_cfg(str(slora)).lora_r == 128  # SLoRA takes nothing from W: any rank, as plain LoRA


@pytest.mark.parametrize("quantized", [{"load_in_4bit": True}, {"load_in_8bit": True}, {"gptq": True}])
def test_quantized_base_is_refused_with_the_alternative(quantized: dict) -> None:
    raw = {**yaml.safe_load((CONFIGS / "tiny-nlora.yaml").read_text()), **quantized}
    with pytest.raises(Exception, match="Use a plain bf16 or fp32 base") as error:
        validated(raw)
    assert f"{next(iter(quantized))}: true" in str(error.value)


def test_memory_efficient_merge_is_refused() -> None:
    raw = {**yaml.safe_load((CONFIGS / "tiny-nlora.yaml").read_text()), "merge_lora": True}
    raw["merge_method"] = "memory_efficient"
    with pytest.raises(Exception, match="merge_method: legacy"):
        validated(raw)


def test_nlora_adapter_without_the_plugin_gets_axolotls_error(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = yaml.safe_load((CONFIGS / "tiny-nlora.yaml").read_text())
    raw.pop("plugins")
    raw.pop("nlora")
    monkeypatch.setattr(PluginManager.get_instance(), "plugins", {})  # a process that never saw the plugin
    with pytest.raises(Exception, match="Adapter 'nlora' is not built in and was not registered"):
        validated(raw)


def test_core_does_not_import_axolotl() -> None:
    code = "import sys, nlora_plugin; sys.exit(any(m.split('.')[0] == 'axolotl' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO).returncode == 0


def test_fsdp2_recipe_validates_with_the_plugin() -> None:
    raw = yaml.safe_load((CONFIGS / "llama2-7b-metamath-nlora-fsdp2.yaml").read_text())
    cfg = validated(raw)
    assert str(cfg.fsdp_version) == "2" and cfg.adapter == "nlora" and cfg.deepspeed is None
    assert cfg.fsdp_config.state_dict_type == "FULL_STATE_DICT"  # one adapter file, written from rank 0
