"""NLoraModel: the PEFT tuner that finds target modules and swaps in NLoRA layers."""

from __future__ import annotations

import logging

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import NLoraConfig
from .diagnostics import measure, summary_line, warn_if_damaging
from .layer import NLoraLayer, NLoraLinear

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
            if config.r > min(in_features, out_features):
                raise ValueError(
                    f"NLoraConfig.r={config.r} is larger than the smaller dimension of target module {name} "
                    f"({out_features}×{in_features}): NLoRA samples r distinct rows and columns of W; use "
                    f"r <= {min(in_features, out_features)}, leave that module out of target_modules, or use "
                    "init_method='slora' (any r)."
                )

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
