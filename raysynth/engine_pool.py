"""The engine actors a run keeps between its LLM stages.

One `EnginePool` belongs to each run (`RunDir.engines`): its stages hand batches to the pool's
actors (`pipeline.generate_on_engines`), and work that needs the CPUs, GPUs and memory they hold
(training, reward-model scoring, self-statistics) calls `release()` first. One model's engines at a
time, as one KV cache fills the share of RAM (CPU) or GPU memory given to it.

Ray is imported where it is used: the store (and with it `raysynth status`, `report`, `models`)
imports this module.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raysynth.config import EngineConfig


log = logging.getLogger(__name__)

# The concurrency group of an engine actor's load questions.
LOAD_GROUP = "load"
# Seconds between the pool scaler's looks at its engines' loads.
SCALE_POLL_S = 1.0


def ray_instance() -> str:
    """This driver's connection to Ray: after a `ray.shutdown` and a new `ray.init` the pool's actors
    are gone. The job id alone does not tell (each new local Ray numbers its first job 01000000); the
    driver's node id is new with every Ray start."""
    import ray

    context = ray.get_runtime_context()
    return f"{context.get_node_id()}/{context.get_job_id()}"


def _stop(held: dict[str, Any]) -> None:
    """Stop the pool's scaler, kill the actors in `held` (when they belong to this driver's Ray) and
    forget them."""
    import ray

    with held["lock"]:
        held["scaling"].set()
        if ray.is_initialized() and held["instance"] == ray_instance():
            for actor in [*held["handles"], *held["retiring"], *held["pending"]]:
                ray.kill(actor)
            if held["roster"] is not None:
                ray.kill(held["roster"])
        held.update(key=None, instance=None, handles=[], retiring=[], pending=[], roster=None,
                    scaling=threading.Event())


class EngineRoster:
    """The kept engines a stage's forwarding tasks choose from, asked before each batch: the pool's
    scaler adds and removes engines while stages run."""

    def __init__(self) -> None:
        self.engines: list[Any] = []

    def set(self, engines: list[Any]) -> None:
        self.engines = list(engines)

    def get(self) -> list[Any]:
        return self.engines


class EnginePool:
    """The running engine actors of one model and engine settings, between `concurrency` (min, max):
    min start with the first stage; while every engine has batches waiting for a slot the pool starts
    another (on a cluster with an autoscaler, a pending engine is what adds a node), and an engine
    beyond min without rows for `idle_timeout_s` is stopped, within a stage or between stages, as
    Ray Data scales a stage's actor pool. The pool stops them when it is released or
    garbage-collected: a dropped pool's handles may live on in Ray Data's operator state (the
    stage's task arguments), and an actor lives as long as any handle does. (Engines named in Ray's
    namespace instead died between stages; a detached one would outlive a killed driver.)"""

    def __init__(self) -> None:
        # key: the Ray instance, model and settings the actors were started with; instance: the first
        # alone; roster: what the stages read; retiring: idle engines left out of it, stopped once empty.
        self.held: dict[str, Any] = {"key": None, "instance": None, "handles": [], "retiring": [], "pending": [],
                                     "roster": None, "lock": threading.RLock(), "scaling": threading.Event()}
        finalizer = weakref.finalize(self, _stop, self.held)
        finalizer.atexit = False  # at exit Ray ends a driver's actors itself

    def roster(self, engine: EngineConfig, model_dir: str) -> Any:
        """The roster actor of `model_dir`'s engines with `engine`'s settings, starting them (and
        stopping any others) when the model or settings changed since the last call, or when one of
        them is dead or hung."""
        import ray

        settings = engine.model_dump(mode="json", exclude={"batch_size", "keep_alive", "endpoint"})
        instance = ray_instance()
        key = json.dumps([instance, model_dir, settings], sort_keys=True)
        with self.held["lock"]:
            if self.held["key"] == key and not all_alive(self.held["handles"], engine.batch_timeout_s):
                self.release()  # one has used up its restarts (or hangs): start the model's engines afresh
            if self.held["key"] != key:
                self.release()
                roster = ray.remote(EngineRoster).options(num_cpus=0, max_concurrency=64).remote()
                handles = [start_engine(engine, model_dir) for _ in range(engine.concurrency[0])]
                ray.get(roster.set.remote(handles))
                self.held.update(key=key, instance=instance, handles=handles, roster=roster)
                if engine.concurrency[1] > engine.concurrency[0]:
                    threading.Thread(target=keep_scaled, args=(self.held, engine, model_dir, self.held["scaling"]),
                                     name="engine-pool-scaler", daemon=True).start()
            return self.held["roster"]

    def actors(self, engine: EngineConfig, model_dir: str) -> list[Any]:
        """The engines the stages choose from now (`roster`)."""
        self.roster(engine, model_dir)
        with self.held["lock"]:
            return list(self.held["handles"])

    def release(self) -> None:
        """Stop the actors, giving back their CPUs, GPUs and memory."""
        _stop(self.held)


def start_engine(engine: EngineConfig, model_dir: str) -> Any:
    """One kept engine actor. A dead one is restarted (model loaded again) and generate_on_engines
    redoes its batch. Threaded: batches_in_flight calls generate at once and as many more per engine
    the pool may grow to wait for a slot (so its waiting work is seen), and a thread of its own
    answers load questions (pipeline.least_loaded, keep_scaled)."""
    import ray

    from raysynth.engine import VLLMEngine, actor_runtime_env

    actor = ray.remote(concurrency_groups={LOAD_GROUP: 1})(VLLMEngine).options(
        num_cpus=engine.num_cpus, num_gpus=engine.num_gpus, resources=engine.resources,
        max_restarts=engine.max_restarts, max_task_retries=0,
        max_concurrency=engine.batches_in_flight * engine.concurrency[1], **actor_runtime_env(engine))
    return actor.remote(engine, model_dir)


def ask_loads(engines: list[Any], timeout_s: float = 10.0) -> list[tuple[float, int]]:
    """Each engine's (rows held, batches waiting for a slot), asked at once in the load concurrency
    group (answered while every generate slot is busy) within one deadline; a dead, restarting or
    silent engine reads (inf, 0): full for routing, no sign of work waiting."""
    import ray

    asked = [engine.load.options(concurrency_group=LOAD_GROUP).remote() for engine in engines]
    deadline, loads = time.time() + timeout_s, []
    for answer in asked:
        try:
            loads.append(tuple(ray.get(answer, timeout=max(0.0, deadline - time.time()))))
        except ray.exceptions.RayError:  # GetTimeoutError included
            loads.append((float("inf"), 0))
    return loads


def keep_scaled(held: dict[str, Any], engine: EngineConfig, model_dir: str, stop: threading.Event) -> None:
    """The pool's scaler, a driver thread until the pool is released. Every SCALE_POLL_S: when every
    engine had batches waiting for a slot at two polls in a row, start one more (up to max; it joins
    the roster once loaded); an engine beyond min without rows for engine.idle_timeout_s leaves the
    roster, and is stopped once it holds no rows (a batch routed to it just before still finishes)."""
    import ray

    full_polls, idle_since, ready_refs = 0, {}, {}
    while not stop.wait(SCALE_POLL_S):
        try:
            with held["lock"]:
                engines, pending, retiring = list(held["handles"]), list(held["pending"]), list(held["retiring"])
            loads = ask_loads(engines + retiring)
            for actor in pending:  # asked once per engine: its answer comes when it has loaded
                if actor_key(actor) not in ready_refs:
                    ready_refs[actor_key(actor)] = actor.__ray_ready__.remote()
            refs = [ready_refs[actor_key(a)] for a in pending]
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
            started, failed = [], []
            for actor, ref in zip(pending, refs):
                if ref in done:
                    try:
                        ray.get(ref)
                        started.append(actor)
                    except ray.exceptions.RayError as exc:
                        log.warning("an engine the pool started failed to load: %s", exc)
                        failed.append(actor)
                    del ready_refs[actor_key(actor)]
            now = time.time()
            full_polls = full_polls + 1 if engines and all(waiting for _, waiting in loads[:len(engines)]) else 0
            for actor, (rows, _) in zip(engines, loads):
                if rows:
                    idle_since.pop(actor_key(actor), None)
                else:
                    idle_since.setdefault(actor_key(actor), now)
            empty = [a for a, (rows, _) in zip(retiring, loads[len(engines):]) if rows == 0]
            with held["lock"]:
                if stop.is_set():
                    return
                before = list(held["handles"])
                held["pending"] = [a for a in held["pending"] if a not in started and a not in failed]
                held["handles"] += started
                low, high = engine.concurrency
                if full_polls >= 2 and len(held["handles"]) + len(held["pending"]) < high:
                    held["pending"].append(start_engine(engine, model_dir))
                    full_polls = 0
                    log.info("every engine has batches waiting: starting engine %d of at most %d",
                             len(held["handles"]) + len(held["pending"]), high)
                idle = [a for a in held["handles"] if now - idle_since.get(actor_key(a), now) >= engine.idle_timeout_s]
                if idle and len(held["handles"]) > low:
                    held["handles"].remove(idle[-1])
                    held["retiring"].append(idle[-1])
                    idle_since.pop(actor_key(idle[-1]), None)
                    log.info("an engine idle for %.0f s leaves the pool (%d left)", engine.idle_timeout_s,
                             len(held["handles"]))
                for actor in empty + failed:
                    ray.kill(actor)
                held["retiring"] = [a for a in held["retiring"] if a not in empty]
                if held["handles"] != before:
                    ray.get(held["roster"].set.remote(held["handles"]))
        except Exception:  # a Ray hiccup: the next poll asks again
            log.exception("the engine pool's scaler")


def actor_key(actor: Any) -> str:
    return actor._actor_id.hex()


def wait_until_ready(actor: Any, timeout_s: float) -> None:
    """Until a restarting actor has loaded its model again (calls to it fail at once meanwhile), or
    it is gone for good (the next call says so), or `timeout_s`."""
    import ray

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=max(1.0, deadline - time.time()))
            return
        except ray.exceptions.ActorUnavailableError:
            time.sleep(1.0)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return


def all_alive(actors: list[Any], timeout_s: float) -> bool:
    import ray

    try:
        ray.get([actor.__ray_ready__.remote() for actor in actors], timeout=timeout_s)
        return True
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return False
