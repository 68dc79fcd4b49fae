"""Every method the harness compares: `axolotl train` (real CLI, recipes' plugin list), then the adapter loaded
the way `eval-harness run` loads it reproduces the trained model's logits (float32, ≤ 1e-5 of the logit scale).

PiSSA (full SVD and pissa_niter_4) is saved by the plugin as plain LoRA on the original base; stock PEFT,
without the plugin imported, must give the trained model from that folder too.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from .conftest import tiny_recipe
from .logits_probe import PROBE_FILE, PROBE_IDS
from .test_train_e2e import PROBE_PLUGIN, axolotl_train

pytestmark = pytest.mark.slow

PLUGINS = ["nlora_plugin.axolotl.NLoraPlugin", PROBE_PLUGIN]
LORA = {"adapter": "lora", "nlora": None}
METHODS = {  # name -> overrides of the tiny NLoRA recipe
    "lora": LORA,
    "pissa": {**LORA, "peft_init_lora_weights": "pissa"},
    "pissa-niter4": {**LORA, "peft_init_lora_weights": "pissa_niter_4"},
    "slora": {"adapter": "slora", "nlora": None},
    "nlora": {},
    "nlora-residual-pivoted-optimal": {"nlora": {"residual": True, "nystrom_index": "pivoted",
                                                 "nystrom_core": "optimal"}},
    "inttune": {"adapter": "inttune", "nlora": None, "learning_rate": 2.0e-3},
}


@pytest.fixture(scope="module", params=list(METHODS))
def trained(request: pytest.FixtureRequest, tiny_decoder: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[str, Path]:
    name = request.param
    work = tmp_path_factory.mktemp(f"exact-{name}")
    overrides = {key: value for key, value in METHODS[name].items() if value is not None}
    config = tiny_recipe("tiny-nlora.yaml", tiny_decoder, work, plugins=PLUGINS, max_steps=3, **overrides)
    if METHODS[name].get("nlora", {}) is None:  # plain recipes carry no nlora: block
        recipe = yaml.safe_load(config.read_text())
        recipe.pop("nlora", None)
        config.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return name, axolotl_train(config, work / "train.log")


def harness_model(tiny_decoder: Path, adapter: Path, tmp_path: Path) -> torch.nn.Module:
    """The model `eval-harness run` evaluates for this adapter: the YAML checked, then ModelHandle.model."""
    from eval_harness.eval_yaml import load_config
    from eval_harness.models import ModelHandle

    yaml_path = tmp_path / "eval.yaml"
    yaml_path.write_text(yaml.safe_dump({
        "base_model": str(tiny_decoder), "dtype": "float32", "device": "cpu",
        "models": [{"label": "trained", "adapter": str(adapter)}],
        "benchmarks": {"gsm8k": {}},  # checked, never run: the packaged GSM8K test set
    }))
    config = load_config(yaml_path)
    return ModelHandle.from_entry(config.models[0], config).model


def test_eval_harness_reproduces_the_trained_model(trained: tuple[str, Path], tiny_decoder: Path,
                                                   tmp_path: Path) -> None:
    name, out = trained
    probe = torch.load(out / PROBE_FILE)
    with torch.no_grad():
        logits = harness_model(tiny_decoder, out, tmp_path)(input_ids=torch.tensor(PROBE_IDS)).logits.float()
    scale = float(probe["logits"].abs().max())
    difference = float((logits - probe["logits"]).abs().max())
    print(f"{name}: max |Δ logit| after reload = {difference:.3e} (logit scale {scale:.3g})")
    assert difference <= 1e-5 * scale, name
    settings = json.loads((out / "training_settings.json").read_text())
    assert (settings["steps"], settings["effective_batch_size"], settings["samples"]) == (3, 4, 12)
    curve = settings["loss_curve"]  # logging_steps: 1 -> one [step, loss] per step, for the report's plot
    assert [step for step, _ in curve] == [1, 2, 3] and all(math.isfinite(loss) and loss > 0 for _, loss in curve)


def test_pissa_is_saved_as_plain_lora_that_stock_peft_reproduces(trained: tuple[str, Path],
                                                                  tiny_decoder: Path) -> None:
    name, out = trained
    if not name.startswith("pissa"):
        pytest.skip("only PiSSA rewrites the base weight")
    saved = json.loads((out / "adapter_config.json").read_text())
    assert (saved["init_lora_weights"], saved["r"], saved["lora_alpha"]) == (True, 16, 16.0)  # r 8 -> 2r, alpha ×2
    assert json.loads((out / "lora_conversion.json").read_text())["converted_from"] == METHODS[name][
        "peft_init_lora_weights"]
    assert not (out / ".initial_adapter").exists()
    from safetensors.torch import load_file

    from eval_harness.models import count_adapter_parameters

    on_disk = sum(tensor.numel() for tensor in load_file(str(out / "adapter_model.safetensors")).values())
    assert count_adapter_parameters(out) == on_disk // 2  # the report's #Params: r trained, not the 2r saved
    script = (  # a fresh interpreter that never imports nlora_plugin: stock PEFT only
        "import sys, torch; from peft import PeftModel; from transformers import AutoModelForCausalLM\n"
        f"base = AutoModelForCausalLM.from_pretrained({str(tiny_decoder)!r}, dtype=torch.float32)\n"
        f"model = PeftModel.from_pretrained(base, {str(out)!r}).eval()\n"
        "assert 'nlora_plugin' not in sys.modules\n"
        f"torch.save(model(input_ids=torch.tensor({PROBE_IDS!r})).logits.detach(), sys.argv[1])\n"
    )
    logits_file = out.parent / "stock_peft_logits.pt"
    subprocess.run([sys.executable, "-c", script, str(logits_file)], check=True, timeout=300)
    probe = torch.load(out / PROBE_FILE)["logits"]
    assert float((torch.load(logits_file) - probe).abs().max()) <= 1e-5 * float(probe.abs().max())
