"""The method table: every method's config reads back as the same method, and frozen tensors follow the config."""

from __future__ import annotations

import json

import pytest

from nlora_plugin.methods import METHODS, NLORA_METHODS, frozen_tensors, method_label


@pytest.mark.parametrize("name", list(METHODS))
def test_a_saved_config_reads_back_as_its_method(name):
    config = METHODS[name].peft_config(r=4, lora_alpha=4, target_modules=["q_proj"])
    saved = json.loads(json.dumps(config.to_dict(), default=str))  # as adapter_config.json holds it
    assert method_label(saved) == method_label(config.to_dict()) == METHODS[name].label
    assert frozen_tensors(saved) == METHODS[name].frozen


def test_the_axolotl_adapters_are_the_nlora_rows_of_the_table():
    pytest.importorskip("axolotl", reason="the PEFT 0.21 core venv has no Axolotl")
    from nlora_plugin.axolotl.args import ADAPTERS

    assert set(ADAPTERS) == set(NLORA_METHODS) == {"slora", "nlora", "inttune"}
    assert ADAPTERS["inttune"] == ("nlora", True) and ADAPTERS["slora"] == ("slora", False)


def test_a_converted_pissa_adapter_is_still_pissa():
    lora = METHODS["lora"].peft_config(r=8, target_modules=["q_proj"]).to_dict()
    assert method_label(lora, converted_from="pissa_niter_4") == "PiSSA"
    assert method_label(lora, converted_from="olora") == "OLoRA"
