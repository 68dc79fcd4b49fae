"""Adapters that leave `axolotl train` reproducible anywhere: PiSSA-style inits converted, budgets recorded.

A LoRA adapter whose init rewrites the base weight (``peft_init_lora_weights: pissa_niter_4``, ...) is
only the trained model on the residual base PEFT recomputes on load, randomly for ``pissa_niter_*``.
The plugin keeps the step-0 factors when the adapter is built and, once the final adapter is saved,
rewrites it as plain LoRA relative to the original base (``nlora_plugin.convert``). Checkpoints stay as
the trainer wrote them (they are for resuming training, not for evaluation).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from axolotl.utils.dict import DictDefault
from axolotl.utils.logging import get_logger
from peft import PeftModel
from peft.utils import get_peft_model_state_dict

from nlora_plugin.convert import (
    ADAPTER_WEIGHTS,
    CONVERSION_RECORD,
    INITIAL_ADAPTER_DIR,
    base_rewrite,
    convert_adapter_folder,
    save_initial_adapter,
)
from nlora_plugin.training_record import budget_record, write_training_settings

LOG = get_logger("axolotl.integrations.nlora")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def keep_initial_adapter(cfg: DictDefault, model: Any) -> bool:
    """Save the step-0 factors of a base-rewriting LoRA init under output_dir; True if it did."""
    if not isinstance(model, PeftModel) or "default" not in model.peft_config:
        return False
    config = model.peft_config["default"].to_dict()
    init = base_rewrite(config)
    if init is None:
        return False
    if cfg.lora_model_dir:
        LOG.warning("init_lora_weights=%s with lora_model_dir: the adapter did not start from its own init, so it "
                    "cannot be converted to plain LoRA; evaluate it on the residual base it was trained on", init)
        return False
    state = get_peft_model_state_dict(model)
    if is_main_process():
        save_initial_adapter(state, config, Path(cfg.output_dir) / INITIAL_ADAPTER_DIR)
        LOG.info("init_lora_weights=%s rewrites the base weight: the step-0 adapter is kept so that the final "
                 "adapter is saved as plain LoRA on the original base", init)
    return True


def convert_final_adapter(cfg: DictDefault) -> Path | None:
    """After the final save: rewrite output_dir's adapter as plain LoRA (rank 2r) on the original base."""
    output = Path(cfg.output_dir)
    initial = output / INITIAL_ADAPTER_DIR
    saved = output / ADAPTER_WEIGHTS
    if not is_main_process() or not initial.is_dir() or not saved.is_file():
        return None
    if saved.stat().st_mtime < (initial / ADAPTER_WEIGHTS).stat().st_mtime:
        return None  # not yet saved in this run (post_train also runs before the final save)
    convert_adapter_folder(output, initial)
    shutil.rmtree(initial, ignore_errors=True)
    LOG.info("Saved the adapter as plain LoRA relative to the original base (%s): stock PEFT reproduces the "
             "trained model without recomputing the init", CONVERSION_RECORD)
    return output


def record_training(cfg: DictDefault, trainer: Any) -> None:
    """Write output_dir/training_settings.json from the finished trainer (the main process only)."""
    if trainer is None or not is_main_process():
        return
    model = trainer.model
    peft_config = model.peft_config.get("default") if isinstance(model, PeftModel) else None
    adapter = {
        "adapter": cfg.adapter,
        "r": getattr(peft_config, "r", cfg.lora_r),
        "lora_alpha": getattr(peft_config, "lora_alpha", cfg.lora_alpha),
        "target_modules": sorted(getattr(peft_config, "target_modules", None) or []),
    }
    extra = {"sequence_len": cfg.sequence_len, "datasets": [str(d.get("path")) for d in (cfg.datasets or [])],
             "bf16": bool(cfg.bf16), "fp16": bool(cfg.fp16), "written_by": "nlora_plugin.axolotl"}
    write_training_settings(Path(cfg.output_dir), budget_record(trainer.args, trainer.state, adapter, extra))


def save_on_rank_zero_only(trainer: Any) -> bool:
    """Make the Trainer write checkpoints and the final adapter from global rank 0 only; True if it had to.

    Where the Trainer's own state misses the process group (seen under DeepSpeed ZeRO-3 with torchrun on
    CPU: it counts a world size of 1), every rank passes `args.should_save` and writes
    adapter_model.safetensors; a rank > 0 writes its own ZeRO-3 shards (empty tensors) over rank 0's
    gathered file. The gather itself (`save_model`) still runs on every rank, as it must (a collective);
    only the write (`_save`) is skipped on ranks > 0.
    """
    import torch.distributed as dist

    if trainer is None or not dist.is_available() or not dist.is_initialized() or dist.get_rank() == 0:
        return False
    if not trainer.args.should_save:
        return False  # the Trainer already knows it is not the main process
    rank = dist.get_rank()

    def skip_write(*args: Any, **kwargs: Any) -> None:
        LOG.info("rank %d: not writing %s; rank 0 writes the gathered adapter", rank, args[0] if args else "")

    trainer._save = skip_write
    return True
