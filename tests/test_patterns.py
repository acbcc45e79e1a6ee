"""`text_without`: any text but the marker, checked against a plain substring test."""

import itertools
import re

import pytest

from raysynth.steps.patterns import text_without


@pytest.mark.parametrize("marker", ["[Question End]", "[End]", "\nInput:"])
def test_text_without_a_marker_is_exactly_the_texts_that_lack_it(marker):
    pattern = re.compile(text_without(marker))
    alphabet = sorted(set(marker)) + ["x", "\n"]
    # Every short text over the marker's own characters, and texts around the whole marker.
    texts = ["".join(t) for n in range(6) for t in itertools.product(alphabet[:5], repeat=n)]
    fragments = [marker[:i] for i in range(len(marker) + 1)] + [marker[i:] for i in range(len(marker))] + ["x"]
    texts += ["".join(pair) for pair in itertools.product(fragments, repeat=2)]  # partial markers meeting
    texts += [marker, "a" + marker, marker + "b", marker[:-1], marker[0] + marker, marker[:3] + marker[1:],
              "see [1] and [Question] or [Question En]d.\n```py\nx = [1, 2]\n```", "用中文写一个问题。"]
    for text in texts:
        assert bool(pattern.fullmatch(text)) == (marker not in text), repr(text)


def test_markers_that_repeat_their_first_character_are_refused():
    with pytest.raises(ValueError):
        text_without("abca")


def every_step() -> list[tuple[str, object]]:
    from raysynth.config import JudgeConfig
    from raysynth.recipes.condor.config import CondorConfig
    from raysynth.recipes.condor.steps import condor_steps
    from raysynth.recipes.isheep.config import ISheepConfig
    from raysynth.recipes.isheep.steps import isheep_steps
    from raysynth.recipes.refed.config import RefedConfig
    from raysynth.recipes.refed.steps import refed_steps
    from raysynth.recipes.synpo.config import SynpoConfig
    from raysynth.recipes.synpo.steps import synpo_steps
    from raysynth.steps.judge import judge_steps

    steps = [(f"condor guards={g}/{k}", s) for g in (True, False) for k, s in
             condor_steps(CondorConfig(small_model_guards=g, grow_tags=3)).items()]
    steps += [(f"isheep guards={g}/{k}", s) for g in (True, False) for k, s in
              isheep_steps(ISheepConfig(small_model_guards=g)).items()]
    steps += [(f"refed items={n}/{k}", s) for n in (5, None) for k, s in refed_steps(RefedConfig(max_list_items=n)).items()]
    steps += [(f"judge guards={g}/{k}", s) for g in (True, False)
              for k, s in judge_steps(JudgeConfig(small_model_guards=g)).items()]
    steps += [(f"synpo/{k}", s) for k, s in synpo_steps(SynpoConfig()).items()]
    return [(name, step) for name, step in steps if step.regex or step.json_schema]


@pytest.mark.parametrize("name, step", every_step(), ids=lambda value: value if isinstance(value, str) else "")
def test_every_step_s_grammar_compiles_in_vllm_s_backend(name, step):
    """xgrammar, vLLM's structured-output backend, compiles each step's pattern or schema with the
    small-model guards on and off: a grammar it refuses empties every reply of the step (found by
    bench/guards.py: I-SHEEP's unguarded pattern had a raw new line in a character class)."""
    import json

    import xgrammar  # installed with vLLM
    if step.regex:
        xgrammar.Grammar.from_regex(step.regex)
    else:
        xgrammar.Grammar.from_json_schema(json.dumps(step.json_schema))
