"""I-SHEEP's pure pieces on fixed strings: instruction generation and parsing, Self-Instruct's
filters, the self-assessment prompts and parsing, what the threshold and assessment level keep (on
fixed model outputs, through the real commit path), the prompt-free data filters, config errors."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from raysynth.config import ConfigError
from raysynth.pipeline import Lineage, parse_and_commit, run_decision_stage
from raysynth.recipes import load_config
from raysynth.recipes.isheep.config import SELF_INSTRUCT_FILTER, AssessmentConfig, ISheepConfig
from raysynth.recipes.isheep.recipe import accumulate_sft
from raysynth.recipes.isheep.steps import (assess_regex, generation_requests, guidance, isheep_steps, parse_assessment,
                                           parse_generated, threshold_reason)
from raysynth.score.filter_stage import filter_reasons
from raysynth.shipped import seed_tasks
from raysynth.steps import Rejection
from raysynth.store import RunDir


@pytest.mark.parametrize("reply, instruction, task_input", [
    ("Instruction: Name three rivers in Europe.\nInput: <noinput>", "Name three rivers in Europe.", ""),
    ("Sure!\nInstruction: Translate the sentence.\nInput: Bonjour tout le monde\n\nInstruction: another",
     "Translate the sentence.", "Bonjour tout le monde"),
    ("4. Instruction: Sort the numbers.\n4. Input: 3, 1, 2\n4. Output: 1, 2, 3", "Sort the numbers.", "3, 1, 2"),
    ("Instruction: Give a synonym of happy.", "Give a synonym of happy.", ""),
    ("Instruction: Write a haiku.\nInput: <its input, or <noinput>>", "Write a haiku.", ""),
])
def test_generated_task_parses_to_instruction_input_and_prompt(reply, instruction, task_input):
    [row] = parse_generated(reply, {}, 500, 500)
    assert (row["instruction"], row["input"]) == (instruction, task_input)
    assert row["prompt"] == instruction + (f"\n\n{task_input}" if task_input else "")


@pytest.mark.parametrize("reply, reason", [
    ("Here is a new task for you.", "unparseable"),
    ("Instruction: \nInput: x", "empty"),
    ("Instruction: <the new instruction>\nInput: <noinput>", "placeholder"),
    ("Instruction: " + "word " * 200, "too_long"),
])
def test_unusable_generated_tasks_are_rejections(reply, reason):
    with pytest.raises(Rejection) as caught:
        parse_generated(reply, {}, 500, 500)
    assert caught.value.reason == reason


def test_generation_requests_sample_seed_examples_per_request_and_iteration():
    tasks = seed_tasks(None)
    first, again = generation_requests(tasks, 5, 3, 0, 1), generation_requests(tasks, 5, 3, 0, 1)
    assert first == again and len(first) == 5
    assert all(len(json.loads(r["examples"])) == 3 for r in first)
    assert len({r["examples"] for r in first}) == 5
    assert first != generation_requests(tasks, 5, 3, 0, 2)  # each iteration draws its own examples
    step = isheep_steps(ISheepConfig())["generate"]
    shown = step.build(first[0], step.template)[0]["content"]
    assert all(t["instruction"] in shown for t in json.loads(first[0]["examples"]))


@pytest.mark.parametrize("text, reason", [
    ("Write a program that adds two numbers together.", "blocked_prefix"),
    ("Draw a picture of a cat on the sofa.", "blocked_word"),
    ("Describe the map of the city centre.", "blocked_word"),
    ('"Quote" this sentence back to me please.', "bad_start"),
    ("Écrivez une phrase sur le printemps.", "bad_start"),
    ("Name three.", "too_few_words"),
    ("Suggest three names for a bakery in a small seaside town.", None),
    ("Explain how mapping works in functional programming.", None),  # 'mapping' is not the word 'map'
])
def test_self_instruct_heuristics(text, reason):
    assert filter_reasons([text], SELF_INSTRUCT_FILTER) == [reason]


def test_rouge_l_novelty_against_the_seed_tasks():
    seeds = ["Give three tips for staying healthy."]
    texts = ["Give three tips for staying healthy!", "Suggest a name for a new bakery in Paris."]
    assert filter_reasons(texts, SELF_INSTRUCT_FILTER, seeds) == ["rouge_l_too_similar", None]


@pytest.mark.parametrize("style", ["simple", "combined", "icl"])
@pytest.mark.parametrize("level", ["both", "quality", "following"])
def test_assessment_prompt_asks_for_the_assessed_aspects_only(style, level):
    cfg = ISheepConfig(assessment=AssessmentConfig(level=level, prompt=style))
    step = isheep_steps(cfg)["assess"]
    prompt = step.build({"prompt": "Name a fruit.", "response": "Apple."}, step.template)[0]["content"]
    assert "Name a fruit." in prompt and "Apple." in prompt
    assert ("Quality: <1-10>" in prompt) == (level in ("both", "quality"))
    assert ("Following: <1-10>" in prompt) == (level in ("both", "following"))
    if style == "icl":
        assert "Explain the following joke." in guidance(cfg.assessment)  # the paper's appendix B cases
    assert step.identity()["params"]["guidance_hash"]


def test_assessment_parsing_and_its_structured_format():
    assert parse_assessment("Explanation: ok.\nQuality: 9\nFollowing: 7", {}, "both")[0]["following_score"] == 7
    assert parse_assessment("Quality score: **8**", {}, "quality")[0]["quality_score"] == 8
    assert np.isnan(parse_assessment("Quality: 8", {}, "quality")[0]["following_score"])
    for reply, level, reason in [("Quality: 9", "both", "unparseable"), ("Quality: 12\nFollowing: 3", "both",
                                 "score_out_of_range"), ("I like it.", "following", "unparseable")]:
        with pytest.raises(Rejection) as caught:
            parse_assessment(reply, {}, level)
        assert caught.value.reason == reason
    assert assess_regex("quality", 50) == r"Explanation: [^\n]{10,50}\nQuality: (10|[1-9])"


# Fixed self-assessment replies of the model, one per pair: (quality, following).
FIXED_REPLIES = {"p1": "Explanation: Correct and complete.\nQuality: 9\nFollowing: 9",
                 "p2": "Explanation: Good text, wrong task.\nQuality: 9\nFollowing: 4",
                 "p3": "Explanation: Follows it, but thin.\nQuality: 6\nFollowing: 8",
                 "p4": "Explanation: Weak.\nQuality: 5\nFollowing: 5",
                 "p5": "Explanation: I cannot tell."}


def kept_after_assessment(tmp_path: Path, level: str, threshold: float, combine: str = "min") -> set[str]:
    """The assessment stage's commit path on fixed replies, then the threshold stage: kept pair ids."""
    cfg = ISheepConfig(assessment=AssessmentConfig(level=level, threshold=threshold, combine=combine))
    run, lineage = RunDir(tmp_path / f"{level}-{threshold}-{combine}"), Lineage("isheep", 1, "fixed")
    step = isheep_steps(cfg)["assess"]
    assessed = run.stage(1, "assess", {"fixed": 1})
    assessed.prepare({})
    batch = pd.DataFrame([{"id": pid, "pair": pid, "prompt": "q", "response": "a", "completions": [reply], "finish_reasons": ["stop"],
                           "tokens_in": 1, "tokens_out": 1, "engine_error": ""} for pid, reply in FIXED_REPLIES.items()])
    parse_and_commit(batch, step, str(assessed.path), lineage, step.template_hash)
    assessed.commit({})
    kept = run_decision_stage(run, 1, "score-filter", {"level": level, "threshold": threshold}, assessed,
                              lambda frame: [threshold_reason(row, cfg.assessment) for row in frame.to_dict("records")],
                              "assessment", lineage)
    return set(kept.read(["pair"])["pair"])


def test_threshold_and_assessment_level_change_what_is_kept(tmp_path: Path):
    assert kept_after_assessment(tmp_path, "both", 8) == {"p1"}
    assert kept_after_assessment(tmp_path, "quality", 8) == {"p1", "p2"}
    assert kept_after_assessment(tmp_path, "following", 8) == {"p1", "p3"}
    assert kept_after_assessment(tmp_path, "both", 6) == {"p1", "p3"}
    assert kept_after_assessment(tmp_path, "both", 6, "mean") == {"p1", "p2", "p3"}
    assert kept_after_assessment(tmp_path, "both", 1) == {"p1", "p2", "p3", "p4"}  # p5 never parses


def test_unparseable_assessment_is_counted_and_kept_out(tmp_path: Path):
    kept_after_assessment(tmp_path, "both", 8)
    [assessed] = [s for s in RunDir(tmp_path / "both-8-min").stages() if s.name.startswith("assess")]
    assert assessed.manifest()["rejected"] == {"unparseable": 1} and assessed.manifest()["rows_out"] == 4


def test_total_base_accumulates_every_iteration(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = []
    for t in (1, 2):
        files.append(tmp_path / f"{t}.parquet")
        pq.write_table(pa.Table.from_pylist([{"id": f"{t}", "messages": [{"role": "user", "content": "q"}]}]), files[-1])
    out = accumulate_sft(files, tmp_path / "acc" / "sft.parquet")
    assert pd.read_parquet(out)["id"].tolist() == ["1", "2"]


@pytest.mark.parametrize("body, message", [
    ("train: {method: dpo}\n", r"field 'train': .*expected method sft"),
    ("isheep:\n  assessment: {threshold: 11}\n", r"field 'isheep.assessment.threshold'"),
    ("isheep:\n  assessment: {level: some}\n", r"field 'isheep.assessment.level'"),
    ("isheep:\n  seed_tasks: missing.jsonl\n", r"field 'isheep.seed_tasks': file not found"),
    ("isheep:\n  training_setting: one_best\n", r"field 'isheep.training_setting'"),
])
def test_config_errors_name_the_file_and_field(tmp_path: Path, body: str, message: str):
    path = tmp_path / "isheep.yaml"
    path.write_text("recipe: isheep\n" + body)
    with pytest.raises(ConfigError, match=r"isheep.yaml: .*" + message):
        load_config(path)


def test_shipped_isheep_configs_validate():
    small = load_config(REPO / "configs" / "isheep-small.yaml")
    assert small.isheep.iterations == 3 and small.isheep.assessment.threshold == 8
    job = load_config(REPO / "jobs" / "isheep.yaml")
    assert job.isheep.instructions_per_iteration == 10000 and job.isheep.training_setting == "one_base"
    assert job.isheep.data_filter.max_perplexity == 50 and job.isheep.data_filter.clusters == 3000
    assert job.engine.num_gpus == 1 and job.train.method == "sft"
