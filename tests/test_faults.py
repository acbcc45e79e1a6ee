"""Machinery failures on the real engine: an engine actor and a reward-model actor killed (SIGKILL) in
the middle of their stage. The actor is restarted, the batch it held is redone, and the stage commits
exactly what an uninterrupted run of the same seed commits: no row rejected for the failure, none lost."""

import os
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import ray

from conftest import kept_and_rejected
from raysynth.config import EngineConfig, SamplingConfig, ScorerConfig
from raysynth.engine_pool import EnginePool
from raysynth.models import resolve_model
from raysynth.pipeline import Lineage, run_llm_stage, write_source_stage
from raysynth.score.stage import run_score_stage
from raysynth.steps.eval import respond_step
from raysynth.store import RunDir
from tiny_models import build_tiny_reward_model

pytestmark = pytest.mark.slow

LINEAGE = Lineage("test", 1, "smollm2-135m")
# Reasons a row may be rejected for: its own (parse, length). A failure of the machinery is none of them.
MACHINERY = ("engine", "generation_error", "actor", "score_error", "endpoint")


class KillAtFirstCommit(threading.Thread):
    """Watches `run`'s stage `prefix-*`; when its first batch is committed, SIGKILLs every process whose
    command line holds `process_marker` (the actor) and notes how many batches were committed then."""

    def __init__(self, run: RunDir, prefix: str, process_marker: str):
        super().__init__(daemon=True)
        self.run_dir, self.prefix, self.marker = run, prefix, process_marker
        self.killed: list[int] = []
        self.committed_at_kill = 0

    def run(self) -> None:
        deadline = time.time() + 900
        while time.time() < deadline:
            markers = list(self.run_dir.path.glob(f"iter-*/{self.prefix}-*/_done/*.json"))
            if markers:
                self.committed_at_kill = len(markers)
                for process in psutil.process_iter(["cmdline"]):
                    if self.marker in " ".join(process.info["cmdline"] or []):
                        process.kill()
                        self.killed.append(process.pid)
                return
            time.sleep(0.02)


def wait_until_dead(actor, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            continue
        time.sleep(0.5)
    raise AssertionError(f"the actor was not dead {timeout} s after ray.kill")


def assert_same_commit(stage, reference) -> None:
    for ours, theirs in zip(kept_and_rejected(stage.path), kept_and_rejected(reference.path)):
        assert list(ours["id"]) == list(theirs["id"]), stage.name
        pd.testing.assert_frame_equal(ours, theirs[ours.columns], check_dtype=False)
    rejected = stage.stats().rejected
    assert not [r for r in rejected if r.startswith(MACHINERY)], rejected


def test_a_killed_engine_actor_is_restarted_and_its_batch_redone(local_ray, tmp_path: Path):
    step = respond_step(SamplingConfig(temperature=0.8, max_tokens=24, seed=5))
    engine = EngineConfig(batch_size=2)
    model_dir = str(resolve_model("smollm2-135m"))
    prompts = [{"prompt": f"Write one sentence about the number {i}."} for i in range(16)]

    def respond(run: RunDir):
        source = write_source_stage(run, 1, "prompts", prompts, {"n": len(prompts)}, LINEAGE)
        return run_llm_stage(run, 1, step, source, engine, model_dir, LINEAGE)

    engines = EnginePool()  # both runs on the same kept engine
    reference = respond(RunDir(tmp_path / "reference", engines=engines))
    run = RunDir(tmp_path / "killed", engines=engines)
    killer = KillAtFirstCommit(run, "eval-respond", "VLLMEngine")
    killer.start()
    stage = respond(run)  # on the same kept engine actor, killed after its first batch
    killer.join(5)
    assert killer.killed, "no engine actor process was found to kill"
    assert 0 < killer.committed_at_kill < len(prompts) // 2, "the kill did not land mid-stage"
    assert stage.committed and stage.stats().rows_in == len(prompts)
    assert_same_commit(stage, reference)

    # The next stage reuses the kept engines, a set that lost an actor for good is replaced, and
    # release stops them.
    first = [a._actor_id.hex() for a in engines.actors(engine, model_dir)]
    assert [a._actor_id.hex() for a in engines.actors(engine, model_dir)] == first
    killed = engines.actors(engine, model_dir)[0]
    ray.kill(killed, no_restart=True)
    wait_until_dead(killed)  # a call to an actor still being killed can wait for its death to register
    second = engines.actors(engine, model_dir)
    assert second[0]._actor_id.hex() != first[0] and ray.get(second[0].__ray_ready__.remote(), timeout=600)
    # The engine runs in the actor's process on every bound core, not on Ray's one thread per CPU.
    threads = ray.get(second[0].__ray_call__.remote(lambda engine: __import__("torch").get_num_threads()))
    assert threads == len(os.sched_getaffinity(0)), threads
    engines.release()
    wait_until_dead(second[0])


def test_a_killed_scorer_actor_is_restarted_and_its_batch_redone(local_ray, tmp_path: Path):
    reward_model = build_tiny_reward_model(tmp_path / "rm", resolve_model("smollm2-135m"))
    # Every row kept (the tiny model's random weights decide the gaps): its scores are what is compared.
    scorer = ScorerConfig(kind="reward_model", model=str(reward_model), gap_threshold=-1e9, max_repetition=None,
                          batch_size=1, num_cpus=0.5, max_length=64)
    rows = [{"prompt": f"Question {i}?", "a": f"Answer {i} is yes.", "b": f"Answer {i} is no."} for i in range(120)]

    def score(run: RunDir):
        source = write_source_stage(run, 1, "pairs", rows, {"n": len(rows)}, LINEAGE)
        return run_score_stage(run, 1, "scores", source, scorer, ("prompt", "a", "b"), LINEAGE)

    reference = score(RunDir(tmp_path / "reference"))
    run = RunDir(tmp_path / "killed")
    killer = KillAtFirstCommit(run, "scores", "ScoreActor")
    killer.start()
    stage = score(run)
    killer.join(5)
    assert killer.killed, "no scorer actor process was found to kill"
    assert 0 < killer.committed_at_kill < len(rows), "the kill did not land mid-stage"
    assert stage.committed and stage.stats().rows_in == len(rows)
    assert_same_commit(stage, reference)


KEYWORD_DRIVER = """
import sys
from raysynth.recipes.synpo.config import KeywordConfig
from raysynth.recipes.synpo.keywords import run_keyword_pool, run_keyword_sample
from raysynth.pipeline import Lineage, init_ray
from raysynth.store import RunDir

run, cfg = RunDir(sys.argv[1]), KeywordConfig(batch_size=4, sample_batch_size=16)
init_ray()
pool = run_keyword_pool(run, [sys.argv[2]], "text", cfg, 0, Lineage("test", 0, "-"))
run_keyword_sample(run, 1, pool, 60, cfg, 0, Lineage("test", 1, "-"))
"""


def test_a_corpus_of_repeated_lines_is_killed_mid_pool_and_resumes(tmp_path: Path):
    """Every paragraph three times, in three places: each is pooled once and its two extra copies
    rejected as duplicate_input; a driver killed mid pool resumes, and both stages equal an
    uninterrupted run's (the pool's batches differ from run to run, its rows do not)."""
    import subprocess
    import sys

    from conftest import kill_when
    from raysynth.shipped import CORPUS
    from raysynth.store import StageDir

    lines = CORPUS.read_text().splitlines()[:150]
    corpus = tmp_path / "tripled.jsonl"
    corpus.write_text("\n".join(lines * 3) + "\n")
    script = tmp_path / "driver.py"
    script.write_text(KEYWORD_DRIVER)

    def pool_partly_committed(run_dir: Path):
        pool = next(run_dir.glob("iter-00/keyword-pool-*"), None)
        return pool if pool and not StageDir(pool).committed and any(pool.glob("_done/*.json")) else None

    killed, reference = tmp_path / "killed", tmp_path / "reference"
    assert kill_when([sys.executable, str(script), str(killed), str(corpus)],
                     lambda: pool_partly_committed(killed), 600) is not None, "the pool ended before the kill"
    for run_dir in (killed, reference):
        subprocess.run([sys.executable, str(script), str(run_dir), str(corpus)], check=True, timeout=600,
                       capture_output=True)
    for stage_glob in ("iter-00/keyword-pool-*", "iter-01/keywords-*"):
        ours, theirs = (StageDir(next(r.glob(stage_glob))) for r in (killed, reference))
        assert ours.committed and ours.path.name == theirs.path.name
        for mine, other in zip(kept_and_rejected(ours.path), kept_and_rejected(theirs.path)):
            assert list(mine["id"]) == list(other["id"]) and mine["id"].is_unique
            pd.testing.assert_frame_equal(mine, other[mine.columns], check_dtype=False)
    pool = StageDir(next(killed.glob("iter-00/keyword-pool-*")))
    kept, rejected = kept_and_rejected(pool.path)
    assert pool.done_count() == 150 and pool.stats().rows_in == 450
    assert (rejected["reason"] == "duplicate_input").sum() == 300
