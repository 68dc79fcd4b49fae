"""Shared pieces of the Axolotl-plugin tests: the tiny decoder, the offline env, config loading."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "example_configs" / "axolotl"
DEEPSPEED_CONFIGS = REPO / "example_configs" / "deepspeed"
TRAIN_DATA = REPO / "eval_harness" / "data" / "demo_nlg" / "gsm8k_train_alpaca_64.jsonl"
VENV_BIN = Path(sys.executable).parent
QUIET_ENV = {
    "WANDB_MODE": "disabled",
    "DO_NOT_TRACK": "1",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "DS_BUILD_OPS": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def subprocess_env() -> dict[str, str]:
    """Offline env with the venv's bin first on PATH (the axolotl CLI execs `accelerate`) and the repo importable."""
    from eval_harness.offline import offline_env

    env = {**offline_env(), **QUIET_ENV}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 2-block Llama with the MiniLM tokenizer (eval_harness.tiny_decoder), saved once per session."""
    from eval_harness.tiny_decoder import build_tiny_decoder

    return build_tiny_decoder(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def tiny_recipe(name: str, model_dir: Path, work: Path, **overrides: object) -> Path:
    """A shipped tiny recipe with its paths (and `overrides`) set for this test; returns the written YAML."""
    recipe = yaml.safe_load((CONFIGS / name).read_text())
    recipe["base_model"] = str(model_dir)
    recipe["datasets"][0]["path"] = str(TRAIN_DATA)
    recipe["output_dir"] = str(work / "out")
    recipe["dataset_prepared_path"] = str(work / "prepared")
    recipe.update(overrides)
    path = work / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
