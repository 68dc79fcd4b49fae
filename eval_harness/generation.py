"""Batched text generation with a Hugging Face causal LM (left padding, stop strings, progress bar)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList


class TextGenerator(Protocol):
    """What a task needs to turn prompts into completions."""

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        num_samples: int = 1,
        stop: Sequence[str] = (),
        seed: int = 0,
        desc: str = "generate",
    ) -> list[list[str]]:
        """Per prompt, `num_samples` completions without the prompt, each cut before its first stop string."""
        ...


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for marker in stop:
        if marker:
            position = text.find(marker)
            if position != -1:
                cut = min(cut, position)
    return text[:cut]


class _StopOnStrings(StoppingCriteria):
    """Per-row stop once a stop string appears in the newly generated text (checks only the tail)."""

    def __init__(self, tokenizer: Any, stop: Sequence[str], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.stop = [marker for marker in stop if marker]
        self.prompt_length = prompt_length
        # A stop string of n characters spans at most n tokens, plus one partly-matching token each side.
        self.tail_tokens = max((len(marker) for marker in self.stop), default=0) + 2

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        new_tokens = input_ids[:, self.prompt_length :]
        tails = self.tokenizer.batch_decode(new_tokens[:, -self.tail_tokens :], skip_special_tokens=True)
        done = [any(marker in tail for marker in self.stop) for tail in tails]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFGenerator:
    """`TextGenerator` over a loaded model: sorts prompts by length, generates in batches, restores order."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        num_samples: int = 1,
        stop: Sequence[str] = (),
        seed: int = 0,
        desc: str = "generate",
    ) -> list[list[str]]:
        if num_samples > 1 and temperature == 0.0:
            raise ValueError("num_samples > 1 needs temperature > 0 (greedy decoding gives identical samples)")
        torch.manual_seed(seed)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        results: list[list[str]] = [[] for _ in prompts]
        with tqdm(total=len(prompts), desc=desc, unit="prompt") as progress:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                completions = self._generate_batch(
                    [prompts[i] for i in batch],
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    num_samples=num_samples,
                    stop=stop,
                )
                for row, index in enumerate(batch):
                    results[index] = completions[row * num_samples : (row + 1) * num_samples]
                progress.update(len(batch))
        return results

    def _generate_batch(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        num_samples: int,
        stop: Sequence[str],
    ) -> list[str]:
        # The tokenizer's own special tokens (Llama's BOS) are added, as the model saw them in training.
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True)
        encoded = {name: tensor.to(self.model.device) for name, tensor in encoded.items() if name != "token_type_ids"}
        prompt_length = encoded["input_ids"].shape[1]
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p}
            if temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        if any(stop):
            sampling["stopping_criteria"] = StoppingCriteriaList([_StopOnStrings(self.tokenizer, stop, prompt_length)])
        output = self.model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_samples,
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
        )
        texts = self.tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
        return [cut_at_stop(text, stop) for text in texts]
