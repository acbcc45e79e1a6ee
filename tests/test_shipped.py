import json
from pathlib import Path

from raysynth.shipped import ALPACA_SEED, CONDOR_TAG_TREE, CORPUS, IFEVAL, SEED_TASKS, read_jsonl, seed_pairs, seed_tasks


def test_every_shipped_file_is_in_the_package_and_read_whole():
    assert all(path.is_file() for path in (ALPACA_SEED, CONDOR_TAG_TREE, CORPUS, IFEVAL, SEED_TASKS))
    assert len(read_jsonl(IFEVAL)) == 541 and len(read_jsonl(IFEVAL, 7)) == 7


def test_read_jsonl_skips_blank_lines_and_stops_at_the_limit(tmp_path: Path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2}\n{"a": 3}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert read_jsonl(path, 2) == [{"a": 1}, {"a": 2}]


def test_seed_tasks_load_self_instruct_and_alpaca_rows(tmp_path: Path):
    shipped = seed_tasks(None)
    assert len(shipped) == 175 and SEED_TASKS.is_file()
    assert all(t["instruction"] and isinstance(t["input"], str) for t in shipped)
    path = tmp_path / "alpaca.jsonl"
    path.write_text(json.dumps({"instruction": "Add.", "input": "2 + 2", "output": "4"}) + "\n")
    assert seed_tasks(path) == [{"instruction": "Add.", "input": "2 + 2"}]


def test_seed_pairs_read_alpaca_and_prompt_response_rows(tmp_path: Path):
    rows = seed_pairs(None, 5)
    assert len(rows) == 5 and all(r["prompt"] and r["gold"] for r in rows)
    path = tmp_path / "seed.jsonl"
    path.write_text(json.dumps({"instruction": "Add.", "input": "2 + 2", "output": "4"}) + "\n"
                    + json.dumps({"prompt": "Hi?", "response": "Hello."}) + "\n")
    assert seed_pairs(path, None) == [{"prompt": "Add.\n\n2 + 2", "gold": "4"}, {"prompt": "Hi?", "gold": "Hello."}]
    assert ALPACA_SEED.is_file() and CORPUS.is_file()
