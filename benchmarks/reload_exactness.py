"""How far a reloaded adapter is from the model that was trained, per method: before and after exact evaluation.

"before": the adapter folder as PEFT saves it, loaded with `PeftModel.from_pretrained` on the original base
(what eval-harness did until it checked adapters), in a process whose RNG state differs from training's.
"after": what `eval-harness run` evaluates now: plain-LoRA conversion for PiSSA (`nlora convert-lora`
with the step-0 adapter, as the Axolotl plugin does), then `ModelHandle.model`.

    .venv/bin/python benchmarks/reload_exactness.py

Prints max |Δ logit| / logit scale on fixed token ids of the tiny 2-block decoder (float32, CPU); training
is simulated by moving every trainable tensor (the reload path is what is measured, not the optimiser).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from transformers import AutoModelForCausalLM

import nlora_plugin
from eval_harness.models import ModelHandle
from eval_harness.tiny_decoder import build_tiny_decoder
from nlora_plugin.convert import base_rewrite, convert_adapter_folder, save_initial_adapter

IDS = torch.tensor([[101, 2023, 2003, 1037, 3231, 1997, 1996, 2731, 2944, 102]])
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def methods() -> dict[str, object]:
    nlora = {"r": 8, "lora_alpha": 8, "target_modules": TARGETS, "task_type": "CAUSAL_LM"}
    return {
        "LoRA": LoraConfig(r=8, lora_alpha=8, target_modules=TARGETS),
        "PiSSA (full SVD)": LoraConfig(r=8, lora_alpha=8, target_modules=TARGETS, init_lora_weights="pissa"),
        "PiSSA (pissa_niter_4)": LoraConfig(r=8, lora_alpha=8, target_modules=TARGETS,
                                            init_lora_weights="pissa_niter_4"),
        "SLoRA": nlora_plugin.NLoraConfig(init_method="slora", **nlora),
        "NLoRA (authors' init)": nlora_plugin.NLoraConfig(**nlora),
        "NLoRA residual + pivoted + optimal": nlora_plugin.NLoraConfig(residual=True, nystrom_index="pivoted",
                                                                       nystrom_core="optimal", **nlora),
        "IntTune": nlora_plugin.NLoraConfig(train_only_intermediate=True, **nlora),
    }


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@torch.no_grad()
def measure(name: str, config: object, base_dir: Path, work: Path) -> tuple[float, float]:
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), config)
    initial_state = {key: value.clone() for key, value in get_peft_model_state_dict(model).items()}
    generator = torch.Generator().manual_seed(1)
    for param in model.parameters():
        if param.requires_grad:
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    trained = model.eval()(input_ids=IDS).logits
    adapter = work / name.replace(" ", "_")
    model.save_pretrained(adapter)
    torch.manual_seed(12345)  # another process, another RNG state
    before = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                       str(adapter)).eval()(input_ids=IDS).logits
    if base_rewrite(model.peft_config["default"].to_dict()) is not None:
        save_initial_adapter(initial_state, model.peft_config["default"].to_dict(), work / "initial")
        adapter = convert_adapter_folder(adapter, work / "initial", work / f"{adapter.name}-lora")
    handle = ModelHandle(label=adapter.name, method=name, seed=None, base_model=base_dir, adapter=adapter,
                         dtype="float32", device="cpu")
    after = handle.model(input_ids=IDS).logits
    return relative(before, trained), relative(after, trained)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        base_dir = build_tiny_decoder(work / "tiny")
        print("| method | before: max abs Δ logit / scale | after |")
        print("|---|---:|---:|")
        for name, config in methods().items():
            before, after = measure(name, config, base_dir, work)
            print(f"| {name} | {before:.2e} | {after:.2e} |")


if __name__ == "__main__":
    main()
