"""The Hugging Face offline settings: models and data sets come from local folders, never from the Hub.

Standard library only, in a package whose import is light, so that `eval-harness` and the test suite set
these before anything imports the Hub (``huggingface_hub`` reads them once, at import; importing
``nlora_plugin`` imports it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

OFFLINE_ENV: dict[str, str] = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def offline_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (default: ``os.environ``) with the offline settings set, for a subprocess."""
    return {**(os.environ if base is None else base), **OFFLINE_ENV}


def force_offline() -> None:
    """Set the offline settings in this process, keeping any value already set."""
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
