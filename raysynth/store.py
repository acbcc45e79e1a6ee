"""Stage store: every stage's rows as Parquet under `<run-dir>/iter-NN/<stage>-<hash>/`.

Layout of one stage directory:
  part-<key>.parquet          kept rows of one committed batch
  rejected/part-<key>.parquet rejected rows of that batch (`reason`, `raw` columns)
  _done/<key>.json            commit marker: input ids covered, counts, tokens, and each data file's
                              rows, size and checksum (written last)
  _time.json                  wall-clock seconds spent, per driver session
  _stage.json                 manifest: the stage is complete, with every data file's size (written last of all)

A batch is committed when its marker exists; data files without a marker are leftovers of
an interrupted run and are deleted on resume. Inputs named in markers are not recomputed.
Every file is fsynced before its rename (and the directory after), so a marker that survives a
power loss names whole files. A batch whose files no longer match its marker (`damaged`) is
uncommitted and redone by the next run; `raysynth status --verify` re-hashes every file.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from raysynth.engine_pool import EnginePool
from raysynth.hashing import digest, id_hashes, stable_hash

RUN_CONFIG = "config.yaml"  # the config a run was started with (`raysynth run` saves it)
IDENTITY = "_identity.json"
MANIFEST = "_stage.json"
DONE = "_done"
TIMES = "_time.json"
ITERATION_SUMMARY = "iteration.json"
LINEAGE = ["id", "parent_id", "recipe", "iteration", "stage", "model", "template", "template_hash"]


def saved_run_config(run_dir: Path) -> dict[str, Any]:
    """The config a run was started with; {} if none."""
    path = Path(run_dir) / RUN_CONFIG
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write, fsync, rename over `path`, fsync the directory: after a crash `path` is old or new, whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_write_json(path: Path, obj: Any, sort_keys: bool = True) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str).encode())


def atomic_write_parquet(path: Path, frame: pd.DataFrame | pa.Table) -> dict[str, Any]:
    """Write `frame` durably; returns what a marker records of the file: rows, bytes, checksum."""
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    data = buffer.getvalue().to_pybytes()
    atomic_write_bytes(path, data)
    return {"rows": table.num_rows, "bytes": len(data), "blake2b": digest(data)}


def file_problem(path: Path, recorded: dict[str, Any], deep: bool) -> str | None:
    """What is wrong with a committed file against its record (None: nothing); `deep` re-hashes it."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != recorded["bytes"]:
        return f"{size} bytes where {recorded['bytes']} were committed"
    if deep and digest(path.read_bytes()) != recorded["blake2b"]:
        return "contents differ from the committed checksum"
    return None


@dataclass
class StageStats:
    rows_in: int = 0
    rows_out: int = 0
    rejected: Counter = field(default_factory=Counter)
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0

    def add(self, other: dict[str, Any]) -> None:
        self.rows_in += other.get("rows_in", 0)
        self.rows_out += other.get("rows_out", 0)
        self.rejected.update(other.get("rejected", {}))
        self.tokens_in += other.get("tokens_in", 0)
        self.tokens_out += other.get("tokens_out", 0)

    def as_dict(self) -> dict[str, Any]:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out, "rejected": dict(self.rejected),
                "tokens_in": self.tokens_in, "tokens_out": self.tokens_out, "seconds": round(self.seconds, 3)}


class StageDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def committed(self) -> bool:
        return (self.path / MANIFEST).exists()

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST).read_text())

    def rows_out(self) -> int:
        """Rows a committed stage kept."""
        return int(self.manifest()["rows_out"])

    def prepare(self, identity: dict[str, Any]) -> None:
        """Create the directory and remove leftovers of interrupted batches."""
        (self.path / DONE).mkdir(parents=True, exist_ok=True)
        (self.path / "rejected").mkdir(exist_ok=True)
        if not (self.path / IDENTITY).exists():
            atomic_write_json(self.path / IDENTITY, {"identity": identity, "created": time.time()})
        (self.path / "_error.txt").unlink(missing_ok=True)  # the last failure's traceback: this run retries it
        done = {p.stem for p in (self.path / DONE).glob("*.json")}
        for pattern in ("part-*.parquet", "rejected/part-*.parquet", ".*.tmp-*", "rejected/.*.tmp-*",
                        f"{DONE}/.*.tmp-*"):
            for leftover in self.path.glob(pattern):
                key = leftover.name.removeprefix("part-").removesuffix(".parquet")
                if leftover.name.startswith(".") or key not in done:
                    leftover.unlink(missing_ok=True)

    def markers(self) -> Iterable[dict[str, Any]]:
        for marker in sorted((self.path / DONE).glob("*.json")):
            yield json.loads(marker.read_text())

    def done_inputs(self) -> set[str]:
        return {i for m in self.markers() for i in m["inputs"]}

    def done_hashes(self, say: Callable[[str], None] = print) -> np.ndarray:
        """64-bit hashes of the committed input ids, sorted: what a resume filters against, marker by
        marker, without a Python set of every id (8 bytes an id, shared zero-copy with the tasks).
        The same pass checks each batch's file sizes: a damaged batch is uncommitted on the way, so
        the resume recomputes it (a committed stage is checked from its manifest in open_stage)."""
        parts, damaged = [], {}
        for key, marker, problem in self._checked_markers(deep=False):
            if problem:
                damaged[key] = problem
            else:
                parts.append(id_hashes(marker["inputs"]))
        self._uncommit(damaged, say)
        done = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)
        done.sort()
        return done

    def done_count(self) -> int:
        """Inputs committed so far (markers never overlap: a re-run skips committed inputs), without
        holding every id at once."""
        return sum(len(m["inputs"]) for m in self.markers())

    def part_files(self) -> list[str]:
        return sorted(str(p) for p in self.path.glob("part-*.parquet"))

    def rejected_files(self) -> list[str]:
        return sorted(str(p) for p in (self.path / "rejected").glob("part-*.parquet"))

    def commit_batch(self, inputs: list[str], kept: pd.DataFrame, rejected: pd.DataFrame,
                     stats: dict[str, Any]) -> None:
        """Write one batch: data files first, the marker last (the marker is the commit)."""
        key = stable_hash(sorted(inputs), 16)
        files = {}
        for name, frame in ((f"part-{key}.parquet", kept), (f"rejected/part-{key}.parquet", rejected)):
            if len(frame):
                files[name] = atomic_write_parquet(self.path / name, frame)
        atomic_write_json(self.path / DONE / f"{key}.json", {"inputs": inputs, **stats, "files": files})

    def damaged(self, deep: bool = False) -> dict[str, str]:
        """Committed batches whose files are not what their marker recorded: key -> what is wrong.
        Sizes only (cheap: a committed stage checks its manifest's list), or `deep`: every checksum.
        Batches committed before markers recorded their files are not checked."""
        if self.committed and not deep:
            files = self.manifest().get("files", {})
            return {batch_key(name): f"{name}: {problem}" for name, recorded in files.items()
                    if (problem := file_problem(self.path / name, recorded, deep=False))}
        return {key: problem for key, _, problem in self._checked_markers(deep) if problem}

    def _checked_markers(self, deep: bool) -> Iterable[tuple[str, dict[str, Any] | None, str | None]]:
        """(batch key, marker, what is wrong with the batch or None), marker by marker."""
        for path in sorted((self.path / DONE).glob("*.json")):
            try:
                marker = json.loads(path.read_text())
            except ValueError:
                yield path.stem, None, f"{DONE}/{path.name}: does not parse"
                continue
            yield path.stem, marker, marker_problem(self.path, marker, deep)

    def uncommit_damaged(self, deep: bool = False) -> dict[str, str]:
        """Uncommit damaged batches, so the next run of the stage recomputes exactly those; returns them."""
        damaged = self.damaged(deep)
        self._uncommit(damaged)
        return damaged

    def _uncommit(self, damaged: dict[str, str], say: Callable[[str], None] = print) -> None:
        """Remove these batches' markers and files, and the manifest; say so once."""
        if not damaged:
            return
        for key in damaged:
            for name in (f"{DONE}/{key}.json", f"part-{key}.parquet", f"rejected/part-{key}.parquet"):
                (self.path / name).unlink(missing_ok=True)
        (self.path / MANIFEST).unlink(missing_ok=True)
        say(f"[redo] {self.path}: {len(damaged)} committed batch(es) damaged "
            f"(e.g. {next(iter(damaged.values()))}); recomputing them")

    def record_time(self, session: str, started: float) -> None:
        path = self.path / TIMES
        times = json.loads(path.read_text()) if path.exists() else {}
        times[session] = time.time() - started
        atomic_write_json(path, times)

    def stats(self, files: dict[str, Any] | None = None) -> StageStats:
        """Totals over the committed batches; `files`, when given, collects each data file's size."""
        stats = StageStats()
        for marker in self.markers():
            stats.add(marker)
            if files is not None:
                files.update({name: {"bytes": r["bytes"]} for name, r in marker.get("files", {}).items()})
        if (self.path / TIMES).exists():
            stats.seconds = sum(json.loads((self.path / TIMES).read_text()).values())
        return stats

    def commit(self, identity: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        files: dict[str, Any] = {}
        manifest = {"stage": self.name, "identity": identity, "committed_at": time.time(),
                    **self.stats(files).as_dict(), **(extra or {}), "files": files}
        atomic_write_json(self.path / MANIFEST, manifest)
        return manifest

    def read(self, columns: list[str] | None = None) -> pd.DataFrame:
        files = self.part_files()
        if not files:
            return pd.DataFrame(columns=columns or [])
        return pd.concat([pd.read_parquet(f, columns=columns) for f in files], ignore_index=True)


def marker_problem(stage_path: Path, marker: dict[str, Any], deep: bool) -> str | None:
    """The first of a marker's files that is not as recorded, and what is wrong (None: all whole).
    Markers written before files were recorded have nothing to check."""
    for name, recorded in marker.get("files", {}).items():
        if problem := file_problem(stage_path / name, recorded, deep):
            return f"{name}: {problem}"
    return None


def batch_key(file_name: str) -> str:
    """The batch a data file belongs to: `part-<key>.parquet` or `rejected/part-<key>.parquet`."""
    return Path(file_name).name.removeprefix("part-").removesuffix(".parquet")


class StopRequested(Exception):
    """The stage a run was asked to stop after (`stop_after`) is committed."""


class NothingKept(Exception):
    """A stage kept no row of a non-empty input, or an iteration has nothing to train on (on_empty: stop)."""


class RunDir:
    """A run: its directory, what it was asked (stop_after, on_empty) and the engines its stages keep."""

    def __init__(self, path: Path | str, stop_after: str | None = None, on_empty: str = "continue",
                 engines: EnginePool | None = None):
        self.path = Path(path)
        self.engines = engines if engines is not None else EnginePool()
        self.stop_after = stop_after  # "iter-NN/name"
        # "stop" or "continue"; recipes pass their config's (default stop), stages driven directly go on
        self.on_empty = on_empty

    def skip_iteration(self, step: dict[str, Any], why: str, stays: str) -> None:
        """An iteration with nothing to train on: its summary says why, then the run stops (or goes on,
        on_empty: continue) saying what stays as it was."""
        step["skipped"] = why
        self.write_iteration_summary(step)
        self.nothing_kept(f"iteration {step['iteration']}: {why}; {stays}")

    def nothing_kept(self, what: str) -> None:
        """Stop the run (NothingKept) or, with on_empty: continue, say so and go on."""
        if self.on_empty == "stop":
            raise NothingKept(what)
        print(f"[empty] {what}; going on (on_empty: continue)")

    def check_kept(self, stage: StageDir) -> None:
        """A committed stage that kept nothing of a non-empty input stops the run (or is noted)."""
        manifest = stage.manifest()
        if manifest["rows_in"] and not manifest["rows_out"]:
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(manifest["rejected"].items())) or "none recorded"
            self.nothing_kept(f"{stage.path.parent.name}/{stage.name} kept 0 of {manifest['rows_in']} rows "
                              f"(dropped by reason: {reasons})")

    def check_stop(self) -> None:
        """Raise StopRequested when the stage named by `stop_after` is committed."""
        if self.stop_after is None:
            return
        iteration, name = self.stop_after.split("/")
        for d in (self.path / iteration).glob(f"{name}-*"):
            if d.name.rsplit("-", 1)[0] == name and (d / MANIFEST).exists():
                raise StopRequested(f"{self.stop_after} is committed ({d})")

    def iteration_dir(self, iteration: int) -> Path:
        return self.path / f"iter-{iteration:02d}"

    def write_iteration_summary(self, step: dict[str, Any]) -> None:
        """`iter-NN/iteration.json`: what a recipe reports of iteration NN (its data funnel, in step
        order, and rates or histograms) for the CLI and the report."""
        atomic_write_json(self.iteration_dir(step["iteration"]) / ITERATION_SUMMARY, step, sort_keys=False)

    def stage(self, iteration: int, name: str, identity: dict[str, Any]) -> StageDir:
        return StageDir(self.iteration_dir(iteration) / f"{name}-{stable_hash(identity)}")

    def stages(self) -> list[StageDir]:
        """Every stage directory of the run, oldest first."""
        dirs = [d for d in self.path.glob("iter-*/*") if (d / IDENTITY).exists()]
        def created(d: Path) -> tuple[str, float]:
            return d.parent.name, json.loads((d / IDENTITY).read_text())["created"]

        return [StageDir(d) for d in sorted(dirs, key=created)]
