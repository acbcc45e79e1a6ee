"""Condor's pure build/parse functions on fixed strings."""

import re

import pytest

from raysynth.recipes.condor.config import CondorConfig
from raysynth.recipes.condor.recipe import example_questions, leaf_tags, load_tag_tree, tag_task_rows
from raysynth.recipes.condor.steps import (condor_steps, critique_regex, parse_answer, parse_critique, parse_questions,
                                           parse_refine, question_regex, refine_regex)
from raysynth.steps import Rejection

LEVELS = ["Easy", "Medium", "Hard"]
GOOD_QUESTIONS = ("[Easy][Question Start]What is a prime number?[Question End]\n\n"
                  "[Medium][Question Start]Why are there infinitely many primes?[Question End]\n\n"
                  "[Hard][Question Start]Sketch a proof of the prime number theorem.[Question End]")


def test_questions_parse_each_difficulty():
    rows = parse_questions(GOOD_QUESTIONS, {}, LEVELS)
    assert [r["difficulty"] for r in rows] == LEVELS
    assert rows[1]["question"] == "Why are there infinitely many primes?"


def test_questions_tolerate_spacing_and_case():
    text = "Sure!\n[ easy ] [Question start] A? [question end]\n[MEDIUM][Question Start]B?[Question End]" \
           "[Hard][Question Start]\nC?\n[Question End] trailing"
    assert [r["question"] for r in parse_questions(text, {}, LEVELS)] == ["A?", "B?", "C?"]


@pytest.mark.parametrize("text", [
    "",
    "Here are three questions: 1. What? 2. Why? 3. How?",
    "[Easy][Question Start]A?[Question End][Medium][Question Start]B?[Question End]",  # no Hard
    "[Easy][Question Start]Question[Question End][Medium][Question Start]B?[Question End]"
    "[Hard][Question Start]C?[Question End]",  # the placeholder copied
])
def test_questions_reject_malformed(text):
    with pytest.raises(Rejection) as err:
        parse_questions(text, {}, LEVELS)
    assert err.value.reason == "unparseable"


def test_question_regex_accepts_good_and_refuses_placeholder():
    pattern = question_regex(LEVELS, 300)
    assert re.fullmatch(pattern, GOOD_QUESTIONS)
    assert not re.fullmatch(pattern, GOOD_QUESTIONS.replace("What is a prime number?", "QuestionMathQuestion"))
    assert not re.fullmatch(pattern, GOOD_QUESTIONS.replace("What is a prime number?",
                                                            "Question 1: what is a prime number?"))


# A critique as a 7B model writes it in the paper's format: numbered points over several lines.
BRACKETED_CRITIQUE = """[Critique Start]
[Strength Start] Strengths:
1. Clear definition of a prime.
2. Good example (7). [Strength End]
[Weakness Start] Weaknesses:
1. Misses the proof that there are infinitely many. [Weakness End]
[Suggestion Start] Suggestions for Improvement:
1. Add Euclid's argument. [Suggestion End]
[Critique End]"""


def test_critique_bracketed_sections():
    out = parse_critique(BRACKETED_CRITIQUE, {})[0]
    assert out["strength"].startswith("Strengths:\n1. Clear") and out["strength"].endswith("(7).")
    assert out["weakness"] == "Weaknesses:\n1. Misses the proof that there are infinitely many."
    assert out["suggestion"] == "Suggestions for Improvement:\n1. Add Euclid's argument."
    assert re.fullmatch(critique_regex(200), BRACKETED_CRITIQUE)
    assert not re.fullmatch(critique_regex(200), BRACKETED_CRITIQUE.replace("[Weakness Start]", ""))


def test_critique_headed_sections_when_the_brackets_are_dropped():
    text = "**Strength:** clear.\n**Weaknesses:** misses the proof.\nSuggestions: add Euclid's argument.\n[Critique End]"
    assert parse_critique(text, {})[0] == {"strength": "clear.", "weakness": "misses the proof.",
                                        "suggestion": "add Euclid's argument."}
    for bad in ("Strength: good. Suggestion: none.", "[Strength Start]good[Strength End]"):
        with pytest.raises(Rejection):
            parse_critique(bad, {})


def test_task_types_are_the_papers_seven_with_descriptions():
    task_types = CondorConfig().task_types
    assert list(task_types) == ["Role Playing", "Daily Chat", "Domain QA", "Given Material Processing",
                                "Response Format Control", "View", "Creation"]
    assert all(len(d) > 20 for d in task_types.values())
    assert CondorConfig(task_types=["View"]).task_types == {"View": task_types["View"]}
    with pytest.raises(ValueError, match="unknown task types"):
        CondorConfig(task_types=["coding"])


def test_refine_and_answer():
    row = {"answer": "old", "answer_round": 0}
    out = parse_refine("[Improved Answer Start]A prime has two divisors.[Improved Answer End]", row)[0]
    assert out == {"answer": "A prime has two divisors.", "answer_round": 1, "original_answer": "old"}
    assert re.fullmatch(refine_regex(200), "[Improved Answer Start]A prime has two divisors, 1 and itself."
                                           "[Improved Answer End]")
    for bad in ("[Improved Answer Start]cut off by max_tokens", "no block",
                "[Improved Answer Start]your improved answer[Improved Answer End]"):
        with pytest.raises(Rejection):
            parse_refine(bad, row)
    assert parse_answer("  text  ", {})[0]["answer"] == "text"
    with pytest.raises(Rejection):
        parse_answer("   ", {})


def test_build_uses_template_files():
    steps = condor_steps(CondorConfig())
    row = {"domain": "Mathematics", "tag": "prime numbers", "task_type": "View", "question": "Q?",
           "task_description": "give an opinion", "examples": ["Plan a picnic for six.", "Explain tides."],
           "answer": "A.", "strength": "s", "weakness": "w", "suggestion": "g", "branch": "Number theory",
           "existing": ["primes"]}
    for step in steps.values():
        messages = step.build(row, step.template)
        assert messages[0]["role"] == "user" and messages[0]["content"].strip()
    question = steps["question"].build(row, steps["question"].template)[0]["content"]
    assert "prime numbers" in question and '"View": give an opinion' in question
    assert "- Plan a picnic for six.\n- Explain tides.\n" in question and "own new words" in question
    without = steps["question"].build({**row, "examples": []}, steps["question"].template)[0]["content"]
    assert "for inspiration" not in without and "Plan a picnic" not in without


def test_tag_tree_shape_and_sampling():
    tree = load_tag_tree(None)
    assert len(tree) >= 40 and all(isinstance(v, dict) and v for v in tree.values())
    paths = leaf_tags(tree)
    assert all(len(p) == 3 for p in paths)
    pool = example_questions(None)
    rows = tag_task_rows(tree, {"a": "task a", "b": "task b"}, max_tags=5, seed=1, examples=pool, per_prompt=3)
    assert len(rows) == 10 and rows == tag_task_rows(tree, {"a": "task a", "b": "task b"}, 5, 1, pool, 3)
    assert all(len(r["examples"]) == 3 and set(r["examples"]) <= set(pool) for r in rows)
    assert len({tuple(r["examples"]) for r in rows}) == len(rows)  # drawn per row: no example in every prompt
    assert rows[0]["task_description"] == "task a"
    assert len(tag_task_rows(tree, {"a": ""}, None, 0)) == len(paths)


def test_grow_tags_parse_and_merge():
    from raysynth.recipes.condor.recipe import add_grown_tags, branch_rows, leaf_tags
    from raysynth.recipes.condor.steps import grow_tags_regex, parse_grow_tags

    tree = {"Physics": {"Optics": ["lenses"], "Thermodynamics": ["entropy"]}}
    rows = branch_rows(tree)
    assert rows[0] == {"domain": "Physics", "branch": "Optics", "path": ["Physics", "Optics"], "existing": ["lenses"]}
    reply = "- Fiber optics\n- lenses\n- Laser cooling.\n- Fiber optics\nSome chatter\n"
    new = parse_grow_tags(reply, rows[0])[0]["new_tags"]
    assert new == ["Fiber optics", "Laser cooling"]
    with pytest.raises(Rejection):
        parse_grow_tags("I cannot think of any.", rows[0])
    grown = add_grown_tags(tree, [{"path": ["Physics", "Optics"], "new_tags": new}])
    assert ("Physics", "Optics", "Laser cooling") in leaf_tags(grown) and tree["Physics"]["Optics"] == ["lenses"]
    assert re.fullmatch(grow_tags_regex(2), "- Fiber optics\n- Laser cooling\n")


def test_tree_topics_prompt_parse_and_assembly():
    from raysynth.config import SamplingConfig
    from raysynth.recipes.condor.recipe import tree_from_leaves
    from raysynth.recipes.condor.steps import parse_tree_topics, tree_step

    step = tree_step("tree-level-1", 3, SamplingConfig())
    root = step.build({"path": [], "language": "Chinese"}, step.template)[0]["content"]
    assert "root domains" in root and "written in Chinese" in root and "List 3 distinct" in root
    child = step.build({"path": ["Science", "Physics"], "language": "English"}, step.template)[0]["content"]
    assert "Science > Physics" in child and 'sub-topics of "Physics"' in child
    assert step.json_schema["properties"]["topics"]["maxItems"] == 3
    reply = '{"topics": ["Optics", "optics", "Thermodynamics", "Quantum mechanics", "Acoustics"]}'
    rows = parse_tree_topics(reply, {"path": ["Science", "Physics"], "language": "English"}, 3)
    assert [r["path"][-1] for r in rows] == ["Optics", "Thermodynamics", "Quantum mechanics"]
    assert rows[0] == {"path": ["Science", "Physics", "Optics"], "language": "English"}
    with pytest.raises(Rejection):
        parse_tree_topics('{"topics": []}', {"path": [], "language": "English"}, 3)

    leaves = [{"path": ["科学", "物理", "光学"], "language": "Chinese"}, {"path": ["Science", "Physics", "Optics"],
                                                                      "language": "English"},
              {"path": ["Science", "Physics", "Acoustics"], "language": "English"}]
    tree, languages = tree_from_leaves(leaves)
    assert tree == {"Science": {"Physics": ["Acoustics", "Optics"]}, "科学": {"物理": ["光学"]}}
    assert languages == {"Science > Physics > Acoustics": "English", "Science > Physics > Optics": "English",
                         "科学 > 物理 > 光学": "Chinese"}
    rows = tag_task_rows(tree, {"View": "v"}, None, 0, languages=languages)
    assert {(r["tag"], r["language"]) for r in rows} == {("Acoustics", "English"), ("Optics", "English"),
                                                         ("光学", "Chinese")}
    question = condor_steps(CondorConfig())["question"]
    assert "Write the Questions in Chinese." in question.build(rows[-1], question.template)[0]["content"]
