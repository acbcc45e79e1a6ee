"""Per-stage statistics of a run directory, as a table."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from raysynth.store import RunDir


def stage_table(run_dir: Path | str) -> Table:
    table = Table(title=f"raysynth run {run_dir}")
    for column in ("iteration/stage", "state", "rows in", "rows out", "dropped (reason: n)",
                   "tokens in", "tokens out", "seconds", "rows/s", "tokens/s"):
        table.add_column(column, justify="left" if column in ("iteration/stage", "state", "dropped (reason: n)")
                         else "right")
    for stage in RunDir(run_dir).stages():
        stats = stage.stats()
        seconds = stats.seconds
        rate = lambda n: f"{n / seconds:.1f}" if seconds > 0 else "-"  # noqa: E731
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(stats.rejected.items())) or "-"
        table.add_row(f"{stage.path.parent.name}/{stage.name}", "committed" if stage.committed else "partial",
                      str(stats.rows_in), str(stats.rows_out), dropped, str(stats.tokens_in),
                      str(stats.tokens_out), f"{seconds:.1f}", rate(stats.rows_in), rate(stats.tokens_out))
    return table


def print_status(run_dir: Path | str) -> None:
    Console(width=160).print(stage_table(run_dir))
