"""Reference-level feedback's pure pieces on fixed strings: JSON replies parsed, repaired or dropped,
feedback parsing, the synthesis prompts, one-shot answers, improvement parsing, the requests per
reference and feature, the repair and failure rates, config errors."""

import json
from pathlib import Path

import pytest

from conftest import REPO
from raysynth.config import ConfigError
from raysynth.pipeline import Lineage, parse_and_commit, write_source_stage
from raysynth.recipes import load_config
from raysynth.recipes.refed.config import RefedConfig
from raysynth.recipes.refed.recipe import json_rates, reference_rows, synthesis_requests
from raysynth.recipes.refed.steps import (FEATURES, parse_generated_instructions, parse_improve,
                                          parse_instruction_feedback, parse_response_feedback, refed_steps)
from raysynth.steps import Rejection
from raysynth.steps.json_reply import parse_json_reply
from raysynth.store import RunDir

REFERENCE = {"reference": 0, "ref_prompt": "Give three tips for staying healthy.", "ref_output": "1. Eat well. 2. Sleep. 3. Move."}


def test_json_replies_parse_repair_or_reject():
    assert parse_json_reply('{"a": ["x"]}', ("a",)) == ({"a": ["x"]}, False)
    assert parse_json_reply('Sure: {"a": ["x", "y"', ("a",)) == ({"a": ["x", "y"]}, True)  # truncated
    assert parse_json_reply("{a: ['x']}", ("a",)) == ({"a": ["x"]}, True)
    for reply in ("I cannot answer that.", '{"a": []}', '{"b": ["x"]}', '["x"]'):
        with pytest.raises(Rejection) as caught:
            parse_json_reply(reply, ("a",))
        assert caught.value.reason == "unusable_json"


def test_feedback_parsing_cleans_and_limits_lists():
    [row] = parse_instruction_feedback('{"subject_areas": ["health", " ", "nutrition"], "skills": "advice"}', {}, 5)
    assert row == {"subject_areas": ["health", "nutrition"], "skills": ["advice"], "json_repaired": False}
    [row] = parse_response_feedback('{"strengths": ["a", "b", "c"], "improvements": ["d"]', {}, 2)
    assert row["strengths"] == ["a", "b"] and row["improvements"] == ["d"] and row["json_repaired"]
    with pytest.raises(Rejection):
        parse_instruction_feedback('{"subject_areas": [" "], "skills": ["x"]}', {}, 5)


def test_response_feedback_judges_on_the_paper_s_criteria():
    """The paper's response feedback rates a reference on content (accuracy, depth), communication
    (clarity, structure, tone) and fit to the instruction, then names strengths and improvements:
    both the reference's and, in the sample-level ablation, each answer's."""
    for name, row in (("reference_feedback", REFERENCE),
                      ("sample_feedback", {"instruction": "Name a fruit.", "response": "Apple."})):
        step = refed_steps(RefedConfig())[name]
        [message] = step.build(row, step.template)
        prompt = message["content"]
        assert (row.get("ref_prompt") or row["instruction"]) in prompt
        for criterion in ("Content:", "accurate", "depth", "Communication:", "clear", "structured", "tone",
                          "Fit to the instruction:", "scope", "strengths", "improvements"):
            assert criterion in prompt, (name, criterion)


def test_generation_asks_for_all_instructions_of_one_feature_at_once():
    step = refed_steps(RefedConfig(instructions_per_feature=10))["generate"]
    assert step.sampling.n == 1 and step.json_schema["properties"]["instructions"]["maxItems"] == 10
    row = {**REFERENCE, "subject_areas": ["health", "nutrition"], "skills": ["giving advice"]}
    for feature in ("subject_areas", "skills"):
        prompt = step.build({**row, "feature": feature}, step.template)[0]["content"]
        assert REFERENCE["ref_prompt"] in prompt and FEATURES[feature]["description"] in prompt
        assert "Write 10 new instructions" in prompt and "similar complexity and length" in prompt
        assert ("- health" in prompt) == (feature == "subject_areas") and ("- giving advice" in prompt) == (feature == "skills")
    # Ten instructions as a 7B model lists them: with a repeat (case and spacing aside), a copy of the
    # reference, an over-long one and an empty one, which are left out.
    items = [f"Suggest {k} ways to drink more water during a busy workday." for k in range(2, 9)]
    reply = json.dumps({"instructions": [*items, "  suggest 2 ways to  drink more water during a busy workday.",
                                         REFERENCE["ref_prompt"], "x" * 101, " "]})
    rows = parse_generated_instructions(reply, REFERENCE, 100)
    assert [r["instruction"] for r in rows] == items and not any(r["json_repaired"] for r in rows)
    cut = json.dumps({"instructions": items})[:-20]  # max_tokens reached in the last one: it is dropped
    assert [r["instruction"] for r in parse_generated_instructions(cut, REFERENCE, 100)] == items[:-1]
    for reply in ("", '{"instructions": []}', json.dumps({"instructions": [REFERENCE["ref_prompt"]]})):
        with pytest.raises(Rejection) as caught:
            parse_generated_instructions(reply, REFERENCE, 100)
        assert caught.value.reason == "unusable_json"


def test_answer_is_one_shot_with_the_reference_pair():
    step = refed_steps(RefedConfig())["answer"]
    messages = step.build({**REFERENCE, "instruction": "Name a fruit."}, step.template)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == REFERENCE["ref_output"] and messages[2]["content"] == "Name a fruit."


def test_improvement_uses_the_feedback_and_parses_its_three_parts():
    cfg = RefedConfig()
    step = refed_steps(cfg)["improve"]
    row = {"instruction": "Name a fruit.", "response": "Apple", "strengths": ["concise"], "improvements": ["say why"]}
    prompt = step.build(row, step.template)[0]["content"]
    assert "- concise" in prompt and "- say why" in prompt and "Not every point applies" in prompt
    assert step.json_schema["required"] == ["analysis", "implementation_strategy", "improved_response"]
    assert step.json_schema["properties"]["analysis"]["required"] == [
        "original_strengths", "improvement_opportunities", "relevant_feedback"]
    record = {"analysis": {"original_strengths": ["names a fruit"], "improvement_opportunities": ["no reason"],
                           "relevant_feedback": ["say why"]},
              "implementation_strategy": {"planned_changes": ["add a reason"], "rationale": "a reason helps"},
              "improved_response": "An apple: sweet and crisp."}
    [out] = parse_improve(json.dumps(record), row)
    assert out["improved"] == "An apple: sweet and crisp." and not out["json_repaired"]
    assert json.loads(out["analysis"]) == record["analysis"]
    assert json.loads(out["strategy"]) == record["implementation_strategy"]
    assert parse_improve('{"analysis": {"original_strengths": ["a"]}, "improved_response": "Apple, because', row)[0][
        "json_repaired"]
    sample = refed_steps(RefedConfig(feedback="sample"))["improve"]
    assert sample.template_name == "improve_sample" and "Not every point" not in sample.template


def test_requests_per_reference_and_feature_and_the_json_rates(tmp_path: Path):
    run, lineage = RunDir(tmp_path / "run"), Lineage("refed", 0, "fixed")
    refs = write_source_stage(run, 0, "references", [REFERENCE, {"reference": 1, "ref_prompt": "Add 2 and 2.", "ref_output": "4"},
                                                      {"reference": 2, "ref_prompt": "Say hi.", "ref_output": "Hi!"}], {"t": 1}, lineage)
    step = refed_steps(RefedConfig())["instruction_feedback"]
    feedback = run.stage(0, "instruction-feedback", {"fixed": 1})
    feedback.prepare({})
    replies = ['{"subject_areas": ["health"], "skills": ["advice"]}',  # clean
               '{"subject_areas": ["math"], "skills": ["arithmetic"]',  # truncated: repaired
               "I am not"]  # unusable, and cut off by max_tokens
    batch = refs.read().assign(completions=[[r] for r in replies], finish_reasons=[["stop"], ["stop"], ["length"]], tokens_in=1,
                               tokens_out=1, engine_error="")
    parse_and_commit(batch, step, str(feedback.path), lineage, step.template_hash)
    feedback.commit({})
    assert json_rates(feedback, "instruction feedback") == {"instruction feedback JSON repaired": 1 / 3,
                                                            "instruction feedback JSON unusable": 1 / 3}
    requests = synthesis_requests(feedback, ["subject_areas", "skills"])
    assert len(requests) == 4 and {r["feature"] for r in requests} == {"subject_areas", "skills"}
    assert all(isinstance(r["skills"], list) and "strengths" not in r for r in requests)
    json.dumps(requests)  # plain values: the request stage hashes them


def test_references_default_to_the_shipped_alpaca_slice(tmp_path: Path):
    rows = reference_rows(None, 5)
    assert len(rows) == 5 and all(r["ref_prompt"] and r["ref_output"] for r in rows)
    path = tmp_path / "refs.jsonl"
    path.write_text(json.dumps({"prompt": "Hi?", "response": "Hello."}) + "\n")
    assert reference_rows(path, None) == [{"reference": 0, "ref_prompt": "Hi?", "ref_output": "Hello."}]


@pytest.mark.parametrize("body, message", [
    ("refed:\n  feedback: sample_level\n", r"field 'refed.feedback'"),
    ("refed:\n  features: [topics]\n", r"field 'refed.features.0'"),
    ("refed:\n  references: nowhere.jsonl\n", r"field 'refed.references': file not found"),
    ("refed:\n  instructions_per_feature: 0\n", r"field 'refed.instructions_per_feature'"),
    ("train: {method: simpo}\n", r"field 'train': .*expected method sft"),
])
def test_config_errors_name_the_file_and_field(tmp_path: Path, body: str, message: str):
    path = tmp_path / "refed.yaml"
    path.write_text("recipe: refed\n" + body)
    with pytest.raises(ConfigError, match=r"refed.yaml: .*" + message):
        load_config(path)


def test_shipped_refed_configs_validate():
    small = load_config(REPO / "configs" / "refed-small.yaml")
    assert small.refed.judge_filter and small.refed.diversity_filter.rouge_l_max == 0.7
    job = load_config(REPO / "jobs" / "refed.yaml", ["refed.references=null"])
    assert job.refed.instructions_per_feature == 10 and job.refed.reference_limit * 20 == 10000
    assert job.train.method == "sft" and job.engine.num_gpus == 1
