"""Fine-tuning methods by name -> the PEFT config a user would write for them.

`lora` and `pissa` are stock PEFT (`LoraConfig`), `slora`, `nlora` and `inttune` are `NLoraConfig` from
`nlora_plugin`, built through the public APIs exactly as a user calls them. The paper's NLU setup
(App. E) is rank 8 on query/value (RoBERTa) or query/key/value (DeBERTa), alpha = r, AdamW, cosine schedule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from peft import PeftConfig

from eval_harness.errors import ConfigError
from eval_harness.fields import get_float, get_int, parse_intended_differences
from eval_harness.results import SLUG, label_folder, seed_run_folder
from nlora_plugin.config import OPTION_FIELDS
from nlora_plugin.methods import METHODS

COMMON_FIELDS = ("name", "label", "r", "lora_alpha", "learning_rate", "target_modules", "lora_dropout",
                 "intended_differences")
# NLoraConfig fields a method entry may set (the rest are set here: head, task type, fixed init fields).
NLORA_EXTRA_FIELDS = (*OPTION_FIELDS, "bias")


@dataclass(frozen=True)
class MethodSpec:
    """One row of `methods:`: what to build and how it is named in the run folder and the report."""

    name: str  # lora | pissa | slora | nlora | inttune
    label: str  # what the report groups by ("LoRA", "NLoRA (pivoted)", ...)
    r: int = 8
    lora_alpha: float = 8.0
    learning_rate: float = 5e-4
    target_modules: tuple[str, ...] | str = ("query", "value")
    lora_dropout: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)  # extra NLoraConfig fields, passed through
    intended_differences: tuple[str, ...] = ()  # budget fields the report may see differ from the baseline

    @property
    def folder(self) -> str:
        """The label as a folder name (`NLoRA (pivoted)` -> `nlora-pivoted`)."""
        return label_folder(self.label)

    def run_label(self, seed: int) -> str:
        """`<label>` of the run directory for one seed."""
        return seed_run_folder(self.label, seed)


def build_peft_config(spec: MethodSpec, *, head_modules: list[str], task_type: str | None = "SEQ_CLS",
                      seed: int = 0) -> PeftConfig:
    """The PEFT config of `spec`; the head (`head_modules`) is trained in full via modules_to_save."""
    common = {
        "r": spec.r,
        "lora_alpha": spec.lora_alpha,
        "lora_dropout": spec.lora_dropout,
        "target_modules": list(spec.target_modules) if not isinstance(spec.target_modules, str)
        else spec.target_modules,
        "modules_to_save": list(head_modules),
        "task_type": task_type,
    }
    method = METHODS[spec.name]
    if not method.is_nlora:
        return method.peft_config(**common)
    options = {"seed": seed, **spec.options}  # a seed in the YAML wins over the run's seed
    return method.peft_config(**options, **common)


def parse_method(item: Any, *, where: str) -> MethodSpec:
    """Validate one `methods:` entry (no model is loaded; the PEFT config is built once to check it)."""
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: expected a mapping such as {{name: nlora, r: 8}}, got {item!r}")
    name = item.get("name")
    if name not in METHODS:
        raise ConfigError(f"{where}.name: {name!r} is not a method; use one of {', '.join(METHODS)}")
    allowed = COMMON_FIELDS + (NLORA_EXTRA_FIELDS if METHODS[name].is_nlora else ())
    for key in item:
        if key not in allowed:
            hint = (f"; {key!r} is an NLoraConfig option, so it needs name slora, nlora or inttune"
                    if key in NLORA_EXTRA_FIELDS else "")
            raise ConfigError(f"{where}.{key}: unknown field for method {name!r}; allowed: "
                              f"{', '.join(allowed)}{hint}")
    label = item.get("label", METHODS[name].label)
    if not isinstance(label, str) or not SLUG.sub("", label):
        raise ConfigError(f"{where}.label: expected a name such as 'NLoRA (pivoted)', got {label!r}")
    r = get_int(item, "r", where=where, default=8, minimum=1)
    spec = MethodSpec(
        name=name,
        label=label,
        r=r,
        lora_alpha=get_float(item, "lora_alpha", where=where, default=float(r), low=1e-12),
        learning_rate=get_float(item, "learning_rate", where=where, default=5e-4, low=1e-12),
        target_modules=_targets(item.get("target_modules", ["query", "value"]), where=f"{where}.target_modules"),
        lora_dropout=get_float(item, "lora_dropout", where=where, default=0.0, low=0.0, high=0.999),
        options={key: item[key] for key in NLORA_EXTRA_FIELDS if key in item},
        intended_differences=parse_intended_differences(item.get("intended_differences"), where=f"{where}.intended_differences"),
    )
    try:
        build_peft_config(spec, head_modules=["classifier"])
    except (ValueError, TypeError) as error:  # NLoraConfig names the field, the value and the fix
        raise ConfigError(f"{where}: {error}") from error
    return spec


def _targets(value: Any, *, where: str) -> tuple[str, ...] | str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(item, str) and item for item in value):
        return tuple(value)
    raise ConfigError(f"{where}: expected module names such as [query, value] or 'all-linear', got {value!r}")


def unique_labels(specs: list[MethodSpec], *, where: str) -> None:
    """Two methods with the same folder would overwrite each other's runs."""
    seen: dict[str, int] = {}
    for index, spec in enumerate(specs):
        if spec.folder in seen:
            raise ConfigError(
                f"{where}[{index}].label: {spec.label!r} gives the same run folder {spec.folder!r} as "
                f"{where}[{seen[spec.folder]}]; give one of them another `label`"
            )
        seen[spec.folder] = index


def spec_as_dict(spec: MethodSpec) -> dict[str, Any]:
    """JSON-ready form (for run.json and summaries)."""
    data = dataclasses.asdict(spec)
    data["target_modules"] = list(spec.target_modules) if not isinstance(spec.target_modules, str) \
        else spec.target_modules
    return data
