"""lm-eval's `generate_until` on the harness's shared vLLM engine (GSM8K and MATH with `backend: vllm`).

Why not lm-eval's own `vllm` model: it starts an engine per instance, so every adapter would pay the
engine start and hold a second copy of the weights, and it tokenises its own way. This model keeps
everything lm-eval decides — prompts, stop sequences, answer filters, metrics, the request cache —
and does exactly what lm-eval's HF model (`HFLM.generate_until`) does around the call to the engine:
the tokenizer's default special tokens (none added when the context already starts with BOS), left
truncation to leave room for `max_gen_toks`, the EOS text added to the stop sequences, decoding with
special tokens skipped, and the text cut at the first stop sequence. Only generation requests are
supported: the generating benchmarks need no log-likelihoods.
"""

from __future__ import annotations

import json
from typing import Any

from lm_eval.api.model import LM
from lm_eval.models.utils import (
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from tqdm.auto import tqdm

DEFAULT_MAX_GEN_TOKS = 256  # HFLM.max_gen_toks


class EngineLM(LM):
    """An lm-eval model whose generations come from `generator.generate_ids` (a VLLMGenerator)."""

    def __init__(self, generator: Any, tokenizer: Any, *, max_length: int) -> None:
        super().__init__()
        self.generator = generator
        self.tokenizer = tokenizer
        self.max_length = max_length

    def _encode(self, context: str) -> list[int]:
        bos = getattr(self.tokenizer, "bos_token", None)
        special = {"add_special_tokens": False} if has_bos_prefix(context, bos) else {}
        return self.tokenizer(context, **special)["input_ids"]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        eos = self.tokenizer.decode(self.tokenizer.eos_token_id, skip_special_tokens=False)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        results: list[str] = [""] * len(requests)
        with tqdm(total=len(requests), desc="generate_until (vLLM)", disable=disable_tqdm) as progress:
            for indices in groups.values():
                gen_kwargs = requests[indices[0]].args[1]
                kwargs = normalize_gen_kwargs(gen_kwargs, DEFAULT_MAX_GEN_TOKS)
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                max_gen_toks = int(kwargs.pop("max_gen_toks"))
                temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
                keep = self.max_length - max_gen_toks
                if keep <= 0:
                    raise ValueError(f"max_gen_toks {max_gen_toks} leaves no room for the prompt in the engine's "
                                     f"max_model_len {self.max_length}; raise generation.vllm.max_model_len")
                contexts = [requests[index].args[0] for index in indices]
                outputs = self.generator.generate_ids(
                    [self._encode(context)[-keep:] for context in contexts], max_new_tokens=max_gen_toks,
                    temperature=temperature, top_p=float(kwargs.get("top_p", 1.0)), stop=until)
                for index, context, samples in zip(indices, contexts, outputs):
                    text = postprocess_generated_text(self.tokenizer.decode(samples[0], skip_special_tokens=True),
                                                      stop=until, think_end_token=None)
                    results[index] = text
                    self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                progress.update(len(indices))
        return results

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        raise NotImplementedError("the vLLM backend serves generation tasks only; use generation.backend: hf")

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError("the vLLM backend serves generation tasks only; use generation.backend: hf")
