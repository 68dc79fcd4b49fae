"""NLoRA, SLoRA and IntTune adapters for stock PEFT (paper: arXiv 2502.14482).

``import nlora_plugin`` registers the method, so ``get_peft_model(model, NLoraConfig(...))``,
``save_pretrained`` and ``PeftModel.from_pretrained`` work with the PEFT you already have.
"""

from .config import NLoraConfig
from .export import export_lora, save_merged
from .layer import NLoraLayer, NLoraLinear
from .model import NLoraModel
from .nystrom import NystromFactors, nystrom_factors
from .peft_method import register

register()

__all__ = [
    "NLoraConfig",
    "NLoraLayer",
    "NLoraLinear",
    "NLoraModel",
    "NystromFactors",
    "export_lora",
    "nystrom_factors",
    "save_merged",
]
