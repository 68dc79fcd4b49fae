"""Registration of NLoRA with stock PEFT (get_peft_model, PeftModel.from_pretrained, save_pretrained).

``register_peft_method`` insists on a prefix no other method uses, but NLoRA keeps PEFT's own module
names ``lora_A`` / ``lora_B`` (plus ``lora_N``), whose common prefix ``lora_`` belongs to
LoRA. The mapping tables it fills are plain dicts, so we fill the same three entries directly; a
duplicate prefix only matters to code that maps a prefix back to a type, and PEFT 0.20/0.21 has none.
"""

from __future__ import annotations

from peft import mapping

from .config import NLoraConfig
from .model import NLoraModel
from .peft_type import NLORA_PEFT_TYPE


def register() -> None:
    """Make PEFT dispatch ``PeftType.NLORA`` to NLoraConfig / NLoraModel (idempotent)."""
    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[NLORA_PEFT_TYPE] = NLoraConfig
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[NLORA_PEFT_TYPE] = NLoraModel
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[NLORA_PEFT_TYPE] = NLoraModel.prefix
