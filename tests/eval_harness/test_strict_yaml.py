"""The eval YAML loader refuses what PyYAML accepts silently or crashes on: duplicate keys, binary files."""

from __future__ import annotations

import pytest

from eval_harness.cli import main
from eval_harness.errors import ConfigError
from eval_harness.eval_yaml import load_config

VALID = "benchmarks:\n  gsm8k: {data: gsm8k.jsonl}\n"


@pytest.mark.parametrize("text", [
    "models:\n  - label: base\nmodels:\n  - label: lora\n" + VALID,
    "models:\n  - label: base\n    label: lora\n" + VALID,
    "benchmarks:\n  gsm8k: {data: a.jsonl, data: b.jsonl}\n",
])
def test_a_key_given_twice_is_an_error_naming_it_and_both_lines(tmp_path, text):
    path = tmp_path / "eval.yaml"
    path.write_text(text)
    key = "models" if text.startswith("models:\n  - label: base\nmodels") else ("label" if "    label" in text else "data")
    with pytest.raises(ConfigError, match=rf"key '{key}' appears twice \(line \d+ and line \d+\)"):
        load_config(path)


@pytest.mark.parametrize(("data", "message"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a YAML text file"),
    (b"models: [caf\xe9]\n", r"not UTF-8 text \(byte 12 is 0xe9\)"),
])
def test_binary_or_undecodable_yaml_is_a_clear_error(tmp_path, capsys, data, message):
    path = tmp_path / "eval.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    assert main(["check", str(path)]) != 0  # the CLI reports it (no traceback)
    assert "not" in capsys.readouterr().err
