"""The one home of the Hugging Face offline settings."""

import os
import subprocess
import sys
from pathlib import Path

from eval_harness.offline import OFFLINE_ENV, force_offline, offline_env

REPO = Path(__file__).resolve().parents[2]


def test_offline_env_keeps_other_variables_and_sets_the_three():
    base = {"PATH": "/bin", "HF_HUB_OFFLINE": "0"}
    env = offline_env(base)
    assert env == {"PATH": "/bin", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    assert base == {"PATH": "/bin", "HF_HUB_OFFLINE": "0"}, "a copy, not the caller's mapping"
    assert offline_env()["PATH"] == os.environ["PATH"]


def test_force_offline_sets_what_is_unset_and_keeps_what_is_set(monkeypatch):
    for name in OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    force_offline()
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert os.environ["HF_DATASETS_OFFLINE"] == "0"


def test_the_root_conftest_sets_them_before_anything_imports_the_hub():
    code = "import runpy; runpy.run_path('conftest.py'); import huggingface_hub.constants as c; print(c.HF_HUB_OFFLINE)"
    env = {name: value for name, value in os.environ.items() if name not in OFFLINE_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"  # the Hub reads the setting once, at import
