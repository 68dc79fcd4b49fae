"""Repo-root conftest: offline Hugging Face settings for every test and subprocess."""

import os

from eval_harness.offline import force_offline  # light: nothing here imports the Hub before this runs

force_offline()
for _name, _value in {
    "WANDB_MODE": "disabled",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)
