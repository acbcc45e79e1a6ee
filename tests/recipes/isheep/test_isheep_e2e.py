"""I-SHEEP end to end on the real engine: two iterations of in-context instruction generation ->
Self-Instruct filters -> answers -> self-assessment -> threshold -> perplexity and density (the model's
own representations) -> SFT (Total_base, so both iterations' data) -> IFEval, with the driver killed in
iteration 2 and the run resumed; then the report."""

import json
import os
import subprocess

import pandas as pd
import pytest

from conftest import (assert_resume_matches_uninterrupted, check_verdicts, kill_driver_when, partly_committed,
                      raysynth_cmd, run_raysynth)
from raysynth.registry import read_registry
from raysynth.store import RunDir

pytestmark = pytest.mark.slow

# batch_size 2 so every stage has several batches to be killed between. The paper's threshold (8,
# both scores): sampling is seeded, so whether a row passes is the same on every run of this test.
# One example per training worker and step: on CPU a step's time grows with its tokens, and two
# steps show the training path as well as eight examples would.
TINY_ISHEEP = """\
recipe: isheep
run_dir: {run_dir}
seed: 0
engine:
  model: smollm2-135m
  batch_size: 2
isheep:
  iterations: 2
  instructions_per_iteration: 8
  assessment: {{max_explanation_chars: 60}}
  data_filter: {{kind: density_perplexity, clusters: 3, per_cluster: 2, batch_size: 2}}
  training_setting: total_base
  steps:
    generate: {{max_tokens: 96, temperature: 0.8}}
    answer: {{max_tokens: 48}}
    assess: {{max_tokens: 64}}
train: {{max_steps: 2, save_steps: 2, per_device_batch_size: 1}}
eval:
  limit: 4
  winrate: false
  generation: {{max_tokens: 48}}
"""


@pytest.fixture(scope="module")
def isheep_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("isheep")
    run_dir = directory / "run"
    config = directory / "tiny-isheep.yaml"
    config.write_text(TINY_ISHEEP.format(run_dir=run_dir))
    killed_in = kill_driver_when(config, lambda: partly_committed(run_dir, 2), 1500)
    assert killed_in is not None, "the run ended before a stage of iteration 2 was partly done"
    markers_at_kill = {m.name for m in (killed_in.path / "_done").glob("*.json")}
    first_model = read_registry(run_dir).models["isheep-iter-01"]
    result = run_raysynth("run", str(config), timeout=2400)
    return {"run_dir": run_dir, "config": config, "killed_in": killed_in, "markers_at_kill": markers_at_kill,
            "first_model": first_model, "output": result.stdout}


def test_resumed_without_loss_or_duplicates(isheep_run):
    killed = isheep_run["killed_in"]
    assert killed.committed
    assert isheep_run["markers_at_kill"] <= {m.name for m in (killed.path / "_done").glob("*.json")}
    run_dir = isheep_run["run_dir"]
    for stage in RunDir(run_dir).stages():
        ids = stage.read(["id"])["id"]
        assert ids.is_unique, stage.name
        assert len(ids) == stage.manifest()["rows_out"], stage.name
        assert stage.done_count() == len(stage.done_inputs()), stage.name  # no input committed twice
    # Iteration 1 was finished before the kill: its model is not trained again.
    again, first = read_registry(run_dir).models["isheep-iter-01"], isheep_run["first_model"]
    assert (again.path, again.registered_at) == (first.path, first.registered_at)
    assert "[skip]" in isheep_run["output"]



def test_the_stage_killed_in_equals_an_uninterrupted_run(tmp_path, isheep_run):
    """The kill fell in a stage sampled at temperature > 0 (partly_committed picks one); recomputed
    uninterrupted with the same seed, it holds exactly the rows the resumed run committed."""
    run = isheep_run
    assert_resume_matches_uninterrupted(run["run_dir"], run["config"], run["killed_in"], tmp_path)

def test_each_iteration_generates_filters_assesses_trains_and_evaluates(isheep_run):
    run_dir = isheep_run["run_dir"]
    steps = [json.loads((run_dir / f"iter-{t:02d}" / "iteration.json").read_text()) for t in (1, 2)]
    for t, step in enumerate(steps, 1):
        funnel = step["funnel"]
        assert funnel["requests"] == 8
        counts = list(funnel.values())
        assert counts == sorted(counts, reverse=True), funnel  # every step keeps at most what it got
        assert funnel["trained on"] > 0 and funnel["kept by data filter"] <= 3 * 2
        assert sum(step["histograms"]["quality"].values()) == funnel["assessed"]
        assert set(step["histograms"]) == {"quality", "following"}
        assert step["model"].endswith("/model")
    # Iteration 2 was written by iteration 1's model; Total_base trained the base model on both.
    assert steps[1]["generated_by"] == steps[0]["model"]
    accumulated = pd.read_parquet(run_dir / "iter-02" / "sft-accumulated" / "sft.parquet")
    assert len(accumulated) == steps[0]["funnel"]["trained on"] + steps[1]["funnel"]["trained on"]
    # No win rate (eval.winrate: false) is a missing metric: neither candidate is promoted, and the
    # paper's chain (promotion.next_policy: paper) still synthesizes with the last trained model.
    registry = check_verdicts(run_dir, "isheep", 2)
    assert registry.current == "isheep-iter-00"
    assert all("no judged win rate" in registry.models[f"isheep-iter-0{t}"].reason for t in (1, 2))
    kept = pd.read_json(run_dir / "iter-01" / "sft" / "sft.jsonl", lines=True)
    assert all(m[0]["role"] == "user" and m[1]["content"] for m in kept["messages"])
    for t in (0, 1, 2):
        strict = json.loads((run_dir / "eval" / f"iter-{t:02d}.json").read_text())["ifeval"]["prompt_strict"]
        assert strict["low"] <= strict["value"] <= strict["high"] and strict["n"] == 4


def test_report_shows_the_funnel_histograms_and_ifeval(isheep_run):
    run_dir = isheep_run["run_dir"]
    run_raysynth("report", str(run_dir))
    page = (run_dir / "report.html").read_text()
    summary = (run_dir / "summary.md").read_text()
    assert "Data per iteration" in page and "kept by instruction filter" in page and "kept by score threshold" in page
    for stage in ("iter-01/instructions", "iter-02/assess", "iter-02/score-filter", "iter-02/data-filter"):
        assert f">{stage}<" in page, stage
    assert "ifeval prompt strict" in page and page.count("<img") >= 4  # metrics, histograms, stages, loss
    assert "iteration 2 data: requests 8" in summary and "quality scores: 1:" in summary and "## Iteration 2" in summary


def test_filters_that_drop_every_row_stop_the_run(tmp_path):
    """An instruction filter nothing passes: the run exits 3 after that stage, naming it, the counts
    and the command that goes on; the report shows the empty stage."""
    config = tmp_path / "drop-all.yaml"
    config.write_text(TINY_ISHEEP.format(run_dir=tmp_path / "run"))
    result = subprocess.run(raysynth_cmd("run", str(config), "--set", "isheep.iterations=1", "--set",
                                         "isheep.instructions_per_iteration=4", "--set",
                                         "isheep.instruction_filter.min_chars=100000"),
                            capture_output=True, text=True, timeout=900, env={**os.environ, "RAYSYNTH_NO_PROGRESS": "1"})
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-3000:]
    assert "instruction-filter" in result.stderr and "kept 0 of" in result.stderr and "too_short" in result.stderr
    assert "--set on_empty=continue" in result.stderr and "Traceback" not in result.stderr
    assert "EMPTY" in result.stdout  # the status table printed before the message
    report = run_raysynth("report", str(tmp_path / "run"))
    assert "nothing kept" in report.stdout
