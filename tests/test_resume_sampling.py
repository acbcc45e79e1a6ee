"""A stage resumed after an interruption samples, at temperature > 0, exactly what an uninterrupted
run of the same seed sampled: every redone batch holds the same rows and draws the same numbers."""

import shutil

import pandas as pd
import pytest

from raysynth.config import EngineConfig, SamplingConfig
from raysynth.models import resolve_model
from raysynth.pipeline import Lineage, finish_stage, open_stage, run_llm_stage
from raysynth.steps.eval import respond_step
from raysynth.store import MANIFEST, RunDir

pytestmark = pytest.mark.slow

LINEAGE = Lineage("test", 0, "smollm2-135m")
ROWS = [{"prompt": f"Name an animal and a colour. ({i})"} for i in range(11)]


def uneven_source(run: RunDir):
    """The prompts as an earlier LLM stage leaves its output: part files of uneven sizes (3, 3, 1, 4),
    so batches of 2 straddle files and any reordering of the read shows."""
    identity = {"rows": len(ROWS)}
    stage = open_stage(run, 0, "prompts", identity)
    start = 0
    for size in (3, 3, 1, 4):
        rows = [{**row, "id": f"row-{i:02d}", "parent_id": ""} for i, row in enumerate(ROWS[start:start + size], start)]
        stage.commit_batch([r["id"] for r in rows], pd.DataFrame(rows), pd.DataFrame(),
                           {"rows_in": size, "rows_out": size, "rejected": {}, "tokens_in": 0, "tokens_out": 0})
        start += size
    return finish_stage(run, stage, identity, len(ROWS))


def sampled(stage) -> dict[str, str]:
    frame = stage.read(["parent_id", "response"])
    return dict(zip(frame["parent_id"], frame["response"]))


def test_a_resumed_stage_samples_what_an_uninterrupted_one_did(local_ray, tmp_path):
    step = respond_step(SamplingConfig(temperature=1.0, max_tokens=12, seed=3))
    engine = EngineConfig(batch_size=2)
    model_dir = str(resolve_model("smollm2-135m"))
    run = RunDir(tmp_path / "run")
    source = uneven_source(run)
    whole = run_llm_stage(run, 0, step, source, engine, model_dir, LINEAGE)
    first = sampled(whole)
    assert len(first) == len(ROWS) and len(set(first.values())) > len(ROWS) // 2  # sampled, not one reply

    # An interrupted run: the stage uncommitted, with only some of its batches done (their markers
    # and parts kept, the others gone, as a kill leaves them); then resumed.
    interrupted = RunDir(tmp_path / "interrupted", engines=run.engines)  # the engine the first run loaded
    shutil.copytree(run.path, interrupted.path)
    stage_dir = interrupted.path / whole.path.relative_to(run.path)
    (stage_dir / MANIFEST).unlink()
    markers = sorted((stage_dir / "_done").glob("*.json"))
    for marker in markers[1::2]:
        marker.unlink()
    source = [s for s in interrupted.stages() if s.name.startswith("prompts")][0]
    resumed = run_llm_stage(interrupted, 0, step, source, engine, model_dir, LINEAGE)
    assert sampled(resumed) == first
    assert resumed.path == stage_dir and len(list((stage_dir / "_done").glob("*.json"))) == len(markers)
