"""The ``nlora:`` block of an Axolotl config and the checks on the rest of the config it needs.

Plain LoRA fields stay where Axolotl keeps them (``lora_r``, ``lora_alpha``, ``lora_dropout``,
``lora_target_modules`` / ``lora_target_linear``, ``lora_modules_to_save``); ``adapter:`` picks the method.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from nlora_plugin.config import OPTION_FIELDS, NLoraConfig
from nlora_plugin.methods import METHODS, NLORA_METHODS

# adapter name -> (NLoraConfig.init_method, NLoraConfig.train_only_intermediate), from the method table
ADAPTERS: dict[str, tuple[str, bool]] = {
    name: (METHODS[name].nlora_fields["init_method"], bool(METHODS[name].nlora_fields.get("train_only_intermediate")))
    for name in NLORA_METHODS
}

_SET_BY_ADAPTER = {"init_method", "train_only_intermediate"}
_QUANTIZED_FIELDS = ("load_in_4bit", "load_in_8bit", "gptq")


# `nlora:` holds NLoraConfig's OPTION_FIELDS (plain LoRA's stay in Axolotl's lora_* fields; the method is
# chosen by `adapter:`). Their types, defaults and help are NLoraConfig's own: one definition of each option.


class _NLoraOptionsBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _reject_fields_set_by_adapter(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in sorted(_SET_BY_ADAPTER & set(data)):
                raise ValueError(
                    f"nlora.{name} is not a config field: the method is chosen by `adapter:` "
                    "(nlora = Nyström init, slora = SLoRA, inttune = NLoRA training only the middle matrix N); "
                    f"remove nlora.{name}"
                )
        return data

    @model_validator(mode="after")
    def _check_with_nlora_config(self) -> _NLoraOptionsBase:
        """NLoraConfig's own value checks (pinv_rtol's range, ...), named as the YAML names them."""
        try:
            NLoraConfig(**self.model_dump())
        except ValueError as error:
            raise ValueError(str(error).replace("NLoraConfig.", "nlora.")) from None
        return self


def _option_field(name: str) -> tuple[Any, Any]:
    config_field = next(item for item in dataclasses.fields(NLoraConfig) if item.name == name)
    annotation = typing.get_type_hints(NLoraConfig)[name]
    return annotation, Field(default=config_field.default, description=config_field.metadata["help"])


NLoraOptions = create_model(
    "NLoraOptions",
    __base__=_NLoraOptionsBase,
    __doc__="Options of NLoraConfig that plain LoRA has no field for (defaults = the authors' code).",
    **{name: _option_field(name) for name in OPTION_FIELDS},
)


class NLoraArgs(BaseModel):
    """Mixed into Axolotl's config model by the plugin: adds ``nlora:`` and checks the config around it."""

    nlora: NLoraOptions | None = Field(
        default=None,
        description="NLoRA options (register nlora_plugin.axolotl.NLoraPlugin); used with adapter: "
        "nlora | slora | inttune.",
    )

    @model_validator(mode="before")
    @classmethod
    def _check_nlora_adapter(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        adapter = data.get("adapter")
        if adapter not in ADAPTERS:
            if data.get("nlora") is not None:
                raise ValueError(
                    f"nlora: is set but adapter is {adapter!r}; use adapter: nlora, slora or inttune, "
                    "or remove the nlora: block"
                )
            return data
        quantized = [name for name in _QUANTIZED_FIELDS if data.get(name)]
        if quantized:
            raise ValueError(
                f"adapter: {adapter} cannot train on a quantized base ({', '.join(f'{q}: true' for q in quantized)}): "
                "the Nyström init reads and (with residual) rewrites the full-precision weight. Use a plain "
                "bf16 or fp32 base (drop load_in_4bit / load_in_8bit / gptq), or adapter: qlora for a "
                "quantized base."
            )
        if data.get("merge_lora") and data.get("merge_method", "memory_efficient") != "legacy":
            raise ValueError(
                f"merge_method={data.get('merge_method', 'memory_efficient')!r} cannot merge adapter: {adapter}: "
                "Axolotl's memory-efficient merge reads only plain LoRA A/B weights. Set merge_method: legacy "
                "(merges through PEFT with the plugin loaded) or run `nlora merge --base B --adapter A --output O`."
            )
        _check_lora_fields(data, adapter)
        for name in ("peft_use_dora", "peft_use_rslora", "peft_init_lora_weights", "lora_target_parameters"):
            if data.get(name):
                raise ValueError(
                    f"{name} is a plain-LoRA option and has no meaning for adapter: {adapter}; remove it "
                    "(NLoRA's own options go under nlora:)"
                )
        return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_lora_fields(data: dict[str, Any], adapter: str) -> None:
    """lora_r, lora_alpha and lora_dropout, checked before any model loads (Axolotl accepts any number)."""
    r, alpha, dropout = data.get("lora_r"), data.get("lora_alpha"), data.get("lora_dropout")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"lora_r is {r!r}; adapter: {adapter} needs a whole number of at least 1 (e.g. lora_r: 16)")
    if alpha is not None and (not _is_number(alpha) or not alpha > 0):
        raise ValueError(f"lora_alpha is {alpha!r}; use a positive number (the paper uses lora_alpha = lora_r)")
    if dropout is not None and (not _is_number(dropout) or not 0 <= dropout < 1):
        raise ValueError(f"lora_dropout is {dropout!r}; use a number from 0 up to (not including) 1, e.g. 0.0")
    if adapter == "slora":
        return  # SLoRA's A, N, B are not taken from W: any rank works, as in plain LoRA
    smallest = _smallest_target_dimension(data)
    if smallest is not None and r > smallest[0]:
        raise ValueError(
            f"lora_r is {r}, larger than {smallest[1]} = {smallest[0]} in {data.get('base_model')}/config.json: "
            f"adapter: {adapter} samples r rows and columns of each target weight, so r must not exceed its "
            f"smaller dimension; use lora_r <= {smallest[0]}, or adapter: slora (any rank)"
        )


def _smallest_target_dimension(data: dict[str, Any]) -> tuple[int, str] | None:
    """The smallest dimension of the targeted weights, from a local base model's config.json (None: unknown)."""
    folder = data.get("base_model")
    if not isinstance(folder, str) or not (Path(folder) / "config.json").is_file():
        return None  # a hub name or a missing folder: the layer check at init still applies
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    hidden = next((config[key] for key in ("hidden_size", "n_embd", "d_model") if isinstance(config.get(key), int)),
                  None)
    if hidden is None:
        return None
    found = [(hidden, "hidden_size")]
    targets = data.get("lora_target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    heads, kv_heads = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if isinstance(heads, int) and isinstance(kv_heads, int) and heads > 0 and (
            data.get("lora_target_linear") or any("k_proj" in str(t) or "v_proj" in str(t) for t in targets)):
        head_dim = config.get("head_dim") if isinstance(config.get("head_dim"), int) else hidden // heads
        found.append((kv_heads * head_dim, "num_key_value_heads × head_dim (k_proj/v_proj outputs)"))
    return min(found)
