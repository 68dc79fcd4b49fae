"""The result store: atomic writes and the resumable item log."""

import os

from eval_harness.results import ItemLog, atomic_write_json, read_json


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert read_json(target) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_item_log_ignores_and_repairs_a_torn_last_line(tmp_path):
    log = ItemLog(tmp_path / "items.jsonl")
    log.append({"id": "1", "score": 1.0})
    with log.path.open("a") as handle:
        handle.write('{"id": "2", "sco')  # the process died mid-write
    assert log.done_ids() == {"1"}
    log.append({"id": "3", "score": 0.0})
    assert [r["id"] for r in log.records()] == ["1", "3"]
    assert log.path.read_text().count("\n") == 2


def test_item_log_keeps_a_complete_last_record_that_lacks_its_newline(tmp_path):
    """The process died between the record and its newline: the record counts as done, so the next
    append must keep it (cutting it lost the item and crashed the resumed run with a KeyError)."""
    log = ItemLog(tmp_path / "items.jsonl")
    log.append({"id": "HumanEval/8", "score": 1.0})
    with log.path.open("a") as handle:
        handle.write('{"id": "HumanEval/9", "score": 0.0}')
    assert log.done_ids() == {"HumanEval/8", "HumanEval/9"}
    log.append({"id": "HumanEval/10", "score": 1.0})
    assert [r["id"] for r in log.records()] == ["HumanEval/8", "HumanEval/9", "HumanEval/10"]
    assert log.path.read_text().count("\n") == 3
