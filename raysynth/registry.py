"""A run's model registry: `<run_dir>/models.json`, the models a run may serve and which one is current.

One file, replaced atomically, so a kill at any moment leaves either the old or the new registry,
never a pointer naming a model the registry lacks. Read-modify-write goes under an exclusive lock on
`models.json.lock`, because recipes (driver) and `POST /admin/swap` (a replica) both write it.
Registering a directory is driver-side (`register_model`: recipes, `raysynth models add`,
`raysynth serve --model`); the HTTP API can only make a registered model current (`make_current`).
Replicas follow `current`; `history` (names that were current, newest last) is where a replica
falls back to when the current model does not load.

The current model is the run's champion. A recipe registers each trained model as a candidate
(`make_current=False`) with its lineage, and `record_decision` files the promotion gate's verdict
(raysynth/promotion.py): promoted, it becomes current; rejected, it stays registered with the reason.
`timeline` records every change of champion and every verdict, for `raysynth models` and the report.
"""

from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, Field

from raysynth.store import atomic_write_json

REGISTRY = "models.json"
HISTORY_KEPT = 20


# champion: current; retired: was champion until another was promoted over it; rolled back: was
# champion until a rollback left it; candidate: registered, never current; rejected: failed the gate.
Status = Literal["champion", "retired", "rolled back", "candidate", "rejected"]
Event = Literal["champion", "promoted", "rejected", "rolled back", "swapped"]


class ModelEntry(BaseModel):
    name: str
    path: str
    iteration: int
    registered_at: float
    recipe: str | None = None
    parent: str | None = Field(None, description="the model it was trained from")
    training_data: str | None = Field(None, description="the file it was trained on")
    config_hash: str | None = None
    status: Status = "candidate"
    reason: str = ""
    versus: dict[str, Any] | None = Field(None, description="its evaluation against the champion it faced")


class TimelineEvent(BaseModel):
    at: float
    model: str
    event: Event
    reason: str = ""


class Registry(BaseModel):
    current: str | None = None
    history: list[str] = Field(default_factory=list)
    models: dict[str, ModelEntry] = Field(default_factory=dict)
    timeline: list[TimelineEvent] = Field(default_factory=list)

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


def _point(registry: Registry, name: str, event: Event, reason: str = "") -> None:
    previous = registry.current_entry()
    if previous is not None and previous.name != name:
        previous.status = "rolled back" if event == "rolled back" else "retired"
    registry.current = name
    registry.models[name].status = "champion"
    registry.history = (registry.history + [name])[-HISTORY_KEPT:]
    registry.timeline.append(TimelineEvent(at=time.time(), model=name, event=event, reason=reason))


def register_model(run_dir: Path, name: str, model_dir: Path, iteration: int, make_current: bool = True,
                   lineage: dict[str, Any] | None = None, reason: str = "") -> ModelEntry:
    """Add `model_dir` under `name` (and, by default, make it current), with its `lineage` (recipe,
    parent, training_data, config_hash) and the `reason` it is there. Registering the same name and
    directory again (a resumed run passing an iteration it had finished) changes nothing, so a running
    server is not sent back to an older model and a verdict already filed stays; a new directory under
    an old name replaces it."""
    path = str(Path(model_dir).resolve())
    with _locked(run_dir) as registry:
        known = registry.models.get(name)
        if known and known.path == path and (registry.current or not make_current):
            return known
        entry = ModelEntry(name=name, path=path, iteration=iteration, registered_at=time.time(), reason=reason,
                           **(lineage or {}))
        registry.models[name] = entry
        if make_current:
            _point(registry, name, "champion", "registered as the run's first model" if registry.current is None
                   else "registered as current")
        _write(run_dir, registry)
        return entry


def record_decision(run_dir: Path, name: str, promoted: bool, reason: str,
                    versus: dict[str, Any] | None = None) -> ModelEntry:
    """File the promotion gate's verdict on a registered candidate: promoted, it becomes current. The
    same verdict again (a resumed run) changes nothing, so a rollback made since is not undone."""
    with _locked(run_dir) as registry:
        entry = _known(run_dir, registry, name)
        if entry.status != "candidate" and entry.reason == reason:
            return entry
        entry.reason, entry.versus = reason, versus
        if promoted:
            _point(registry, name, "promoted", reason)
        else:
            entry.status = "rejected"
            registry.timeline.append(TimelineEvent(at=time.time(), model=name, event="rejected", reason=reason))
        _write(run_dir, registry)
        return entry


def _known(run_dir: Path, registry: Registry, name: str) -> ModelEntry:
    if name not in registry.models:
        known = ", ".join(sorted(registry.models)) or "none"
        raise UnknownModel(f"{name!r} is not registered in {run_dir} (registered: {known}); "
                           f"register a directory with: raysynth models add DIR --name NAME --run-dir {run_dir}")
    return registry.models[name]


def make_current(run_dir: Path, name: str | None, event: Event = "swapped", reason: str = "") -> ModelEntry:
    """Point the run at a registered model: a swap, a promotion by hand or (event "rolled back", `name`
    None: the champion before the current one) a rollback; UnknownModel when it is not registered."""
    if not (Path(run_dir) / REGISTRY).is_file():
        what = "nothing to roll back to" if name is None else f"{name!r} is not registered"
        raise UnknownModel(f"{what}: {run_dir} has no {REGISTRY}; register a directory with: "
                           f"raysynth models add DIR --name NAME --run-dir {run_dir}")
    with _locked(run_dir) as registry:
        if name is None:
            earlier = registry.fallbacks()
            if not earlier:
                raise UnknownModel(f"{run_dir}: no earlier champion to roll back to (current: {registry.current})")
            name = earlier[0].name
        entry = _known(run_dir, registry, name)
        if registry.current != name:
            _point(registry, name, event, reason)
            _write(run_dir, registry)
        return entry
