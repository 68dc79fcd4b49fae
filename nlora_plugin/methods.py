"""The five methods this project compares, in one table: name → PEFT config, frozen tensors, report label.

The Axolotl plugin (``adapter:``), eval-harness (GLUE ``methods:`` and the method read from a saved
adapter), the ``nlora init-bench`` command and ``benchmarks/`` all read this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from peft import LoraConfig, PeftConfig

from .config import NLoraConfig


@dataclass(frozen=True)
class Method:
    """One method: which PEFT config builds it and which of its adapter tensors stay at their init."""

    name: str  # the config key: lora | pissa | slora | nlora | inttune
    label: str  # what reports call it
    nlora_fields: Mapping[str, Any] | None = None  # NLoraConfig fields the method fixes; None: PEFT LoraConfig
    lora_init: bool | str = True  # LoraConfig.init_lora_weights (LoRA methods only)
    frozen: tuple[str, ...] = field(default=())  # adapter tensors (lora_A, ...) it never trains

    @property
    def is_nlora(self) -> bool:
        return self.nlora_fields is not None

    def peft_config(self, **fields: Any) -> PeftConfig:
        """The PEFT config of this method with the given shared fields (r, lora_alpha, target_modules, ...).

        A LoRA method's `init_lora_weights` may be overridden (e.g. PiSSA with a full SVD)."""
        if self.nlora_fields is None:
            return LoraConfig(**{"init_lora_weights": self.lora_init, **fields})
        return NLoraConfig(**self.nlora_fields, **fields)


METHODS: dict[str, Method] = {method.name: method for method in (
    Method("lora", "LoRA"),
    Method("pissa", "PiSSA", lora_init="pissa_niter_4"),  # PiSSA's own scripts use the randomized SVD
    Method("slora", "SLoRA", {"init_method": "slora"}),  # App. B: LoRA init plus a Kaiming N
    Method("nlora", "NLoRA", {"init_method": "nlora"}),  # §3: A, N, B from the Nyström decomposition of W
    Method("inttune", "IntTune", {"init_method": "nlora", "train_only_intermediate": True},
           frozen=("lora_A", "lora_B")),  # §4.3: NLoRA init, only N trains
)}
NLORA_METHODS = tuple(name for name, method in METHODS.items() if method.is_nlora)


def method_label(adapter_config: Mapping[str, Any], converted_from: str | None = None) -> str:
    """The report label of a saved adapter (adapter_config.json), `converted_from` a PiSSA/OLoRA conversion."""
    peft_type = adapter_config.get("peft_type", "")
    peft_type = str(getattr(peft_type, "value", peft_type)).upper()
    if peft_type == "NLORA":
        if adapter_config.get("train_only_intermediate"):
            return METHODS["inttune"].label
        return METHODS["slora" if adapter_config.get("init_method") == "slora" else "nlora"].label
    if peft_type == "LORA":
        init = converted_from or adapter_config.get("init_lora_weights")
        if isinstance(init, str) and init.lower() == "olora":
            return "OLoRA"
        return METHODS["pissa" if isinstance(init, str) and init.lower().startswith("pissa") else "lora"].label
    return peft_type or "adapter"


def frozen_tensors(adapter_config: Mapping[str, Any]) -> tuple[str, ...]:
    """The adapter tensors a saved adapter's method never trained (IntTune: lora_A and lora_B)."""
    if str(adapter_config.get("peft_type", "")).upper() == "NLORA" and adapter_config.get("train_only_intermediate"):
        return METHODS["inttune"].frozen
    return ()


__all__ = ["METHODS", "NLORA_METHODS", "Method", "frozen_tensors", "method_label"]
