"""Final datasets: chat `messages` (SFT) as Parquet plus JSONL, loadable by `datasets`.

Streams the stage's part files one at a time, so memory stays bounded whatever the size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raysynth.hashing import stable_hash
from raysynth.store import StageDir, atomic_write_json, atomic_write_parquet

SFT_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
])


def export_sft(stage: StageDir, out_dir: Path, prompt_column: str, response_column: str,
               extra_columns: tuple[str, ...] = (),
               user_text: Callable[[dict[str, Any]], str] | None = None) -> dict[str, str | int]:
    """Write `sft.parquet` and `sft.jsonl` (atomically) from a committed stage; the user turn is
    `prompt_column`, or `user_text(row)` when given (e.g. a template around several columns)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    schema = SFT_SCHEMA
    for column in extra_columns:
        schema = schema.append(pa.field(column, pa.string()))
    parquet_tmp, jsonl_tmp = out_dir / ".sft.parquet.tmp", out_dir / ".sft.jsonl.tmp"
    rows = 0
    with pq.ParquetWriter(parquet_tmp, schema) as writer, open(jsonl_tmp, "w") as jsonl:
        for part in stage.part_files():
            frame = pq.read_table(part).to_pandas()
            records = []
            for row in frame.to_dict("records"):
                record = {"id": row["id"], "messages": [
                    {"role": "user", "content": user_text(row) if user_text else row[prompt_column]},
                    {"role": "assistant", "content": row[response_column]}]}
                record.update({c: str(row.get(c, "")) for c in extra_columns})
                records.append(record)
                jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
            if records:
                writer.write_table(pa.Table.from_pylist(records, schema=schema))
            rows += len(records)
    os.replace(parquet_tmp, out_dir / "sft.parquet")
    os.replace(jsonl_tmp, out_dir / "sft.jsonl")
    summary = {"rows": rows, "parquet": str(out_dir / "sft.parquet"), "jsonl": str(out_dir / "sft.jsonl"),
               "source_stage": stage.name}
    atomic_write_json(out_dir / "_export.json", summary)
    return summary


def select_pairs(stage: StageDir, chosen_column: str, rejected_column: str, limit: int, seed: int) -> pd.DataFrame:
    """Up to `limit` of a stage's kept pairs, drawn at random (a seeded hash order of their ids, so a
    re-run draws the same), as `id, prompt, chosen, rejected` plus the score gap when present."""
    frame = stage.read()
    if not len(frame):
        return pd.DataFrame(columns=["id", "prompt", "chosen", "rejected", "score_gap"])
    order = frame["id"].map(lambda i: stable_hash([seed, i], 16))
    frame = frame.assign(_order=order).sort_values("_order").head(limit)
    return pd.DataFrame({"id": frame["id"], "prompt": frame["prompt"].astype(str),
                         "chosen": frame[chosen_column].astype(str), "rejected": frame[rejected_column].astype(str),
                         "score_gap": frame["score_gap"] if "score_gap" in frame else float("nan")})


def export_preferences(selections: list[Path], out: Path) -> dict[str, Any]:
    """One preference file from each iteration's selection (the accumulated synthetic set)."""
    frame = pd.concat([pd.read_parquet(p) for p in selections], ignore_index=True)
    atomic_write_parquet(out, frame)
    with open(out.with_suffix(".jsonl.tmp"), "w") as jsonl:
        for record in frame[["id", "prompt", "chosen", "rejected"]].to_dict("records"):
            jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(out.with_suffix(".jsonl.tmp"), out.with_suffix(".jsonl"))
    return {"rows": len(frame), "parquet": str(out), "jsonl": str(out.with_suffix(".jsonl"))}
