"""What every bench shares: sides measured in fresh processes, interleaved in alternating order after
an untimed warm-up of each, summarised as median (min-max), and a results file that names the commit
it measured."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def commit() -> str:
    """The measured commit, `-dirty` when the working tree differs from it (RAYSYNTH_COMMIT where the
    tree is a copy without git, as on a lent GPU machine)."""
    if os.environ.get("RAYSYNTH_COMMIT"):
        return os.environ["RAYSYNTH_COMMIT"]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return head + ("-dirty" if dirty else "")


def measure_in_process(script: Path, side: str, args: list[str]) -> dict[str, Any]:
    """One measurement of `side` by `script --side SIDE ARGS` in a fresh process (its last stdout
    line is a JSON object)."""
    result = subprocess.run([sys.executable, str(script), "--side", side, *args], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{script.name} --side {side} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def interleaved(script: Path, sides: list[str], args: list[str], repeats: int) -> dict[str, list[dict[str, Any]]]:
    """Warm each side once (discarded), then `repeats` rounds, the order of sides reversed every other
    round so neither side always runs first."""
    for side in sides:
        measure_in_process(script, side, args)
        print(f"  warm-up {side}: done", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for round_ in range(repeats):
        for side in (sides if round_ % 2 == 0 else sides[::-1]):
            runs[side].append(measure_in_process(script, side, args))
            print(f"  round {round_ + 1} {side}: {runs[side][-1]}", flush=True)
    return runs


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """median (min-max) of the values."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def write_results(path: Path, command: str, lines: list[str], notes: list[str],
                  machine: str = "this machine's CPU (2 cores)",
                  summary: str = "median (min-max) of interleaved runs") -> None:
    """Print the lines, and write them under a header naming the date, the commit, the machine, how
    the figures summarise the runs, and the command."""
    header = [f"# {command}", f"# measured {date.today().isoformat()} at commit {commit()} on {machine}; {summary}"]
    text = "\n".join(header + lines + [f"# {n}" for n in notes]) + "\n"
    print(text)
    path.write_text(text)
