"""NLoraModel: the PEFT tuner that finds target modules and swaps in NLoRA layers."""

from __future__ import annotations

import logging

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import (
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
    get_base_model_state_dict,
    set_base_model_state_dict,
)
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import NLoraConfig
from .diagnostics import measure, summary_line, warn_if_damaging
from .layer import NLoraLayer, NLoraLinear, check_nlora_rank

logger = logging.getLogger(__name__)

SUPPORTED_LAYERS = (nn.Linear, Conv1D)


class NLoraModel(BaseTuner):
    """SLoRA / NLoRA / IntTune on a transformers model (paper §3, §4.3).

    Same target-module rules as PEFT's LoRA ('all-linear', names, regex; default targets per
    architecture from LoRA's table).
    """

    prefix: str = "lora_"
    tuner_layer_cls = NLoraLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    @classmethod
    def _get_adapter_state_dict(cls, model: nn.Module, config, adapter_name: str, state_dict: dict, *args, **kwargs):
        """PEFT >= 0.21 saves every tensor of a tuner layer; the residual factors (residual_A/N/B) are not adapter
        weights — they are rebuilt from the base on load — so the adapter file holds lora_* only, as on PEFT 0.20."""
        selected = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, *args, **kwargs)
        return {key: value for key, value in selected.items() if ".residual_" not in key}

    def _pre_injection_hook(self, model: nn.Module, config: NLoraConfig, adapter_name: str) -> None:
        """Reject an impossible NLoRA rank for any target layer before a single layer is initialised.

        Only the Nyström init needs r <= min(in, out) (it samples r distinct rows and columns of W); SLoRA's
        random A, N and zero B accept any r, as plain LoRA does.
        """
        super()._pre_injection_hook(model, config, adapter_name)
        if config.init_method != "nlora" or not isinstance(config.target_modules, (str, set, list)):
            return
        for name, module in model.named_modules():
            if not isinstance(module, SUPPORTED_LAYERS) or not self._check_target_module_exists(config, name):
                continue
            if isinstance(module, nn.Linear):
                in_features, out_features = module.in_features, module.out_features
            else:
                in_features, out_features = getattr(module.weight, "ds_shape", module.weight.shape)
            check_nlora_rank(config, in_features, out_features, f"target module {name}",
                             ", leave that module out of target_modules, or use init_method='slora' (any r).")

    def _post_injection_hook(self, model: nn.Module, config: NLoraConfig, adapter_name: str) -> None:
        """Residual mode: say, once per model, where the residual came out larger than W itself."""
        super()._post_injection_hook(model, config, adapter_name)
        ratios = {
            name: module.residual_ratio[adapter_name]
            for name, module in model.named_modules()
            if isinstance(module, NLoraLayer) and adapter_name in module.residual_ratio
        }
        larger = {name: ratio for name, ratio in ratios.items() if ratio > 1.0}
        if larger:
            worst = max(larger, key=larger.get)
            logger.warning(
                "NLoRA residual mode: in %d of %d layers ‖W − scale·B·N·A‖ > ‖W‖ (largest %.4f× in %s): the "
                "Nyström factors with nystrom_core=%r, nystrom_index=%r do not approximate W there; "
                "nystrom_core='optimal' with lora_alpha = r always gives a residual smaller than W.",
                len(larger), len(ratios), larger[worst], worst, config.nystrom_core, config.nystrom_index,
            )
        self._record_step0_diagnostics(model, config, adapter_name)

    def _record_step0_diagnostics(self, model: nn.Module, config: NLoraConfig, adapter_name: str) -> None:
        """How far the init moves each layer's weight (nlora_plugin.diagnostics): logged, warned, saved in the config.

        Loading a saved adapter recomputes the same figures (same seed, same factors) and never warns.
        """
        figures = measure(model, adapter_name, NLoraLayer)
        if figures is None:  # adapter on meta (low_cpu_mem_usage) or sharded weights: keep what the config holds
            return
        config.init_diagnostics = figures
        logger.info(summary_line(figures))
        if not config.inference_mode:
            warn_if_damaging(figures, residual=config.residual)

    def _create_and_replace(
        self,
        config: NLoraConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs,
    ) -> None:
        if isinstance(target, NLoraLinear):
            target.update_layer(adapter_name, config, current_key)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, SUPPORTED_LAYERS):
            raise TypeError(
                f"NLoRA adapts torch.nn.Linear and transformers Conv1D layers; target module {current_key} is a "
                f"{type(base).__name__}. Remove it from target_modules."
            )
        new_module = NLoraLinear(target, adapter_name, config, current_key)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added adapter is not trainable until set_adapter
        self._replace_module(parent, target_name, new_module, target)


# --- residual mode and the base model's state dict -------------------------------------------------------------
# Residual mode rewrites W to W - scale·B0·N0·A0 (PiSSA-style, as PEFT's PiSSA/OLoRA do), so PEFT's
# get_base_model_state_dict returns the *residual* weights, and set_base_model_state_dict with the original
# weights silently undoes the subtraction. These two functions are the original-weight counterparts.


def _residual_layers(model: PeftModel) -> list[tuple[str, NLoraLayer]]:
    """(original state-dict prefix, layer) of every layer holding a residual adapter; refuses merged layers."""
    found = []
    for name, module in model.base_model.model.named_modules():
        if isinstance(module, NLoraLayer) and module.residual_adapters():
            if module.merged:
                raise ValueError(
                    f"{name} has merged adapters {module.merged_adapters}: the base weight is not the residual; "
                    "call model.unmerge_adapter() first."
                )
            found.append((name, module))
    return found


def original_base_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """The base model's state dict with the original (pretrained) weights, in residual mode too.

    ``get_base_model_state_dict`` plus every residual adapter's initial product added back (float32, rounded
    once to the weight's dtype). Without residual adapters it equals ``get_base_model_state_dict``. The model
    must not be sharded (a gathered or single-process model).
    """
    state = get_base_model_state_dict(model)
    for name, layer in _residual_layers(model):
        key = f"{name}.weight"
        weight = state[key]
        state[key] = (weight.float() + layer.residual_product().to(weight.device)).to(weight.dtype)
    return state


def load_original_base_state_dict(model: PeftModel, state_dict: dict[str, torch.Tensor], strict: bool = True):
    """Load original (pretrained) base weights into a wrapped model and re-apply residual mode's subtraction.

    The counterpart of :func:`original_base_state_dict`: ``set_base_model_state_dict`` followed by
    W <- W - scale·B0·N0·A0 for every residual adapter, from the factors the layer kept, so the model is
    the one residual mode built. Returns ``set_base_model_state_dict``'s (missing_keys, unexpected_keys).
    """
    residual = _residual_layers(model)
    result = set_base_model_state_dict(model, state_dict, strict=strict)
    for _, layer in residual:
        layer.subtract_residuals()
    return result
