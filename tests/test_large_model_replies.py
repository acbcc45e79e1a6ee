"""Replies shaped like a 7B model's (questions that carry material over several lines, Chinese
questions, answers with brackets and code blocks, critiques with numbered points, self-assessments
and judge verdicts that explain over several lines, REFED lists of ten and long improvement records): every one parses, and with `small_model_guards: false` every one also passes the step's
structured-output pattern, so the constraint never distorts such data. With the guards on, the
same replies are refused by the patterns: the guards are for the 135M model."""

import json
import re

import pytest

from raysynth.recipes.condor.config import CondorConfig
from raysynth.recipes.condor.steps import condor_steps, parse_critique, parse_questions, parse_refine
from raysynth.recipes.isheep.config import ISheepConfig
from raysynth.recipes.isheep.steps import isheep_steps, parse_assessment, parse_generated
from raysynth.recipes.refed.config import RefedConfig
from raysynth.recipes.refed.steps import (parse_generated_instructions, parse_improve, parse_response_feedback,
                                          refed_steps)
from raysynth.steps import Rejection

QUESTIONS = """[Easy][Question Start]阅读下面的材料并回答问题：
"光合作用把光能转化为化学能。"
这句话中的"化学能"储存在哪里？[Question End]

[Medium][Question Start]Read the following passage:

> The committee [of five members] met twice in 2019.

Summarise it in one sentence, then say what "[of five members]" adds.[Question End]

[Hard][Question Start]Given the table below, explain the trend and predict 2024:
| year | sales |
|------|-------|
| 2022 | 10    |
| 2023 | 14    |[Question End]"""

CRITIQUE = """[Critique Start]
[Strength Start]Strengths:
1. Correct definition [see the first paragraph].
2. A worked example.[Strength End]
[Weakness Start]Weaknesses:
1. The code sample has an off-by-one error in `xs[len(xs)]`.[Weakness End]
[Suggestion Start]Suggestions:
1. Use `xs[-1]`.
2. Add a test.[Suggestion End]
[Critique End]"""

REFINED = """[Improved Answer Start]Here is the corrected function:

```python
def last(xs: list[int]) -> int:
    return xs[-1]  # not xs[len(xs)]
```

It returns the last element of `[1, 2, 3]`, which is 3.[Improved Answer End]"""

ISHEEP_TASK = """Instruction: Convert the table below to JSON, keeping the column names.
Use [] for empty cells.
Input: | name | age |
|------|-----|
| Ana  | 31  |
| Bo   |     |"""

ISHEEP_ASSESSMENT = """Explanation: The response converts the table [two rows] correctly, but:
1. the empty age becomes "" instead of [];
2. the keys keep their spaces.
Quality: 7
Following: 6"""

EIGHT_POINTS = [f"Point {k}: the answer's step {k} [as written] could name the tool, e.g. `pip install x`." * 4
              for k in range(1, 9)]
IMPROVEMENT = json.dumps({
    "analysis": {"original_strengths": EIGHT_POINTS, "improvement_opportunities": EIGHT_POINTS,
                 "relevant_feedback": EIGHT_POINTS},
    "implementation_strategy": {"planned_changes": EIGHT_POINTS, "rationale": "Because " * 200},
    "improved_response": "Step 1 [setup]:\n```sh\npip install x\n```\nStep 2: run it."}, ensure_ascii=False)


def passes(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text) is not None


def test_condor_replies_parse_and_pass_the_unguarded_patterns():
    free, guarded = (condor_steps(CondorConfig(small_model_guards=g)) for g in (False, True))
    questions = parse_questions(QUESTIONS, {}, ["Easy", "Medium", "Hard"])
    assert questions[0]["question"].startswith("阅读") and "| 2023 | 14    |" in questions[2]["question"]
    assert "Weaknesses:\n1. The code sample" in parse_critique(CRITIQUE, {})[0]["weakness"]
    assert parse_refine(REFINED, {"answer": "old"})[0]["answer"].endswith("which is 3.")
    for name, reply in (("question", QUESTIONS), ("critique", CRITIQUE), ("refine", REFINED)):
        assert passes(free[name].regex, reply), name
        assert not passes(guarded[name].regex, reply), name


def test_isheep_task_with_a_multi_line_input_parses_and_passes():
    [task] = parse_generated(ISHEEP_TASK, {}, 500, 500)
    assert task["instruction"].endswith("Use [] for empty cells.") and task["input"].count("\n") == 3
    assert passes(isheep_steps(ISheepConfig(small_model_guards=False))["generate"].regex, ISHEEP_TASK)
    assert not passes(isheep_steps(ISheepConfig())["generate"].regex, ISHEEP_TASK)


def test_refed_lists_of_ten_parse_whole_without_the_list_cap():
    reference = {"ref_prompt": "Give three tips for staying healthy."}
    ten = [f"Describe step {k} of brewing tea [with the water temperature] for a beginner." for k in range(1, 11)]
    assert len(parse_generated_instructions(json.dumps({"instructions": ten}), reference, 1500)) == 10
    feedback = json.dumps({"strengths": [f"point {k}" for k in range(10)], "improvements": ["a", "b"]})
    assert len(parse_response_feedback(feedback, {}, None)[0]["strengths"]) == 10
    schema = refed_steps(RefedConfig(max_list_items=None))["reference_feedback"].json_schema
    assert "maxItems" not in schema["properties"]["strengths"]
    assert refed_steps(RefedConfig())["reference_feedback"].json_schema["properties"]["strengths"]["maxItems"] == 5


def test_isheep_assessment_over_several_lines_parses_and_passes():
    assessment = parse_assessment(ISHEEP_ASSESSMENT, {}, "both")[0]
    assert (assessment["quality_score"], assessment["following_score"]) == (7.0, 6.0)
    assert passes(isheep_steps(ISheepConfig(small_model_guards=False))["assess"].regex, ISHEEP_ASSESSMENT)
    assert not passes(isheep_steps(ISheepConfig())["assess"].regex, ISHEEP_ASSESSMENT)


def conforms(schema: dict, text: str) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema)
        return True
    except jsonschema.ValidationError:
        return False


def test_refed_lists_of_ten_and_long_improvement_records_pass_the_schemas_without_the_caps():
    free, guarded = refed_steps(RefedConfig(max_list_items=None, max_instruction_chars=None)), refed_steps(RefedConfig())
    ten = json.dumps({"instructions": [f"Write step {k} of a tea guide [water at 80°C], with a table:\n| a | b |"
                                       for k in range(1, 11)]}, ensure_ascii=False)
    assert conforms(free["generate"].json_schema, ten) and conforms(guarded["generate"].json_schema, ten)
    record = parse_improve(IMPROVEMENT, {})[0]
    assert record["improved"].startswith("Step 1 [setup]") and len(json.loads(record["analysis"])["relevant_feedback"]) == 8
    assert conforms(free["improve"].json_schema, IMPROVEMENT)
    assert not conforms(guarded["improve"].json_schema, IMPROVEMENT)
    long_instruction = json.dumps({"instructions": ["Summarise this report: " + "word " * 400]})
    assert len(parse_generated_instructions(long_instruction, {"ref_prompt": "x"}, None)) == 1
    with pytest.raises(Rejection):  # the guard's cap drops it, and with it the reply's only instruction
        parse_generated_instructions(long_instruction, {"ref_prompt": "x"}, 1500)


JUDGE_VERDICT = """Explanation: Both answers name a fruit, but:
1. A adds a [citation] that is made up;
2. B gives a short, correct list: `apple`, `pear`.
Winner: B"""


def test_judge_verdicts_over_several_lines_parse_and_pass_the_unguarded_pattern():
    from raysynth.config import JudgeConfig
    from raysynth.steps.judge import judge_steps, parse_winner

    assert parse_winner(JUDGE_VERDICT) == "B"
    free, guarded = judge_steps(JudgeConfig(small_model_guards=False)), judge_steps(JudgeConfig())
    assert passes(free["pairwise"].regex, JUDGE_VERDICT) and not passes(guarded["pairwise"].regex, JUDGE_VERDICT)
    score = JUDGE_VERDICT.replace("Winner: B", "Score: 7")
    assert passes(free["pointwise"].regex, score) and not passes(guarded["pointwise"].regex, score)
