"""YAML reading that refuses what PyYAML lets through silently: duplicate keys and non-text files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from eval_harness.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse a key given twice (PyYAML keeps the last one without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the base class raises its own clear error
            if first is not None:
                raise ConfigError(f"{key_node.start_mark.name}: key {key!r} appears twice (line {first.line + 1} "
                                  f"and line {key_node.start_mark.line + 1}); YAML would silently keep only the "
                                  f"last one: merge the two sections into one")
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_yaml_file(path: Path) -> Any:
    """The parsed YAML document of `path`; ConfigError for binary/undecodable files, bad YAML, duplicate keys."""
    data = path.read_bytes()
    if b"\x00" in data:
        raise ConfigError(f"{path}: not a YAML text file (it holds NUL bytes at offset {data.index(0)}: a binary "
                          f"file?); pass the eval YAML")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start} is {data[error.start]:#04x}); save the YAML "
                          f"as UTF-8") from None
    loader = _UniqueKeyLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    finally:
        loader.dispose()
