"""Reference-level feedback end to end on the real engine: feedback on three references, two new
instructions per reference and feature, diversity selection, one-shot answers, improvement with the
reference's feedback, the judge filter, SFT and IFEval; the driver is killed in the synthesis and the
run resumed without recomputing feedback; then the report. The sample-level ablation's own step runs
on the engine too."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from conftest import (assert_resume_matches_uninterrupted, check_verdicts, kill_driver_when, partly_committed,
                      run_raysynth)
from raysynth.registry import read_registry
from raysynth.store import RunDir
from tiny_models import build_tiny_pairrm

pytestmark = pytest.mark.slow

TINY_REFED = """\
recipe: refed
run_dir: {run_dir}
seed: 0
engine:
  model: smollm2-135m
  batch_size: 2
refed:
  reference_limit: 3
  instructions_per_feature: 2
  diversity_filter: {{rouge_l_max: 0.7}}
  judge_filter: true
  # A tiny PairRM built by the test, at PairRM's paper threshold (0.20): the 135M model as an LLM judge
  # calls nearly every pair a tie, so its own default (agreed wins in both orders) would keep nothing.
  judge: {{kind: pairrm, model: {pairrm}, max_length: 128}}
  steps:
    instruction_feedback: {{max_tokens: 96}}
    response_feedback: {{max_tokens: 128}}
    generate: {{max_tokens: 160}}
    answer: {{max_tokens: 48}}
    improve: {{max_tokens: 256}}
train: {{max_steps: 2, save_steps: 2, per_device_batch_size: 1}}
eval:
  limit: 4
  winrate: false
  generation: {{max_tokens: 48}}
promotion: {{gate: false}}
"""


def feedback_stages(run_dir: Path) -> dict[str, dict]:
    return {s.name: {"manifest": s.manifest(), "markers": sorted(m.name for m in (s.path / "_done").glob("*.json"))}
            for s in RunDir(run_dir).stages() if s.name.split("-feedback")[0] in ("instruction", "response")}


@pytest.fixture(scope="module")
def refed_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("refed")
    run_dir = directory / "run"
    config = directory / "tiny-refed.yaml"
    config.write_text(TINY_REFED.format(run_dir=run_dir, pairrm=build_tiny_pairrm(directory / "pairrm", head_scale=100)))
    killed_in = kill_driver_when(config, lambda: partly_committed(run_dir, 1), 1500)
    assert killed_in is not None, "the run ended before a synthesis stage was partly done"
    feedback_at_kill = feedback_stages(run_dir)
    markers_at_kill = {m.name for m in (killed_in.path / "_done").glob("*.json")}
    result = run_raysynth("run", str(config), timeout=2400)
    return {"run_dir": run_dir, "config": config, "killed_in": killed_in, "markers_at_kill": markers_at_kill,
            "feedback_at_kill": feedback_at_kill, "console": result.stdout + result.stderr}


def test_resumed_without_loss_and_feedback_was_not_recomputed(refed_run):
    run_dir, killed = refed_run["run_dir"], refed_run["killed_in"]
    assert killed.committed
    assert refed_run["markers_at_kill"] <= {m.name for m in (killed.path / "_done").glob("*.json")}
    assert len(refed_run["feedback_at_kill"]) == 2
    assert feedback_stages(run_dir) == refed_run["feedback_at_kill"]  # same commit, same batches
    for stage in RunDir(run_dir).stages():
        ids = stage.read(["id"])["id"]
        assert ids.is_unique, stage.name
        assert len(ids) == stage.manifest()["rows_out"], stage.name
        assert stage.done_count() == len(stage.done_inputs()), stage.name



def test_the_stage_killed_in_equals_an_uninterrupted_run(tmp_path, refed_run):
    """The kill fell in a stage sampled at temperature > 0 (partly_committed picks one); recomputed
    uninterrupted with the same seed, it holds exactly the rows the resumed run committed."""
    run = refed_run
    assert_resume_matches_uninterrupted(run["run_dir"], run["config"], run["killed_in"], tmp_path)

def test_synthesis_improves_judges_trains_and_evaluates(refed_run):
    run_dir = refed_run["run_dir"]
    step = json.loads((run_dir / "iter-01" / "iteration.json").read_text())
    funnel, rates = step["funnel"], step["rates"]
    assert funnel["references"] == 3 and funnel["new instructions"] <= 3 * 2 * 2
    assert funnel["kept by judge"] == funnel["trained on"] > 0
    assert rates["judge keep rate"] == funnel["kept by judge"] / funnel["improved"]
    # The JSON rates, counted again here from each stage's own rows.
    stages = {s.name.rsplit("-", 1)[0]: s for s in RunDir(run_dir).stages()}
    for label, name in (("instruction feedback", "instruction-feedback"), ("response feedback", "response-feedback"),
                        ("improvement", "improve")):
        stage = stages[name]
        rows_in = stage.manifest()["rows_in"]
        repaired = int(stage.read(["json_repaired"])["json_repaired"].sum())
        rejected = pd.concat([pd.read_parquet(f, columns=["reason"]) for f in stage.rejected_files()] or
                             [pd.DataFrame({"reason": []})])
        unusable = int(rejected["reason"].astype(str).str.startswith("unusable_json").sum())
        assert rates[f"{label} JSON repaired"] == repaired / rows_in, label
        assert rates[f"{label} JSON unusable"] == unusable / rows_in, label
        assert stage.manifest()["rows_out"] > 0, label  # structured JSON outputs: some reply must parse
    sft = pd.read_json(run_dir / "iter-01" / "sft" / "sft.jsonl", lines=True)
    improved = [s for s in RunDir(run_dir).stages() if s.name.startswith("improve")][0].read(["improved"])
    assert set(sft["messages"].map(lambda m: m[1]["content"])) <= set(improved["improved"])
    # promotion.gate: false, as in the paper: the trained model is promoted, evaluated all the same.
    registry = check_verdicts(run_dir, "refed", 1)
    assert registry.current == "refed-iter-01" and "without a gate" in registry.models["refed-iter-01"].reason
    for t in (0, 1):
        strict = json.loads((run_dir / "eval" / f"iter-{t:02d}.json").read_text())["ifeval"]["prompt_strict"]
        assert strict["low"] <= strict["value"] <= strict["high"] and strict["n"] == 4


def test_the_console_leaves_ray_and_vllm_log_lines_to_the_run_s_log_files(refed_run):
    """Ray's own lines ("<time>\tINFO worker.py:2029 -- Started a local Ray instance") go to
    logs/driver.log, vLLM's ("INFO 12-02 16:40:42 [model.py:733] Resolved architecture: ...") to
    logs/engines.log; the console keeps raysynth's lines."""
    ray_line = re.compile(r"\t(DEBUG|INFO|WARNING) \S+\.py:\d+ -- ")
    vllm_line = re.compile(r"(DEBUG|INFO|WARNING) \d\d-\d\d \d\d:\d\d:\d\d \[\S+\.py:\d+\]")
    for line in (ray_line, vllm_line):
        assert not line.search(refed_run["console"]), refed_run["console"][-3000:]
    log_file = refed_run["run_dir"] / "logs" / "driver.log"
    assert "Started a local Ray instance" in log_file.read_text()
    assert str(log_file) in refed_run["console"]  # its path, printed once
    engines = (refed_run["run_dir"] / "logs" / "engines.log").read_text()
    assert "Resolved architecture" in engines and re.search(r" INFO pid=\d+ \[\S+\.py:\d+\] ", engines)


def test_report_shows_references_rates_and_ifeval(refed_run):
    run_dir = refed_run["run_dir"]
    run_raysynth("report", str(run_dir))
    page = (run_dir / "report.html").read_text()
    for text in ("references", "new instructions", "instruction feedback JSON repaired", "improvement JSON unusable",
                 "judge keep rate", "ifeval prompt strict", ">iter-00/instruction-feedback<", ">iter-01/improve<"):
        assert text in page, text
    assert "judge keep rate" in (run_dir / "summary.md").read_text()


def test_the_seed_only_baseline_trains_the_student_on_the_references_alone(tmp_path):
    """The paper's seed-only baseline: SFT on the curated references, no feedback or synthesis; with
    `student_model` set (the paper's student: a second, tiny model here), SFT starts from the student
    and the registered model has the student's shape."""
    from transformers import AutoConfig

    from raysynth.models import resolve_model
    from tiny_models import build_tiny_causal_lm

    config = tmp_path / "seed-only.yaml"
    config.write_text(TINY_REFED.format(run_dir=tmp_path / "run", pairrm="unused"))
    student = build_tiny_causal_lm(tmp_path / "student", resolve_model("smollm2-135m"))
    run_raysynth("run", str(config), "--set", "refed.training_data=references", "--set", "eval=null",
                 "--set", f"student_model={student}", "--set", "train.max_length=128")
    run_dir = tmp_path / "run"
    assert [s.name.rsplit("-", 1)[0] for s in RunDir(run_dir).stages()] == ["references"]
    sft = pd.read_json(run_dir / "iter-01" / "sft" / "sft.jsonl", lines=True)
    references = RunDir(run_dir).stages()[0].read(["ref_prompt", "ref_output"])
    assert sorted(sft["messages"].map(lambda m: (m[0]["content"], m[1]["content"]))) == sorted(
        zip(references["ref_prompt"], references["ref_output"]))
    registry = read_registry(run_dir)
    assert registry.current == "refed-iter-01"
    trained = AutoConfig.from_pretrained(registry.current_entry().path)
    assert (trained.num_hidden_layers, trained.hidden_size) == (2, 64)  # the student's, not SmolLM2's
    assert json.loads((Path(registry.current_entry().path).parent / "_train.json").read_text())["model"] == str(student)


def test_sample_level_feedback_runs_on_each_answer(local_ray, tmp_path):
    """The ablation's own step: response feedback written on a generated (instruction, response)."""
    from raysynth.config import EngineConfig
    from raysynth.models import engine_for
    from raysynth.pipeline import Lineage, run_llm_stage, write_source_stage
    from raysynth.recipes.refed.config import RefedConfig
    from raysynth.recipes.refed.steps import refed_steps

    run, lineage = RunDir(tmp_path / "run"), Lineage("refed", 1, "smollm2-135m")
    answers = write_source_stage(run, 1, "answer", [{"instruction": "Name a fruit.", "response": "Apple."},
                                                    {"instruction": "Say hi.", "response": "Hi!"}], {"t": 1}, lineage)
    step = refed_steps(RefedConfig(steps={"response_feedback": {"max_tokens": 96}}))["sample_feedback"]
    stage = run_llm_stage(run, 1, step, answers, *engine_for(EngineConfig(batch_size=2), "smollm2-135m"), lineage)
    manifest = stage.manifest()
    assert manifest["rows_in"] == 2 and manifest["rows_out"] + sum(manifest["rejected"].values()) == 2
    # The reply is held to the feedback's JSON schema and a cut one is repaired: at least one parses.
    assert manifest["rows_out"] >= 1, manifest
    for row in stage.read().to_dict("records"):
        assert len(row["strengths"]) >= 1 and len(row["improvements"]) >= 1 and row["instruction"]
