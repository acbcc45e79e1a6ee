"""Training rows: read a stage's output and shape it the way TRL's trainers take it.

SFT rows carry `messages` (chat form, as every recipe exports) and become prompt-completion pairs. Preference rows carry `prompt`,
`chosen`, `rejected` as plain strings and become TRL's conversational preference form, so TRL
applies the model's own chat template. With `prompt_format` "plain" (a base model without a chat
template, e.g. I-SHEEP's Llama-3 70B base) both become plain text instead: the prompt in the same
Alpaca-style form the engine sends such a model (`engine.plain_prompt`), the reply as its
completion, to which TRL appends the end-of-sequence token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from raysynth.engine import plain_prompt

SFT_COLUMNS = ("messages",)
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")


class TrainDataError(ValueError):
    """Training data that cannot be used, phrased for the user."""


def data_files(path: Path) -> list[str]:
    """A file, or the Parquet parts of a directory (a stage directory works as is)."""
    if path.is_dir():
        files = sorted(str(p) for p in path.glob("*.parquet"))
        if not files:
            raise TrainDataError(f"{path}: no .parquet files in this directory")
        return files
    if path.suffix not in (".parquet", ".jsonl", ".json"):
        raise TrainDataError(f"{path}: expected a .parquet or .jsonl file")
    return [str(path)]


def read_frame(path: Path) -> pd.DataFrame:
    files = data_files(path)
    if files[0].endswith((".jsonl", ".json")):
        return pd.concat([pd.read_json(f, lines=True) for f in files], ignore_index=True)
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def check_columns(path: Path, method: str) -> None:
    """Fail on the driver, before any worker starts, when the data lacks the method's columns."""
    first = data_files(path)[0]
    if first.endswith(".parquet"):
        import pyarrow.parquet as pq

        names = pq.read_schema(first).names
    else:
        names = list(pd.read_json(first, lines=True, nrows=1).columns)
    needed = SFT_COLUMNS if method == "sft" else PREFERENCE_COLUMNS
    missing = [c for c in needed if c not in names]
    if missing:
        raise TrainDataError(f"{path}: {method} needs columns {list(needed)}; missing {missing}")


def _plain(value: Any) -> Any:
    """Parquet gives numpy arrays of dicts; TRL wants lists of plain dicts."""
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


def sft_records(frame: pd.DataFrame, prompt_format: str = "chat") -> list[dict[str, Any]]:
    """Prompt-completion form, so that the loss covers the final assistant turn only."""
    records = []
    for messages in frame["messages"]:
        turns = _plain(messages)
        if len(turns) < 2 or turns[-1]["role"] != "assistant":
            raise TrainDataError(f"an SFT row must end with an assistant turn after a prompt: {turns!r:.200}")
        if prompt_format == "plain":
            records.append({"prompt": plain_prompt(turns[:-1]), "completion": turns[-1]["content"]})
        else:
            records.append({"prompt": turns[:-1], "completion": turns[-1:]})
    return records


def preference_records(frame: pd.DataFrame, prompt_format: str = "chat") -> list[dict[str, Any]]:
    if prompt_format == "plain":
        return [{"prompt": plain_prompt([{"role": "user", "content": str(p)}]), "chosen": str(c), "rejected": str(r)}
                for p, c, r in zip(frame["prompt"], frame["chosen"], frame["rejected"])]
    return [{"prompt": [{"role": "user", "content": str(p)}],
             "chosen": [{"role": "assistant", "content": str(c)}],
             "rejected": [{"role": "assistant", "content": str(r)}]}
            for p, c, r in zip(frame["prompt"], frame["chosen"], frame["rejected"])]
