"""Every shipped recipe: Axolotl's own validation with the plugin, and its `# paper:` numbers against the paper.

A `# paper:` header line reads `Table N | row | BENCH value | BENCH value ...` (or `none — reason`). Each value
must be a cell of Table N in the paper's text, in BENCH's column and in a row that holds `row` (or, for the
transposed Table 7, in the row named BENCH and the column named `row`), and must be the number that
docs/reproduce.md prints for that table, benchmark and file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
AXOLOTL = REPO / "example_configs" / "axolotl"
EVAL = REPO / "example_configs" / "eval"
# The paper's text is not redistributed with the project: point NLORA_PAPER_TXT at a text export of arXiv 2502.14482.
PAPER = Path(os.environ.get("NLORA_PAPER_TXT", REPO.parent / "shared" / "paper" / "nlora-2502.14482.txt"))
needs_paper = pytest.mark.skipif(not PAPER.is_file(), reason=f"paper text not found at {PAPER} (set NLORA_PAPER_TXT)")
REPRODUCE = REPO / "docs" / "reproduce.md"
RECIPES = sorted(AXOLOTL.glob("paper-*.yaml"))
CITING = RECIPES + sorted(EVAL.glob("glue_*.yaml"))
CAPTION = re.compile(r"^\s*Table (\d+):")
PAPER_LINE = re.compile(r"^# paper: (.*)$", re.MULTILINE)


def paper_lines(path: Path) -> list[str]:
    return PAPER_LINE.findall(path.read_text())


def parse_line(line: str) -> tuple[int, str, dict[str, str]]:
    """`Table 1 | NLoRA | GSM8K 57.70 | MATH 9.94` -> (1, "NLoRA", {"GSM8K": "57.70", "MATH": "9.94"})."""
    parts = [part.strip() for part in line.split("|")]
    match = re.fullmatch(r"Table (\d+)", parts[0])
    assert match and len(parts) >= 3, f"bad `# paper:` line {line!r}: expected 'Table N | row | BENCH value ...'"
    values = {}
    for part in parts[2:]:
        bench, _, value = part.rpartition(" ")
        assert bench and re.fullmatch(r"\d+(\.\d+)?", value), f"bad 'BENCH value' {part!r} in {line!r}"
        values[bench] = value
    return int(match.group(1)), parts[1], values


def paper_tables() -> dict[int, list[list[str]]]:
    """Table number -> its rows (tab-separated cells), the block of tab lines just above its caption."""
    lines = PAPER.read_text(encoding="utf-8").splitlines()
    tables: dict[int, list[list[str]]] = {}
    for number, line in enumerate(lines):
        caption = CAPTION.match(line)
        if not caption:
            continue
        rows: list[list[str]] = []
        for above in reversed(lines[:number]):
            if not above.strip():
                continue
            if "\t" not in above or set(above.replace("\t", "")) <= {"-"}:
                if rows:
                    break
                continue
            rows.insert(0, [cell.strip() for cell in above.split("\t")])
        tables[int(caption.group(1))] = rows
    return tables


def in_paper(rows: list[list[str]], row_key: str, bench: str, value: str) -> bool:
    header = rows[0]
    for row in rows[1:]:
        for column, cell in enumerate(row):
            if cell != value or column >= len(header):
                continue
            if header[column] == bench and row_key in row:
                return True
            if row[0] == bench and header[column] == row_key:  # transposed (Table 7)
                return True
    return False


def reproduce_tables() -> dict[int, list[dict[str, str]]]:
    """docs/reproduce.md tables whose first header cell is `Table N ...`: rows as {column: cell}."""
    tables: dict[int, list[dict[str, str]]] = {}
    header: list[str] | None = None
    number = 0
    for line in REPRODUCE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            match = re.match(r"Table (\d+)\b", cells[0])
            header, number = (cells, int(match.group(1))) if match else ([], 0)
        elif header and not set("".join(cells)) <= set("-: "):
            tables.setdefault(number, []).append(dict(zip(header, cells)))
    return tables


@needs_paper
def test_paper_tables_are_found() -> None:
    tables = paper_tables()
    assert {1, 2, 3, 4, 5, 6, 7, 8, 10, 11} <= set(tables)
    assert tables[1][0][3] == "GSM8K" and "57.70" in tables[1][5]


@needs_paper
@pytest.mark.parametrize("path", CITING, ids=lambda p: p.name)
def test_cited_numbers_match_the_paper_and_reproduce_md(path: Path) -> None:
    lines = paper_lines(path)
    assert lines, f"{path.name}: no `# paper:` header line"
    tables, docs = paper_tables(), reproduce_tables()
    for line in lines:
        if line.startswith("none"):
            assert len(lines) == 1 and "—" in line, f"{path.name}: `# paper: none — reason` must stand alone"
            continue
        number, row_key, values = parse_line(line)
        assert number in tables, f"{path.name}: Table {number} is not in the paper"
        docs_rows = [row for row in docs.get(number, []) if path.name in row.get("Recipes", "")]
        assert docs_rows, f"{path.name}: docs/reproduce.md's Table {number} lists no row with this file"
        for bench, value in values.items():
            assert in_paper(tables[number], row_key, bench, value), \
                f"{path.name}: {bench} {value} is not in Table {number}'s {bench} column on a row with {row_key!r}"
            assert any(row.get(bench) == value for row in docs_rows), \
                f"{path.name}: docs/reproduce.md's Table {number} row for this file does not print {bench} {value}"


def test_reproduce_md_rows_point_at_shipped_files_that_cite_them() -> None:
    for number, rows in reproduce_tables().items():
        for row in rows:
            for name in re.findall(r"`([\w.-]+\.yaml)`", row.get("Recipes", "")):
                path = AXOLOTL / name if name.startswith("paper-") else EVAL / name
                assert path.is_file(), f"docs/reproduce.md Table {number} names {name}, which is not shipped"
                lines = paper_lines(path)
                if lines and lines[0].startswith("none"):
                    continue  # run beside the table's recipes (e.g. a same-budget baseline): no number to cite
                cited = [parse_line(line) for line in lines]
                assert any(table == number for table, _, _ in cited), f"{name} has no `# paper: Table {number}` line"


def test_no_setting_is_called_the_papers_without_a_source() -> None:
    for path in RECIPES:
        text = path.read_text()
        assert "the paper's setting" not in text.lower(), path.name
        cfg = yaml.safe_load(text)
        batch = cfg["micro_batch_size"] * cfg["gradient_accumulation_steps"]
        gpus = int(re.search(r"x (\d+) GPUs = (\d+)", text).group(1))
        assert f"effective batch {batch * gpus} = micro {cfg['micro_batch_size']} x accumulation " \
               f"{cfg['gradient_accumulation_steps']} x {gpus} GPUs" in text, path.name


def _strip(cfg: dict) -> dict:
    drop = ("output_dir", "peft_init_lora_weights", "adapter", "nlora")
    return {key: value for key, value in cfg.items() if key not in drop}


@pytest.mark.parametrize("path", sorted(AXOLOTL.glob("paper-*-same-budget.yaml")), ids=lambda p: p.name)
def test_same_budget_baselines_differ_from_nlora_only_in_the_adapter(path: Path) -> None:
    nlora = yaml.safe_load((AXOLOTL / re.sub(r"-(lora|pissa)-same-budget", "-nlora", path.name)).read_text())
    assert _strip(yaml.safe_load(path.read_text())) == _strip(nlora)


@pytest.mark.parametrize("path", sorted(AXOLOTL.glob("paper-*-as-cited.yaml")), ids=lambda p: p.name)
def test_as_cited_baselines_use_pissas_budget(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    assert (cfg["learning_rate"], cfg["micro_batch_size"], cfg["gradient_accumulation_steps"]) == (2e-5, 4, 4)
    assert "x 8 GPUs = 128" in path.read_text()
    assert (cfg.get("peft_init_lora_weights") == "pissa_niter_16") == ("-pissa-" in path.name)


@pytest.mark.parametrize("path", sorted(AXOLOTL.glob("paper-*-nlora.yaml")) + sorted(AXOLOTL.glob("paper-*-inttune.yaml")),
                         ids=lambda p: p.name)
def test_nlora_and_inttune_follow_the_authors_budget(path: Path) -> None:
    """S: micro 1 x accumulation 4 (x 4 GPUs), lr 2e-4; IntTune at P §4.3's 2e-3; fp32, alpha = r, dropout 0."""
    cfg = yaml.safe_load(path.read_text())
    assert (cfg["micro_batch_size"], cfg["gradient_accumulation_steps"]) == (1, 4)
    assert cfg["learning_rate"] == (2e-3 if cfg["adapter"] == "inttune" else 2e-4)
    assert cfg["lora_alpha"] == cfg["lora_r"] and cfg["lora_dropout"] == 0.0 and cfg["lora_target_linear"] is True
    assert (cfg["bf16"], cfg["fp16"], cfg["tf32"], cfg["optimizer"]) == (False, False, False, "adamw_torch")


def test_every_recipe_passes_axolotl_validation_with_the_plugin() -> None:
    """One process validates them all (Axolotl's import is slow): what `axolotl train` checks before loading."""
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    assert len(RECIPES) >= 60
    for path in RECIPES:
        raw = yaml.safe_load(path.read_text())
        assert raw["plugins"] == ["nlora_plugin.axolotl.NLoraPlugin"], path.name
        cfg = DictDefault(raw)
        prepare_plugins(cfg)
        cfg = validate_config(cfg)
        assert cfg.adapter == raw["adapter"] and cfg.learning_rate == raw["learning_rate"], path.name
        assert cfg.merge_method == "legacy" and cfg.excess_length_strategy == "truncate", path.name


def test_the_demos_six_recipes_pass_axolotl_validation(tmp_path: Path) -> None:
    """`make demo` derives one recipe per method from smollm2-135m-nlora.yaml; each is a valid Axolotl config
    that trains what its row says (same budget, IntTune's declared learning rate apart)."""
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    from eval_harness.demo import METHODS, recipe_for

    shipped = yaml.safe_load((AXOLOTL / "smollm2-135m-nlora.yaml").read_text())
    for method in METHODS:
        raw = recipe_for(method, tmp_path / "model", tmp_path / method.label, tmp_path / "prepared")
        cfg = DictDefault(raw)
        prepare_plugins(cfg)
        cfg = validate_config(cfg)
        assert cfg.adapter == method.recipe["adapter"], method.label
        expected_nlora = method.recipe["nlora"]
        assert (cfg.nlora is None) == (expected_nlora is None), method.label
        if expected_nlora:
            assert {name: cfg.nlora[name] for name in expected_nlora} == expected_nlora, method.label
        lr = method.recipe.get("learning_rate", shipped["learning_rate"])
        assert (cfg.learning_rate, cfg.max_steps, cfg.micro_batch_size) == (
            lr, shipped["max_steps"], shipped["micro_batch_size"]), method.label
        assert ("learning_rate" in method.intended_differences) == (lr != shipped["learning_rate"]), method.label
