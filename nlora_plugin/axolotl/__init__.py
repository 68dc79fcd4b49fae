"""Axolotl plugin: ``adapter: nlora | slora | inttune`` in an Axolotl YAML.

Add ``plugins: [nlora_plugin.axolotl.NLoraPlugin]`` to the config. Importing this package imports
Axolotl; the core ``nlora_plugin`` never does.
"""

from .args import ADAPTERS, NLoraArgs, NLoraOptions
from .plugin import NLoraPlugin

__all__ = ["ADAPTERS", "NLoraArgs", "NLoraOptions", "NLoraPlugin"]
