"""One model entry of the YAML: the base model plus an adapter (NLoRA, LoRA, PiSSA or none), loaded lazily.

Adapters load through stock PEFT; `nlora_plugin` is imported first so NLoRA adapters are known.
"""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from eval_harness.config import EvalConfig, GenerationDefaults, ModelEntry
from eval_harness.errors import ConfigError
from eval_harness.generation import HFGenerator, TextGenerator

logger = logging.getLogger(__name__)


def count_adapter_parameters(adapter: Path) -> int:
    """Trainable parameters of an adapter, counted from its saved tensors.

    Tensors the adapter's method never trains (IntTune: lora_A and lora_B, see nlora_plugin.methods)
    are left out; every other saved tensor (modules_to_save included) was trained. A PiSSA/OLoRA adapter
    saved as plain LoRA (lora_conversion.json) holds its frozen init beside the trained factors
    (rank 2r for r trained): only the trained share of its LoRA factors counts.
    """
    from safetensors import safe_open

    from nlora_plugin.convert import CONVERSION_RECORD
    from nlora_plugin.methods import frozen_tensors

    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    frozen = frozen_tensors(config)
    conversion = adapter / CONVERSION_RECORD
    trained_share = 1.0
    if conversion.is_file():
        trained_share = json.loads(conversion.read_text(encoding="utf-8"))["original_r"] / config["r"]
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        state = torch.load(adapter / "adapter_model.bin", map_location="cpu", weights_only=True)
        shapes = {name: tuple(tensor.shape) for name, tensor in state.items()}
    else:
        with safe_open(str(weights), framework="pt") as handle:
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
    total = 0
    for name, shape in shapes.items():
        if any(f".{tensor}." in name or name.endswith(f".{tensor}") for tensor in frozen):
            continue
        numel = 1
        for size in shape:
            numel *= size
        total += round(numel * trained_share) if ".lora_A." in name or ".lora_B." in name else numel
    return total


def resolve_device(device: str) -> torch.device:
    """`auto` is the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype | str:
    return "auto" if dtype == "auto" else getattr(torch, dtype)


@dataclass
class ModelHandle:
    """A model entry ready for a task: metadata now, weights on first use of `.model`."""

    label: str
    method: str
    seed: int | None
    base_model: Path
    adapter: Path | None
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    dtype: str = "auto"
    device: str = "auto"
    expect_identity: bool = False
    probe: dict[str, float] | None = None  # set when the adapter loads (eval_harness.probe.probe_adapter)
    engine: Any = None  # backend vllm: the run's shared VLLMEngine (eval_harness.vllm_backend)
    served_adapter: Path | None = None  # backend vllm: the plain-LoRA folder the engine serves for `adapter`

    @classmethod
    def from_entry(cls, entry: ModelEntry, config: EvalConfig) -> ModelHandle:
        return cls(
            label=entry.label,
            method=entry.method,
            seed=entry.seed,
            base_model=config.base_model,
            adapter=entry.adapter,
            generation=config.generation,
            dtype=config.dtype,
            device=config.device,
            expect_identity=entry.expect_identity,
        )

    @cached_property
    def trainable_params(self) -> int | None:
        return None if self.adapter is None else count_adapter_parameters(self.adapter)

    @cached_property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        source = self.adapter if self.adapter and (self.adapter / "tokenizer_config.json").is_file() else None
        tokenizer = AutoTokenizer.from_pretrained(str(source or self.base_model))
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError(
                    f"{self.base_model}: the tokenizer has neither a pad nor an eos token; add one to "
                    "its tokenizer_config.json"
                )
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        return tokenizer

    @cached_property
    def model(self) -> torch.nn.Module:
        """The base model with the adapter applied (not merged), in eval mode on the chosen device."""
        from transformers import AutoModelForCausalLM

        device = resolve_device(self.device)
        logger.info("loading %s%s on %s", self.base_model, f" + {self.adapter}" if self.adapter else "", device)
        # Loaded straight onto a GPU (no full copy in CPU memory first); on the CPU as usual.
        placement = {} if device.type == "cpu" else {"device_map": str(device)}
        model = AutoModelForCausalLM.from_pretrained(str(self.base_model), dtype=resolve_dtype(self.dtype), **placement)
        rows = model.get_input_embeddings().weight.shape[0]
        if len(self.tokenizer) > rows and self.generation.backend == "vllm":
            raise ConfigError(
                f"models[{self.label}].adapter: its tokenizer adds {len(self.tokenizer) - rows} token(s) to the base "
                "vocabulary, which vLLM's LoRA cannot serve; use generation.backend: hf for this run"
            )
        if len(self.tokenizer) > rows:
            # Training added tokens (e.g. a pad token) and saved the tokenizer with the adapter.
            logger.info("resizing the embeddings from %d to %d tokens (the adapter's tokenizer)", rows,
                        len(self.tokenizer))
            model.resize_token_embeddings(len(self.tokenizer))
        if self.adapter is not None:
            from peft import PeftModel

            import nlora_plugin  # noqa: F401  (registers the NLoRA PEFT method before loading)
            from eval_harness.probe import check_all_tensors_loaded, probe_adapter

            model = PeftModel.from_pretrained(model, str(self.adapter), is_trainable=False)
            check_all_tensors_loaded(model, self.adapter, label=self.label)
            model = model.to(device).eval()
            self.probe = probe_adapter(model, label=self.label, expect_identity=self.expect_identity)
            logger.info("%s: the adapter moves the probe logits by %.3g (logit scale %.3g)", self.label,
                        self.probe["max_abs_delta_logit"], self.probe["logit_scale"])
            return model
        return model.to(device).eval()

    @cached_property
    def generator(self) -> TextGenerator:
        if self.generation.backend == "vllm":
            from eval_harness.vllm_backend import VLLMGenerator

            if self.engine is None or (self.adapter is not None and self.served_adapter is None):
                raise RuntimeError(f"{self.label}: backend vllm, but the runner gave this model no engine or "
                                   "served adapter (eval_harness.runner prepares both)")
            return VLLMGenerator(self.engine, self.tokenizer,
                                 lora=self.engine.lora_request(self.label, self.served_adapter))
        return HFGenerator(self.model, self.tokenizer, batch_size=self.generation.batch_size)

    @property
    def loaded(self) -> bool:
        return "model" in self.__dict__

    def release(self) -> None:
        """Drop the weights (the next entry loads its own), freeing GPU memory."""
        for name in ("generator", "model"):
            self.__dict__.pop(name, None)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
