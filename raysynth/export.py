"""Final datasets: chat `messages` (SFT) as Parquet plus JSONL, loadable by `datasets`.

Streams the stage's part files one at a time, so memory stays bounded whatever the size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raysynth.store import StageDir, atomic_write_json

SFT_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
])


def export_sft(stage: StageDir, out_dir: Path, prompt_column: str, response_column: str,
               extra_columns: tuple[str, ...] = ()) -> dict[str, str | int]:
    """Write `sft.parquet` and `sft.jsonl` (atomically) from a committed stage."""
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
                    {"role": "user", "content": row[prompt_column]},
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
