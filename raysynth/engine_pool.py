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
import time
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raysynth.config import EngineConfig


# The concurrency group of an engine actor's load questions.
LOAD_GROUP = "load"


def ray_instance() -> str:
    """This driver's connection to Ray: after a `ray.shutdown` and a new `ray.init` the pool's actors
    are gone. The job id alone does not tell (each new local Ray numbers its first job 01000000); the
    driver's node id is new with every Ray start."""
    import ray

    context = ray.get_runtime_context()
    return f"{context.get_node_id()}/{context.get_job_id()}"


def _stop(held: dict[str, Any]) -> None:
    """Kill the actors in `held` (when they belong to this driver's Ray) and forget them."""
    import ray

    if held["handles"] and ray.is_initialized() and held["instance"] == ray_instance():
        for actor in held["handles"]:
            ray.kill(actor)
    held.update(key=None, instance=None, handles=[])


class EnginePool:
    """The running engine actors of one model and engine settings. The pool stops them when it is
    released or garbage-collected: a dropped pool's handles may live on in Ray Data's operator state
    (the stage's task arguments), and an actor lives as long as any handle does. (Engines named in
    Ray's namespace instead died between stages; a detached one would outlive a killed driver.)"""

    def __init__(self) -> None:
        # key: the Ray instance, model and settings the actors were started with; instance: the first alone
        self.held: dict[str, Any] = {"key": None, "instance": None, "handles": []}
        finalizer = weakref.finalize(self, _stop, self.held)
        finalizer.atexit = False  # at exit Ray ends a driver's actors itself

    def actors(self, engine: EngineConfig, model_dir: str) -> list[Any]:
        """The actors of `model_dir` with `engine`'s settings, started (and any others stopped) when the
        model or settings changed since the last call, or when one of them is dead or hung."""
        import ray

        from raysynth.engine import VLLMEngine, actor_runtime_env

        settings = engine.model_dump(mode="json", exclude={"batch_size", "keep_alive", "endpoint"})
        instance = ray_instance()
        key = json.dumps([instance, model_dir, settings], sort_keys=True)
        if self.held["key"] == key and not all_alive(self.held["handles"], engine.batch_timeout_s):
            self.release()  # one has used up its restarts (or hangs): start the model's engines afresh
        if self.held["key"] != key:
            self.release()
            # A dead actor is restarted (model loaded again); generate_on_engines redoes its batch.
            # A threaded actor: batches_in_flight generate calls at once, and a thread of its own
            # for load questions (pipeline.least_loaded).
            actor = ray.remote(concurrency_groups={LOAD_GROUP: 1})(VLLMEngine).options(
                num_cpus=engine.num_cpus, num_gpus=engine.num_gpus, resources=engine.resources,
                max_restarts=engine.max_restarts, max_task_retries=0, max_concurrency=engine.batches_in_flight,
                **actor_runtime_env(engine))
            self.held.update(key=key, instance=instance,
                             handles=[actor.remote(engine, model_dir) for _ in range(engine.concurrency[1])])
        return self.held["handles"]

    def release(self) -> None:
        """Stop the actors, giving back their CPUs, GPUs and memory."""
        _stop(self.held)


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
