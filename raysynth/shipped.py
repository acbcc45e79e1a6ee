"""The data that ships with the package (sources and licenses in data/SOURCES.md), and the one reader
of JSONL seed files, shipped or the user's: a run needs no file outside the package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
SEED_TASKS = DATA_DIR / "isheep_seed_tasks.jsonl"  # the 175 Self-Instruct seed tasks
ALPACA_SEED = DATA_DIR / "synpo_seed_alpaca.jsonl"  # (instruction, input, output) pairs
CORPUS = DATA_DIR / "synpo_paragraphs.jsonl"  # paragraphs, a `text` each
IFEVAL = DATA_DIR / "ifeval_input_data.jsonl"  # the 541 IFEval prompts
CONDOR_TAG_TREE = DATA_DIR / "condor_tag_tree.json"


def read_jsonl(path: Path | str, limit: int | None = None) -> list[dict[str, Any]]:
    """The objects of a JSONL file, blank lines skipped; the first `limit` only, when given."""
    rows: list[dict[str, Any]] = []
    with open(path) as lines:
        for line in lines:
            if limit is not None and len(rows) >= limit:
                break
            if line.strip():
                rows.append(json.loads(line))
    return rows


def seed_tasks(path: Path | None) -> list[dict[str, str]]:
    """(instruction, input) tasks: Self-Instruct rows (input of the first instance) or instruction/input
    rows (Alpaca); None: the shipped seed tasks."""
    tasks = []
    for item in read_jsonl(path or SEED_TASKS):
        task_input = item["instances"][0].get("input", "") if item.get("instances") else item.get("input", "")
        tasks.append({"instruction": item["instruction"], "input": task_input or ""})
    return tasks


def seed_pairs(path: Path | None, limit: int | None) -> list[dict[str, str]]:
    """(prompt, gold) rows: Alpaca's instruction + input and output, or prompt/response rows; None: the
    shipped Alpaca pairs."""
    rows = []
    for item in read_jsonl(path or ALPACA_SEED, limit):
        if "instruction" in item:
            prompt = item["instruction"] + (f"\n\n{item['input']}" if item.get("input") else "")
            rows.append({"prompt": prompt, "gold": item["output"]})
        else:
            rows.append({"prompt": item["prompt"], "gold": item["response"]})
    return rows
