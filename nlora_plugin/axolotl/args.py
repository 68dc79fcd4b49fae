"""The ``nlora:`` block of an Axolotl config and the checks on the rest of the config it needs.

Plain LoRA fields stay where Axolotl keeps them (``lora_r``, ``lora_alpha``, ``lora_dropout``,
``lora_target_modules`` / ``lora_target_linear``, ``lora_modules_to_save``); ``adapter:`` picks the method.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nlora_plugin.methods import METHODS, NLORA_METHODS
from nlora_plugin.nystrom import CoreChoice, IndexChoice

# adapter name -> (NLoraConfig.init_method, NLoraConfig.train_only_intermediate), from the method table
ADAPTERS: dict[str, tuple[str, bool]] = {
    name: (METHODS[name].nlora_fields["init_method"], bool(METHODS[name].nlora_fields.get("train_only_intermediate")))
    for name in NLORA_METHODS
}

_SET_BY_ADAPTER = {"init_method", "train_only_intermediate"}
_QUANTIZED_FIELDS = ("load_in_4bit", "load_in_8bit", "gptq")


class NLoraOptions(BaseModel):
    """Options of NLoraConfig that plain LoRA has no field for (defaults = the authors' code)."""

    model_config = ConfigDict(extra="forbid")

    nystrom_core: CoreChoice = Field(
        default="sample",
        description="N for NLoRA: 'sample' = the sampled r×r block A_W (authors' code); 'pinv' = pinv(A_W) "
        "(eq. 5 read literally); 'optimal' = least-squares core for the same rows and columns.",
    )
    nystrom_index: IndexChoice = Field(
        default="first",
        description="Which r rows/columns of W are sampled: 'first' (authors' code), 'random' (seeded), "
        "'pivoted' (DEIM pivots of W's approximate top-r singular vectors).",
    )
    pinv_rtol: float = Field(
        default=1e-2, ge=0.0, lt=1.0, description="Relative singular-value cut-off for 'pinv' and 'optimal'."
    )
    residual: bool = Field(
        default=False,
        description="Subtract scale·B·N·A from the frozen weight so the output at step 0 is the pretrained one.",
    )
    slora_n_init: Literal["kaiming", "gaussian"] = Field(
        default="kaiming", description="SLoRA's N: Kaiming uniform (paper, App. B) or Gaussian (std 1/r)."
    )
    seed: int = Field(default=0, description="Seed of every random init (per layer, so ZeRO-3 ranks agree).")

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
        for name in ("peft_use_dora", "peft_use_rslora", "peft_init_lora_weights", "lora_target_parameters"):
            if data.get(name):
                raise ValueError(
                    f"{name} is a plain-LoRA option and has no meaning for adapter: {adapter}; remove it "
                    "(NLoRA's own options go under nlora:)"
                )
        return data
