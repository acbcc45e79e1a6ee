"""A run's model registry: `<run_dir>/models.json`, the models a run may serve and which one is current.

One file, replaced atomically, so a kill at any moment leaves either the old or the new registry,
never a pointer naming a model the registry lacks. Read-modify-write goes under an exclusive lock on
`models.json.lock`, because recipes (driver) and `POST /admin/swap` (a replica) both write it.
Registering a directory is driver-side (`register_model`: recipes, `raysynth models add`,
`raysynth serve --model`); the HTTP API can only make a registered model current (`make_current`).
Replicas follow `current`; `history` (names that were current, newest last) is where a replica
falls back to when the current model does not load.
"""

from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, Field

from raysynth.store import atomic_write_json

REGISTRY = "models.json"
HISTORY_KEPT = 20


class ModelEntry(BaseModel):
    name: str
    path: str
    iteration: int
    registered_at: float


class Registry(BaseModel):
    current: str | None = None
    history: list[str] = Field(default_factory=list)
    models: dict[str, ModelEntry] = Field(default_factory=dict)

    def current_entry(self) -> ModelEntry | None:
        return self.models.get(self.current) if self.current else None

    def fallbacks(self) -> list[ModelEntry]:
        """Earlier current models, most recent first, without the current one."""
        names = [n for n in reversed(self.history) if n != self.current and n in self.models]
        return [self.models[n] for n in dict.fromkeys(names)]


class UnknownModel(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def read_registry(run_dir: Path) -> Registry:
    path = Path(run_dir) / REGISTRY
    if not path.is_file():
        return Registry()
    data = json.loads(path.read_text())
    if "models" not in data:  # a run from before the pointer moved in here: name -> entry, current_model.json
        pointer = path.with_name("current_model.json")
        current = json.loads(pointer.read_text())["name"] if pointer.is_file() else None
        data = {"current": current, "history": [current] if current else [], "models": data}
    return Registry.model_validate(data)


@contextmanager
def _locked(run_dir: Path) -> Iterator[Registry]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / f"{REGISTRY}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield read_registry(run_dir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write(run_dir: Path, registry: Registry) -> None:
    atomic_write_json(Path(run_dir) / REGISTRY, json.loads(registry.model_dump_json()), sort_keys=False)


def _point(registry: Registry, name: str) -> None:
    registry.current = name
    registry.history = (registry.history + [name])[-HISTORY_KEPT:]


def register_model(run_dir: Path, name: str, model_dir: Path, iteration: int, make_current: bool = True) -> ModelEntry:
    """Add `model_dir` under `name` (and, by default, make it current). Registering the same name and
    directory again (a resumed run passing an iteration it had finished) changes nothing, so a
    running server is not sent back to an older model; a new directory under an old name replaces it."""
    path = str(Path(model_dir).resolve())
    with _locked(run_dir) as registry:
        known = registry.models.get(name)
        if known and known.path == path and (registry.current or not make_current):
            return known
        entry = ModelEntry(name=name, path=path, iteration=iteration, registered_at=time.time())
        registry.models[name] = entry
        if make_current:
            _point(registry, name)
        _write(run_dir, registry)
        return entry


def make_current(run_dir: Path, name: str) -> ModelEntry:
    """Point the run at a registered model (a swap or a rollback); UnknownModel when it is not registered."""
    if not (Path(run_dir) / REGISTRY).is_file():
        raise UnknownModel(f"{name!r} is not registered: {run_dir} has no {REGISTRY}; register a directory with: "
                           f"raysynth models add DIR --name NAME --run-dir {run_dir}")
    with _locked(run_dir) as registry:
        if name not in registry.models:
            known = ", ".join(sorted(registry.models)) or "none"
            raise UnknownModel(f"{name!r} is not registered in {run_dir} (registered: {known}); "
                               f"register a directory with: raysynth models add DIR --name NAME --run-dir {run_dir}")
        if registry.current != name:
            _point(registry, name)
            _write(run_dir, registry)
        return registry.models[name]
