"""What an adapter folder is, before any model loads: valid, reproducible on the original base, and its provenance.

The harness evaluates an adapter on the *original* base model. Adapters whose init makes PEFT rewrite
the base weight at load time (PiSSA, OLoRA, CorDA, EVA, LoftQ) are refused unless converted to plain
LoRA (``nlora convert-lora``; the Axolotl plugin saves them converted), because the model PEFT would
rebuild is not the one that was trained. NLoRA's residual mode is recomputed deterministically by
the plugin from the base weight and a per-layer seed, so it is accepted (and checked by the probe).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from eval_harness.errors import ConfigError

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# adapter_config.json fields that name where or with which seed an adapter was made, not what it is
NOT_CONFIGURATION = ("base_model_name_or_path", "revision", "seed", "init_diagnostics", "inference_mode",
                     "peft_version", "auto_mapping")


def read_adapter_config(adapter: Path, *, where: str) -> dict[str, Any]:
    """adapter_config.json as a dict, with a known `peft_type`; ConfigError naming the problem otherwise."""
    path = adapter / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{where}: {path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: {path} must hold a JSON object (PEFT's adapter config), got a "
                          f"{type(config).__name__}; point it at a folder written by save_pretrained()")
    peft_type = str(config.get("peft_type", ""))
    known = known_peft_types()
    if peft_type.upper() not in known:
        raise ConfigError(f"{where}: {path} has peft_type {peft_type!r}, which this PEFT (with nlora_plugin) does "
                          f"not know; use an adapter of one of {', '.join(sorted(known))}")
    return config


def known_peft_types() -> set[str]:
    """PeftType names, NLoRA's included (importing nlora_plugin registers it)."""
    from peft import PeftType

    import nlora_plugin  # noqa: F401

    return {member.value for member in PeftType}


def check_adapter_folder(adapter: Path, *, where: str) -> dict[str, Any]:
    """A PEFT adapter folder the harness can evaluate exactly; returns its adapter_config.json."""
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(
            f"{where}: {adapter} has no adapter_config.json, so it is not a PEFT adapter folder; point it at "
            "the folder save_pretrained() wrote, or drop `adapter` to evaluate the base model"
        )
    if not any((adapter / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"{where}: {adapter} has adapter_config.json but no adapter_model.safetensors")
    config = read_adapter_config(adapter, where=where)
    refuse_base_rewrite(adapter, config, where=where)
    return config


def refuse_base_rewrite(adapter: Path, config: dict[str, Any], *, where: str) -> None:
    """ConfigError for a LoRA adapter that PEFT would evaluate on a recomputed (different) residual base."""
    from nlora_plugin.convert import base_rewrite, is_reproducible_on_load

    init = base_rewrite(config)
    if init is None:
        return
    converted = f"{adapter.name}-lora"
    if is_reproducible_on_load(init):
        fix = (f"nlora convert-lora --adapter {adapter} --base <the original base model> "
               f"--output {adapter.parent / converted}")
    else:
        fix = (f"nlora convert-lora --adapter {adapter} --initial-adapter <the step-0 adapter saved before "
               f"training> --output {adapter.parent / converted}; or retrain with "
               "`plugins: [nlora_plugin.axolotl.NLoraPlugin]` in the Axolotl config, which saves it converted")
    raise ConfigError(
        f"{where}: {adapter} is a LoRA adapter with init_lora_weights={init!r}: PEFT rewrites the base weight when "
        "it loads it (recomputing the init"
        + (", with a randomized SVD" if init.lower().startswith("pissa_niter") else "")
        + "), so the model evaluated would not be exactly the one trained. Convert it to plain LoRA on the "
        f"original base first: {fix}"
    )


def content_hash(folder: Path, names: tuple[str, ...] = ("adapter_config.json", *WEIGHT_FILES)) -> str:
    """sha256 over the named files of `folder` that exist (name and bytes), in a fixed order."""
    digest = hashlib.sha256()
    for name in names:
        path = folder / name
        if path.is_file():
            digest.update(name.encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def configuration(config: dict[str, Any]) -> dict[str, Any]:
    """The adapter config without the fields that say where or with which seed it was made."""
    return {key: value for key, value in sorted(config.items()) if key not in NOT_CONFIGURATION}


def provenance(adapter: Path | None, base_model: Path | None) -> dict[str, Any]:
    """What results.json records of a model entry: hashes, adapter config, training budget, step-0 figures."""
    from nlora_plugin.convert import CONVERSION_RECORD
    from nlora_plugin.training_record import read_training_settings

    record: dict[str, Any] = {
        "base_model": str(base_model) if base_model else None,
        "base_config_sha256": content_hash(base_model, ("config.json",)) if base_model else None,
        "adapter": str(adapter) if adapter else None,
    }
    if adapter is None:
        return record
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    conversion = adapter / CONVERSION_RECORD
    record.update(
        adapter_sha256=content_hash(adapter),
        adapter_config=configuration(config),
        init_diagnostics=config.get("init_diagnostics"),
        conversion=json.loads(conversion.read_text(encoding="utf-8")) if conversion.is_file() else None,
        training=read_training_settings(adapter),
    )
    return record


# vLLM's LoRA layers take these ranks only (vllm.config.lora.MaxLoRARanks, vLLM 0.32)
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def served_lora_rank(config: dict[str, Any]) -> int:
    """The rank of the plain LoRA that serves this adapter: NLoRA's export is rank 2r in residual mode."""
    rank = int(config["r"])
    if str(config.get("peft_type", "")).upper() == "NLORA" and config.get("residual"):
        return 2 * rank
    return rank


def check_servable_by_vllm(config: dict[str, Any], *, where: str) -> None:
    """ConfigError for an adapter vLLM cannot serve exactly as plain LoRA (checked before any model loads)."""
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type not in ("LORA", "NLORA"):
        raise ConfigError(f"{where}: peft_type {peft_type!r} cannot be served by vLLM, which runs LoRA adapters "
                          "only; use `generation.backend: hf` for it")
    reasons = []
    if config.get("use_dora"):
        reasons.append("use_dora is true (vLLM has no DoRA)")
    if config.get("modules_to_save"):
        reasons.append(f"modules_to_save is {config['modules_to_save']!r} (vLLM loads LoRA factors only)")
    if config.get("bias", "none") != "none":
        reasons.append(f"bias is {config['bias']!r} (vLLM has no LoRA biases)")
    if served_lora_rank(config) > VLLM_MAX_LORA_RANKS[-1]:
        reasons.append(f"its served rank {served_lora_rank(config)} exceeds vLLM's largest, {VLLM_MAX_LORA_RANKS[-1]}")
    if reasons:
        raise ConfigError(f"{where}: vLLM would not serve this adapter as trained: {'; '.join(reasons)}; "
                          "use `generation.backend: hf` for it")


def vllm_max_lora_rank(ranks: list[int]) -> int:
    """The smallest rank vLLM accepts as `max_lora_rank` that holds every served adapter."""
    largest = max(ranks, default=1)
    return next(rank for rank in VLLM_MAX_LORA_RANKS if rank >= largest)
