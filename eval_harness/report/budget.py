"""What each row was trained with, which runs may be pooled as seeds, and which comparisons are unfair.

Two runs are seeds of one method only when their whole adapter and training configuration is the same
except the seed; runs of one method name with different configurations become separate rows, named
after the fields that differ. A row's budget (rank, learning rate and schedule, steps × effective batch)
is compared with the baseline's on the same base model, and every difference the eval YAML does not
declare intended (`intended_differences`) is flagged.
"""

from __future__ import annotations

import json
from typing import Any

from eval_harness.fields import BUDGET_FIELDS

from .load import ReportError, Runs

# training-settings fields that are not how a run was trained: where or with which seed it was made, its outcome
NOT_CONFIGURATION = ("seed", "written_by", "schema_version", "loss_curve")
PARITY_FIELDS = BUDGET_FIELDS  # the budget fields model entries may declare as intended differences


def glue_budget(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The budget of a GLUE fine-tune, from its summary.json's `extra` (method spec, train block, steps)."""
    extra = summary.get("extra") or {}
    spec, train, steps = extra.get("method_spec"), extra.get("train"), extra.get("steps")
    if not spec or not train:
        return None
    batch = int(train["batch_size"])
    return {"rank": spec["r"], "lora_alpha": spec["lora_alpha"], "learning_rate": spec["learning_rate"],
            "lr_schedule": f"cosine, warmup {train.get('warmup_ratio')}", "micro_batch_size": batch,
            "gradient_accumulation_steps": 1, "world_size": 1, "effective_batch_size": batch, "steps": steps,
            "samples": steps * batch if steps is not None else None,
            "intended_differences": list(spec.get("intended_differences") or [])}


def adapter_budget(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The budget of an adapter evaluated by `eval-harness run`, from <label>/model.json."""
    if not record or not (record.get("provenance") or {}).get("adapter"):
        return None
    provenance = record["provenance"]
    training = provenance.get("training") or {}
    conversion = provenance.get("conversion") or {}
    config = provenance.get("adapter_config") or {}
    rank = training.get("r") or conversion.get("original_r") or config.get("r")  # the rank that was trained
    schedule = None
    if training.get("lr_scheduler"):
        warmup = training.get("warmup_steps") or training.get("warmup_ratio")
        schedule = f"{training['lr_scheduler']}, warmup {warmup}"
    budget = {name: training.get(name) for name in ("learning_rate", "micro_batch_size", "gradient_accumulation_steps",
                                                     "world_size", "effective_batch_size", "steps", "samples")}
    return {**budget, "rank": rank, "lora_alpha": training.get("lora_alpha", config.get("lora_alpha")),
            "lr_schedule": schedule, "intended_differences": list(record.get("intended_differences") or []),
            "recorded": bool(training)}


def configuration_key(budget_source: dict[str, Any] | None) -> str:
    """A fingerprint of everything but the seed: equal keys may be pooled as seeds of one method."""
    if not budget_source:
        return ""
    return json.dumps(budget_source, sort_keys=True, default=str)


def _described(fields: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in fields.items())


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value


def differing_fields(configurations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration, the (flattened) fields whose values are not the same in all of them."""
    flat = []
    for configuration in configurations:
        out: dict[str, Any] = {}
        _flatten("", configuration, out)
        flat.append(out)
    names = sorted({name for item in flat for name in item})
    differing = [name for name in names if len({json.dumps(item.get(name), default=str) for item in flat}) > 1]
    return [{name.split(".")[-1]: item.get(name) for name in differing} for item in flat]


def split_configurations(runs: Runs, configuration_of: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Rename methods whose runs have different configurations to "<method> [<differing fields>]".

    `configuration_of` maps (run_dir, label) to that label's configuration (without its seed). Returns
    one note per split, for the report's header.
    """
    groups: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for item in [*runs.results, *runs.trainings]:
        configuration = configuration_of.get((str(item.run_dir), item.label)) or {}
        groups.setdefault((item.model, item.method), {})[configuration_key(configuration)] = configuration
    renames: dict[tuple[str, str, str], str] = {}
    notes = []
    for (model, method), configurations in groups.items():
        if len(configurations) < 2:
            continue
        keys = list(configurations)
        names = [f"{method} [{_described(fields) or 'recorded configuration missing'}]"
                 for fields in differing_fields([configurations[key] for key in keys])]
        if len(set(names)) < len(names):  # differing only in nested values with the same leaf name
            names = [f"{method} [configuration {index + 1}]" for index in range(len(keys))]
        for key, name in zip(keys, names):
            renames[(model, method, key)] = name
        notes.append(f"{len(keys)} different configurations were labelled {method!r}; they are separate rows ("
                     f"{'; '.join(names)}), not seeds of one method. Name them with `method:` in the eval YAML.")
    if renames:
        runs.rename_methods(lambda item: renames.get(
            (item.model, item.method, configuration_key(configuration_of.get((str(item.run_dir), item.label)) or {}))))
    return notes


def check_baseline_not_split(baseline: str | None, runs: Runs) -> None:
    """A baseline that names several configurations is ambiguous."""
    if baseline is None or baseline in runs.methods:
        return
    variants = [method for method in runs.methods if method.startswith(f"{baseline} [")]
    if variants:
        raise ReportError(f"baseline {baseline!r} names {len(variants)} different configurations ({'; '.join(variants)}); "
                          "give each its own `method:` in the eval YAML and pass one of them as the baseline")


def parity_flags(budgets: dict[str, dict[str, Any] | None], baseline_of: dict[str, str | None],
                 first_row_of: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Per row, the budget fields that differ from its reference row (the baseline, else the first adapter row).

    A field the row declares in `intended_differences` is not flagged; a field one side did not record
    is flagged as unknown (a comparison that cannot be checked is not called fair).
    """
    flags: dict[str, list[dict[str, Any]]] = {}
    for row, budget in budgets.items():
        reference = baseline_of.get(row) or first_row_of.get(row)
        if budget is None or reference is None or reference == row:
            continue
        other = budgets.get(reference)
        if other is None:
            continue
        intended = set(budget.get("intended_differences") or [])
        for name in PARITY_FIELDS:
            if name in intended:
                continue
            mine, theirs = budget.get(name), other.get(name)
            if mine is None or theirs is None:
                flags.setdefault(row, []).append({"field": name, "value": mine, "reference_value": theirs,
                                                  "reference": reference, "unknown": True})
            elif mine != theirs:
                flags.setdefault(row, []).append({"field": name, "value": mine, "reference_value": theirs,
                                                  "reference": reference, "unknown": False})
    return flags


def describe_flag(flag: dict[str, Any]) -> str:
    if flag["unknown"]:
        return f"{flag['field']} not recorded"
    return f"{flag['field']} {flag['value']} vs {flag['reference_value']}"
