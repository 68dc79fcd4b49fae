"""report.md and index.html from the results dict: the same tables, as Markdown and as HTML."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import jinja2
import markupsafe

from .budget import describe_flag


@dataclass
class Table:
    """A titled table of display strings, rendered to Markdown and HTML alike."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    figures: list[str] = field(default_factory=list)  # PNG file names shown under the table
    text_columns: int = 1  # leading columns of text (left-aligned); the rest are numbers


def _number(value: float | None, percent: bool, digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value * (100 if percent else 1):.{digits}f}"


def _multi_model(results: dict[str, Any]) -> bool:
    return len(results["models"]) > 1


def _name_headers(results: dict[str, Any]) -> list[str]:
    """The row-naming columns: Method, or Model and Method when the runs span several base models."""
    return ["Model", "Method"] if _multi_model(results) else ["Method"]


def _row_names(results: dict[str, Any], key: str) -> list[str]:
    row = results["table"][key]
    method = f"{row['method']} (baseline)" if row["method"] == results["baseline"] else row["method"]
    return [row["model"], method] if _multi_model(results) else [method]


def _parity_cell(row: dict[str, Any]) -> str:
    """The main table's budget column: "same" as the reference row, the differences, or — (no budget)."""
    if row.get("budget") is None:
        return "—"
    flags = row.get("budget_flags") or []
    if not flags:
        return "same"
    return "⚠ " + "; ".join(describe_flag(flag) for flag in flags)


def main_table(results: dict[str, Any]) -> Table:
    """The paper's layout: methods × benchmarks (primary metric, ×100 for fractions), #Params and budget parity."""
    benches = results["benchmarks"]
    with_budget = any(row.get("budget") for row in results["table"].values())
    rows = []
    for method in results["methods"]:
        row = results["table"][method]
        cells = [*_row_names(results, method), row["params_display"]]
        for bench in benches:
            cell = row["benchmarks"].get(bench["key"])
            text = _number(cell["estimate"], bench["percent"]) if cell else "—"
            test = results["significance"].get(bench["key"], {}).get(method)
            if test and test["significant"]:
                text += "*"
            cells.append(text)
        if with_budget:
            cells.append(_parity_cell(row))
        rows.append(cells)
    caption = ("Mean over seeds of each benchmark's primary metric ("
               + ", ".join(f"{b['name']}: {b['primary_metric']}{' ×100' if b['percent'] else ''}"
                           f"{', lower is better' if b.get('lower_is_better') else ''}" for b in benches)
               + "). #Params = trainable parameters.")
    if results["baseline"]:
        caption += (f" * = differs from {results['baseline']} at p < {results['statistics']['significance_level']}"
                    " (paired bootstrap).")
    budget_header = ["Budget vs " + (results["baseline"] or "first row")] if with_budget else []
    if with_budget:
        caption += (f" {budget_header[0]}: samples (steps × effective batch), rank, learning rate and schedule "
                    "compared; ⚠ marks a difference the eval YAML does not declare intended (see Training budget).")
    return Table("Results (paper layout)",
                 [*_name_headers(results), "#Params", *[b["name"] for b in benches], *budget_header],
                 rows, caption, text_columns=len(_name_headers(results)))


def _scientific(value: Any) -> str:
    return "—" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def budget_table(results: dict[str, Any]) -> Table | None:
    """What every row was trained with, its step-0 update size and how exactly its adapter reloaded."""
    keys = [key for key in results["methods"] if results["table"][key].get("budget") or
            results["table"][key].get("evaluated")]
    if not keys:
        return None
    rows = []
    for key in keys:
        row = results["table"][key]
        budget = row.get("budget") or {}
        batch = "—"
        if budget.get("effective_batch_size") is not None:
            batch = (f"{budget.get('micro_batch_size')}×{budget.get('gradient_accumulation_steps')}×"
                     f"{budget.get('world_size')} = {budget['effective_batch_size']}")
        evaluated = row.get("evaluated") or []
        diagnostics = [e["init_diagnostics"]["max_relative_update"] for e in evaluated
                       if isinstance(e.get("init_diagnostics"), dict)
                       and e["init_diagnostics"].get("max_relative_update") is not None]
        probes = [e["probe"]["relative_delta"] for e in evaluated if e.get("probe")]
        converted = sorted({e["converted_from"] for e in evaluated if e.get("converted_from")})
        rows.append([*_row_names(results, key), _scientific(budget.get("rank")), _scientific(budget.get("lora_alpha")),
                     _scientific(budget.get("learning_rate")), str(budget.get("lr_schedule") or "—"), batch,
                     _scientific(budget.get("steps")), _scientific(budget.get("samples")),
                     ", ".join(budget.get("intended_differences") or []) or "—",
                     f"{max(diagnostics):.3g}" if diagnostics else "—",
                     f"{max(probes):.3g}" if probes else "—",
                     ("plain LoRA (from " + ", ".join(converted) + ")") if converted else "—"])
    caption = ("rank = the rank trained (a PiSSA adapter saved as plain LoRA has rank 2r on disk); batch = micro × "
               "gradient accumulation × processes; samples = steps × effective batch. Step-0 update = the largest "
               "‖scale·B·N·A‖_F / ‖W‖_F over adapted layers at init (NLoRA). Probe Δ = max |Δ logit| / logit scale of "
               "the loaded adapter against the base on a fixed input (0 would mean the adapter does nothing).")
    return Table("Training budget", [*_name_headers(results), "r", "alpha", "lr", "schedule", "batch", "steps",
                                     "samples", "intended differences", "step-0 update", "probe Δ", "saved as"],
                 rows, caption, text_columns=len(_name_headers(results)))


def ci_table(results: dict[str, Any]) -> Table:
    """The same cells with their 95 % bootstrap intervals and how many seeds/items they rest on."""
    benches = results["benchmarks"]
    rows = []
    for method in results["methods"]:
        cells = _row_names(results, method)
        for bench in benches:
            cell = results["table"][method]["benchmarks"].get(bench["key"])
            cells.append(_with_ci(cell, bench["percent"]) if cell else "—")
        rows.append(cells)
    stats = results["statistics"]
    caption = (f"Estimate [95 % CI]; {stats['interval']}, {stats['n_resamples']} resamples, RNG seed "
               f"{stats['rng_seed']}. n = seeds × items.")
    return Table("Confidence intervals", [*_name_headers(results), *[b["name"] for b in benches]], rows, caption,
                 figures=[f"bars_{b['key']}.png" for b in benches], text_columns=len(_name_headers(results)))


def _with_ci(cell: dict[str, Any], percent: bool) -> str:
    text = _number(cell["estimate"], percent)
    if cell.get("ci_low") is not None:
        text += f" [{_number(cell['ci_low'], percent)}, {_number(cell['ci_high'], percent)}]"
        items = cell["n_items"]
        text += f" (n={len(items)}×{items[0]})" if len(set(items)) == 1 else f" (n={len(items)} seeds)"
    else:
        text += f" (n={cell['n_seeds']}, no items: no CI)"
    return text


def significance_table(results: dict[str, Any]) -> Table | None:
    if not results["baseline"]:
        return None
    rows = []
    for bench in results["benchmarks"]:
        for method, test in results["significance"].get(bench["key"], {}).items():
            pct = bench["percent"]
            rows.append([
                bench["name"], method,
                f"{test['difference_estimate'] * (100 if pct else 1):+.2f}",
                f"[{_number(test['difference_ci_low'], pct)}, {_number(test['difference_ci_high'], pct)}]",
                _p(test["p_value"]), _p(test["mcnemar_p"]), str(test["n_item_pairs"]), str(test["n_seed_pairs"]),
            ])
    test = results["statistics"]["test"]
    caption = (f"Method − {results['baseline']} on the primary metric (×100 for fractions). "
               f"{test[0].upper()}{test[1:]}.")
    return Table(f"Significance against {results['baseline']}",
                 ["Benchmark", "Method", "Δ", "95 % CI of Δ", "p (bootstrap)", "p (McNemar)", "item pairs",
                  "seed pairs"], rows, caption, text_columns=2)


def _p(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def metric_tables(results: dict[str, Any]) -> list[Table]:
    """One table per benchmark with every metric its summaries report."""
    tables = []
    for bench in results["benchmarks"]:
        per_method = results["all_metrics"].get(bench["key"], {})
        names = bench["metrics"]
        rows = [[*_row_names(results, method),
                 *[_with_ci(per_method[method][name], name in bench["percent_metrics"])
                   if name in per_method[method] else "—" for name in names]]
                for method in results["methods"] if method in per_method]
        scaled = [name for name in names if name in bench["percent_metrics"]]
        caption = f"×100: {', '.join(scaled)}." if scaled else ""
        tables.append(Table(f"All metrics: {bench['name']}", [*_name_headers(results), *names], rows, caption,
                            text_columns=len(_name_headers(results))))
    return tables


def efficiency_table(results: dict[str, Any]) -> Table | None:
    table = results["efficiency"]
    if not table:
        return None
    columns = [("init_time_s", "init time (s)", 1.0, 3), ("step_time_s", "step time (ms)", 1e3, 1),
               ("peak_memory_bytes", "peak memory (MiB)", 1 / 2**20, 1)]
    has_ratio = any(cell.get("ratio_to_baseline") is not None for row in table.values() for cell in row.values())
    headers = [*_name_headers(results), "#Params"]
    for _, title, _, _ in columns:
        headers += [title, f"× {results['baseline']}"] if has_ratio else [title]
    rows = []
    for method, row in table.items():
        cells = [*_row_names(results, method), results["table"][method]["params_display"]]
        for name, _, scale, digits in columns:
            cell = row.get(name)
            text = "—" if cell is None else f"{cell['mean'] * scale:.{digits}f}"
            if cell is not None and cell["n"] > 1:
                text += f" ± {cell['std'] * scale:.{digits}f}"
            cells.append(text)
            if has_ratio:
                ratio = cell.get("ratio_to_baseline") if cell else None
                cells.append("—" if ratio is None else f"{ratio:.2f}×")
        rows.append(cells)
    caption = "From training.json: mean ± std over seeds."
    if not has_ratio and results["baseline"]:
        caption += f" No ratios: the baseline {results['baseline']} has no training.json."
    return Table("Efficiency", headers, rows, caption, figures=["efficiency.png"],
                 text_columns=len(_name_headers(results)))


def loss_table(results: dict[str, Any]) -> Table | None:
    """Training loss per row: at the first logged step, its highest, and at the last step (mean over seeds)."""
    curves = results["loss_curves"]
    if not curves:
        return None
    rows = []
    for key, curve in curves.items():
        mean, steps = curve["mean"], curve["steps"]
        rows.append([*_row_names(results, key), str(curve["n_seeds"]), f"{steps[0]:g}–{steps[-1]:g}",
                     f"{mean[0]:.3f}", f"{max(mean):.3f}", f"{mean[-1]:.3f}"])
    caption = ("Training loss as logged by the trainer (mean over seeds): a highest loss far above the first "
               "step's is a loss spike (e.g. an init that moves a pretrained model's output at step 0).")
    return Table("Training loss", [*_name_headers(results), "seeds", "steps", "first", "highest", "last"], rows,
                 caption, figures=["loss_curves.png"], text_columns=len(_name_headers(results)))


def _clipped(text: str, limit: int = 400) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def generation_tables(results: dict[str, Any]) -> list[Table]:
    """Per benchmark with sample generations: each item's question and reference, then every row's completion."""
    tables = []
    for bench, section in results.get("generations", {}).items():
        rows = []
        for item_id, item in section["items"].items():
            rows.append([item_id, "prompt (end)", _clipped(item["prompt"][-300:])])
            rows.append([item_id, "reference", _clipped(item["reference"])])
            for key, row in section["rows"].items():
                if item_id in row["texts"]:
                    rows.append([item_id, " / ".join(_row_names(results, key)), _clipped(row["texts"][item_id])])
        tables.append(Table(f"Sample generations ({bench})", ["item", "from", "text"], rows,
                            "Greedy completions of the first items' prompts, one seed per row, cut at 400 characters: "
                            "a sanity check of what each model writes, not a score.", text_columns=3))
    return tables


def run_tables(results: dict[str, Any]) -> list[Table]:
    """Where the numbers come from: each run directory, its notes and package versions."""
    rows = []
    for run in results["runs"]:
        config = run.get("config") or {}
        rows.append([run["path"], str(run.get("created") or "—"), str(run.get("generation_backend") or "—"),
                     " ".join(run.get("command") or []) or "—", str(config.get("notes") or "")])
    tables = [Table("Runs", ["Run directory", "Created", "Generation backend", "Command", "Notes"], rows,
                    "The full configs: Run configs below, and runs[].config in results.json. Runs generated by "
                    "different backends are never pooled as seeds (they may differ in half precision).",
                    text_columns=5)]
    packages = sorted({name for run in results["runs"] for name in (run.get("versions") or {})})
    if packages:
        version_rows = [[name, *[str((run.get("versions") or {}).get(name) or "—") for run in results["runs"]]]
                        for name in packages]
        tables.append(Table("Package versions", ["Package", *[run["path"] for run in results["runs"]]],
                            version_rows))
    return tables


def all_tables(results: dict[str, Any]) -> list[Table]:
    tables = [main_table(results), budget_table(results), ci_table(results), significance_table(results),
              loss_table(results), efficiency_table(results),
              *metric_tables(results), *generation_tables(results), *run_tables(results)]
    return [table for table in tables if table is not None]


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(results: dict[str, Any], figures: dict[str, str]) -> str:
    lines = ["# Method comparison", "", _header_text(results), ""]
    lines += [f"- {warning}" for warning in _notes(results)]
    for table in all_tables(results):
        lines += ["", f"## {table.title}", ""]
        lines.append("| " + " | ".join(map(_markdown_cell, table.headers)) + " |")
        lines.append("|" + "|".join(["---"] * table.text_columns
                                    + ["---:"] * (len(table.headers) - table.text_columns)) + "|")
        lines += ["| " + " | ".join(map(_markdown_cell, row)) + " |" for row in table.rows]
        if table.caption:
            lines += ["", table.caption]
        lines += [f"\n![{name}]({figures[name]})" for name in table.figures if name in figures]
    return "\n".join(lines) + "\n"


def _header_text(results: dict[str, Any]) -> str:
    baseline = results["baseline"] or "none (pass --baseline METHOD for significance tests and ratios)"
    methods = len({row["method"] for row in results["rows"]})
    models = f" on {len(results['models'])} base models" if _multi_model(results) else ""
    return (f"{methods} methods{models} × {len(results['benchmarks'])} benchmarks from "
            f"{len(results['runs'])} run director{'y' if len(results['runs']) == 1 else 'ies'}; "
            f"baseline: {baseline}; generated {results['generated']}.")


def _notes(results: dict[str, Any]) -> list[str]:
    notes = [f"Run note ({run['path']}): {run['config']['notes']}" for run in results["runs"]
             if (run.get("config") or {}).get("notes")]
    notes += [f"Rows: {note}" for note in results.get("configuration_notes") or []]
    notes += [f"Warning: {warning}" for warning in results["warnings"]]
    notes += [f"Unfinished, left out: {path}" for path in results["skipped"]]
    return notes


HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Method comparison</title>
<style>
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; white-space: nowrap; }
th { background: #f3f4f6; } .text { text-align: left; }
tr.baseline td { background: #f7f7f7; font-style: italic; }
.caption { color: #555; font-size: 0.88em; max-width: 1100px; }
.notes li { color: #8a4b00; }
.figures { display: flex; flex-wrap: wrap; gap: 0.6em 1.2em; align-items: flex-start; }
.figures img { max-width: min(100%, 580px); } .figures img.wide { max-width: min(100%, 1100px); }
.ci { color: #666; font-size: 0.85em; }
.scroll { overflow-x: auto; } pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.82em; }
td.wrap { white-space: normal; text-align: left; max-width: 32em; }
</style></head><body>
<h1>Method comparison</h1>
<p>{{ header }}</p>
{% if notes %}<ul class="notes">{% for note in notes %}<li>{{ note }}</li>{% endfor %}</ul>{% endif %}
{% for table in tables %}
<h2>{{ table.title }}</h2>
<div class="scroll"><table>
<tr>{% for h in table.headers %}<th class="{{ 'text' if loop.index0 < table.text_columns else 'num' }}">{{ h }}</th>{% endfor %}</tr>
{% for row in table.rows %}<tr{% if row[table.text_columns - 1].endswith('(baseline)') %} class="baseline"{% endif %}>
{% for cell in row %}<td class="{{ 'text' if loop.index0 < table.text_columns else 'num' }}{{ ' wrap' if cell|length > 48 }}">{{ cell|cell_html }}</td>{% endfor %}</tr>
{% endfor %}</table></div>
{% if table.caption %}<p class="caption">{{ table.caption }}</p>{% endif %}
{% if table.figures %}<div class="figures">{% for name in table.figures if name in figures %}
<img src="{{ figures[name] }}" alt="{{ name }}"{% if name in ('efficiency.png', 'loss_curves.png') %} class="wide"{% endif %}>
{% endfor %}</div>{% endif %}
{% endfor %}
<h2>Run configs</h2>
{% for run in runs %}<details><summary>{{ run.path }}</summary><pre>{{ run.config_json }}</pre></details>{% endfor %}
</body></html>
"""


def _cell_html(text: str) -> markupsafe.Markup:
    """An "estimate [low, high] (n=...)" cell as the estimate over a smaller grey interval line."""
    estimate, bracket, rest = text.partition(" [")
    if not bracket:
        return markupsafe.escape(text)
    return markupsafe.Markup("{}<br><span class=\"ci\">[{}</span>").format(estimate, rest)


def render_html(results: dict[str, Any], figures: dict[str, str]) -> str:
    """index.html; `figures` maps a PNG name to the src to use (a file name next to index.html)."""
    environment = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    environment.filters["cell_html"] = _cell_html
    runs = [{"path": run["path"], "config_json": json.dumps(run.get("config"), indent=2, default=str)}
            for run in results["runs"]]
    return environment.from_string(HTML_TEMPLATE).render(
        header=_header_text(results), notes=_notes(results), tables=all_tables(results), figures=figures,
        runs=runs,
    )

