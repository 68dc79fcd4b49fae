"""Repo-root conftest: offline Hugging Face settings for every test and subprocess."""

import importlib.util
import os
from pathlib import Path

# By path: importing the package would import the Hub, which reads these settings once, before they are set.
_spec = importlib.util.spec_from_file_location("_offline", Path(__file__).parent / "nlora_plugin" / "offline.py")
_offline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_offline)
_offline.force_offline()
for _name, _value in {
    "WANDB_MODE": "disabled",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)
