"""NLoraPlugin: Axolotl builds and reloads SLoRA / NLoRA / IntTune adapters through stock PEFT."""

from __future__ import annotations

import os

from axolotl.integrations.base import AdapterCapabilities, BasePlugin
from axolotl.utils.dict import DictDefault
from axolotl.utils.logging import get_logger
from peft import PeftModel, get_peft_model
from transformers import PreTrainedModel

from nlora_plugin import NLoraConfig  # importing the core registers the PEFT method
from nlora_plugin.distributed import is_zero3_partitioned

from .args import ADAPTERS, NLoraOptions
from .portable import convert_final_adapter, keep_initial_adapter, record_training, save_on_rank_zero_only

LOG = get_logger("axolotl.integrations.nlora")  # Axolotl prints INFO only from "axolotl.*" loggers


def target_modules(model: PreTrainedModel, cfg: DictDefault) -> list[str]:
    """Axolotl's rule: ``lora_target_modules`` plus, with ``lora_target_linear``, every linear but the LM head."""
    from axolotl.loaders.adapter import find_all_linear_names

    names = cfg.lora_target_modules or []
    names = [names] if isinstance(names, str) else list(names)
    if cfg.lora_target_linear:
        names = sorted(set(names) | set(find_all_linear_names(model)))
    if not names:
        raise ValueError(f"adapter: {cfg.adapter} needs lora_target_modules or lora_target_linear: true")
    return names


def task_type(model: PreTrainedModel) -> str:
    """PEFT task type from the model class, as Axolotl does for LoRA."""
    name = type(model).__name__
    if "SequenceClassification" in name:
        return "SEQ_CLS"
    if "TokenClassification" in name:
        return "TOKEN_CLS"
    return "CAUSAL_LM"


def build_nlora_config(model: PreTrainedModel, cfg: DictDefault) -> NLoraConfig:
    """The NLoraConfig an Axolotl config asks for (``adapter:`` picks the method, ``nlora:`` the options)."""
    init_method, only_n = ADAPTERS[cfg.adapter]
    options = NLoraOptions(**dict(cfg.nlora or {}))
    return NLoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout or 0.0,
        target_modules=target_modules(model, cfg),
        exclude_modules=cfg.lora_exclude_modules or None,
        modules_to_save=list(cfg.lora_modules_to_save) if cfg.lora_modules_to_save else None,
        layers_to_transform=cfg.peft_layers_to_transform,
        layers_pattern=cfg.peft_layers_pattern,
        init_method=init_method,
        train_only_intermediate=only_n,
        task_type=task_type(model),
        **options.model_dump(),
    )


class NLoraPlugin(BasePlugin):
    """Registers ``adapter: nlora | slora | inttune`` and the ``nlora:`` config block with Axolotl."""

    def __init__(self) -> None:
        super().__init__()
        self._trainer = None

    def get_input_args(self) -> str:
        return "nlora_plugin.axolotl.args.NLoraArgs"

    def get_adapter_capabilities(self) -> list[AdapterCapabilities]:
        return [AdapterCapabilities(name=name) for name in ADAPTERS]

    def load_adapter(
        self,
        model: PreTrainedModel,
        cfg: DictDefault,
        inference: bool = False,
        config_only: bool = False,
    ) -> tuple[PreTrainedModel | PeftModel | None, NLoraConfig] | None:
        """Wrap `model` with a new adapter, or reload ``lora_model_dir``; None for other adapters."""
        if cfg.adapter not in ADAPTERS:
            return None
        config = build_nlora_config(model, cfg)
        if config_only:
            return None, config
        if cfg.lora_model_dir:
            LOG.info("Loading %s adapter from %s", cfg.adapter, cfg.lora_model_dir)
            peft_model = PeftModel.from_pretrained(model, cfg.lora_model_dir, is_trainable=not inference)
        else:
            partitioned = sum(is_zero3_partitioned(p) for p in model.parameters())
            if partitioned:
                LOG.info("ZeRO-3: %d base parameters are partitioned; the init gathers one layer at a time", partitioned)
            LOG.info(
                "Initialising %s adapter (r=%s, nystrom_core=%s, nystrom_index=%s, residual=%s) on %d module names",
                cfg.adapter, config.r, config.nystrom_core, config.nystrom_index, config.residual,
                len(config.target_modules),
            )
            peft_model = get_peft_model(model, config)
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            peft_model.print_trainable_parameters()
        return peft_model, peft_model.peft_config["default"]

    def post_lora_load(self, cfg: DictDefault, model: PreTrainedModel | PeftModel) -> None:
        """A PiSSA-style LoRA (``adapter: lora``) keeps its step-0 factors, to be saved as plain LoRA."""
        keep_initial_adapter(cfg, model)

    def post_trainer_create(self, cfg: DictDefault, trainer) -> None:
        self._trainer = trainer
        if save_on_rank_zero_only(trainer):
            LOG.info("the Trainer counts this rank as the main process; only global rank 0 will write the adapter")

    def post_train(self, cfg: DictDefault, model: PreTrainedModel | PeftModel) -> None:
        """Record the training budget; once the final adapter is saved, make a PiSSA-style one portable."""
        record_training(cfg, self._trainer)
        convert_final_adapter(cfg)


__all__ = ["NLoraPlugin", "build_nlora_config"]
