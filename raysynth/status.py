"""Per-stage statistics of a run directory, as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from raysynth.store import RunDir


def stage_rows(run_dir: Path | str) -> list[dict[str, Any]]:
    """Per stage, oldest first: the numbers behind `raysynth status` and the run report.
    Rates are None for a stage that took no recorded time."""
    rows = []
    for stage in RunDir(run_dir).stages():
        stats = stage.stats()
        seconds = stats.seconds
        rows.append({"iteration": stage.path.parent.name, "stage": stage.name, "committed": stage.committed,
                     "rows_in": stats.rows_in, "rows_out": stats.rows_out, "rejected": dict(stats.rejected),
                     "tokens_in": stats.tokens_in, "tokens_out": stats.tokens_out, "seconds": seconds,
                     "rows_per_s": stats.rows_in / seconds if seconds > 0 else None,
                     "tokens_per_s": stats.tokens_out / seconds if seconds > 0 else None})
    return rows


def stage_state(row: dict[str, Any]) -> str:
    """partial, committed, or EMPTY: committed without keeping a row of a non-empty input."""
    if not row["committed"]:
        return "partial"
    return "EMPTY" if row["rows_in"] and not row["rows_out"] else "committed"


def verify_run(run_dir: Path | str) -> list[tuple[str, str, str]]:
    """(stage path, batch key, what is wrong) for every committed batch whose files do not match the
    sizes and checksums its marker recorded."""
    return [(str(stage.path), key, problem) for stage in RunDir(run_dir).stages()
            for key, problem in stage.damaged(deep=True).items()]


def stage_table(run_dir: Path | str) -> Table:
    table = Table(title=f"raysynth run {run_dir}")
    for column in ("iteration/stage", "state", "rows in", "rows out", "dropped (reason: n)",
                   "tokens in", "tokens out", "seconds", "rows/s", "tokens/s"):
        table.add_column(column, justify="left" if column in ("iteration/stage", "state", "dropped (reason: n)")
                         else "right")
    for row in stage_rows(run_dir):
        rate = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(row["rejected"].items())) or "-"
        table.add_row(f"{row['iteration']}/{row['stage']}", stage_state(row),
                      str(row["rows_in"]), str(row["rows_out"]), dropped, str(row["tokens_in"]),
                      str(row["tokens_out"]), f"{row['seconds']:.1f}", rate(row["rows_per_s"]),
                      rate(row["tokens_per_s"]))
    return table


def print_status(run_dir: Path | str) -> None:
    Console(width=160).print(stage_table(run_dir))
