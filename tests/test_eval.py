"""Evaluation pieces on fixed inputs: IFEval checker verdicts on hand-written responses whose
verdict is known, bootstrap intervals, diversity, the run report."""

import json
import math

import pytest

from raysynth.eval.diversity import distinct_n, diversity
from raysynth.eval.ifeval import check_response, load_ifeval
from raysynth.eval.stats import rate, ratio


def row(instructions, kwargs, prompt="(hand-written test prompt)"):
    return {"key": 1, "prompt": prompt, "instruction_id_list": instructions, "kwargs": kwargs}


@pytest.mark.parametrize("instruction,kwargs,response,strict,loose", [
    ("punctuation:no_comma", {}, "No commas appear in this reply.", True, True),
    ("punctuation:no_comma", {}, "Well, this reply has one.", False, False),
    # Loose scoring drops the first line: a chatty opener with a comma fails strict only.
    ("punctuation:no_comma", {}, "Sure, here it is:\nNo commas appear below the opener", False, True),
    ("change_case:english_lowercase", {}, "every word here is lower case.", True, True),
    ("change_case:english_lowercase", {}, "This One Is Not.", False, False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* first\n* second", True, True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* only one", False, False),
    # Sentence counting needs NLTK's punkt data, written from the shipped parameters.
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3},
     "Dr. Smith arrived. He sat down.", True, True),
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3},
     "One. Two. Three. Four.", False, False),
    ("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"},
     "Done. Is there anything else I can help with?", True, True),
])
def test_checker_verdicts_on_known_responses(instruction, kwargs, response, strict, loose):
    verdict = check_response(row([instruction], [kwargs]), response)
    assert verdict["strict"] == [strict] and verdict["loose"] == [loose]
    assert verdict["prompt_strict"] is strict and verdict["prompt_loose"] is loose


def test_prompt_level_needs_every_instruction():
    verdict = check_response(row(["punctuation:no_comma", "change_case:english_lowercase"], [{}, {}]),
                             "no commas but Capitals")
    assert verdict["strict"] == [True, False] and verdict["prompt_strict"] is False


def test_shipped_ifeval_has_541_prompts_and_every_one_is_checkable():
    rows = load_ifeval(None, None)
    assert len(rows) == 541 and sum(len(r["instruction_id_list"]) for r in rows) == 834
    for r in rows:  # no checker may crash (e.g. missing punkt data) on any prompt
        check_response(r, "A short reply. It has two sentences.")
    assert len(load_ifeval(None, 10)) == 10


def test_rate_interval_covers_value_and_narrows_with_n():
    small, large = rate([1, 0] * 10, seed=1), rate([1, 0] * 500, seed=1)
    for m in (small, large):
        assert m["low"] <= m["value"] == 0.5 <= m["high"]
    assert (large["high"] - large["low"]) < (small["high"] - small["low"]) / 3
    assert rate([1, 1, 1])["low"] == 1.0 and math.isnan(rate([])["value"])


def test_ratio_resamples_whole_prompts():
    m = ratio([2, 0, 1, 3], [2, 1, 2, 3], seed=0)
    assert m["value"] == pytest.approx(6 / 8) and m["n"] == 4 and m["low"] < m["value"] < m["high"] <= 1


def test_distinct_and_near_duplicates():
    assert distinct_n(["a b a b"], 1) == 0.5 and distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    varied = [f"topic {i} explains why {w} matters for people who study {w} every day"
              for i, w in enumerate(["rivers", "stars", "music", "bread", "ships", "glass"] * 5)]
    copies = ["the same sentence about the same thing repeated again and again"] * 30
    high, low = diversity(varied, group_size=5), diversity(copies, group_size=5)
    assert high["distinct_2"]["value"] > low["distinct_2"]["value"]
    assert low["near_duplicate_rate"]["value"] == pytest.approx(29 / 30)
    assert high["near_duplicate_rate"]["value"] < 0.5
    assert high["texts"] == 30 and "embedding_spread" not in high


def test_report_from_eval_files_and_stages(tmp_path):
    from raysynth.registry import record_decision, register_model
    from raysynth.report import build_report

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text("recipe: condor\nengine: {model: smollm2-135m}\n")
    for it, value in ((0, 0.2), (1, 0.3)):
        m = {"value": value, "low": value - 0.05, "high": value + 0.05, "n": 100}
        result = {"iteration": it, "model": f"m{it}", "ifeval": {"prompt_strict": m, "instruction_loose": m}}
        if it:
            result["winrate"] = {"baseline": "m0", "win_rate": m, "judge": "m1", "wins": 3, "ties": 1,
                                 "losses": 2, "incomplete": 0,
                                 "picked_first_shown": {"value": 0.93, "low": 0.91, "high": 0.94, "n": 1052}}
            result["paired"] = {"baseline": "m0", "ifeval": {"prompt_strict": m}}
        (run / "eval" / f"iter-{it:02d}.json").write_text(json.dumps(result))
    register_model(run, "condor-iter-00", tmp_path / "m0", 0)
    register_model(run, "condor-iter-01", tmp_path / "m1", 1, make_current=False)
    record_decision(run, "condor-iter-01", False, "rejected: win rate too low",
                    {"champion": "condor-iter-00", "winrate": result["winrate"], "ifeval": result["paired"]["ifeval"]})
    (run / "iter-01").mkdir()
    (run / "iter-01" / "iteration.json").write_text(json.dumps({"iteration": 1, "funnel": {"pairs": 5}, "beta_search": {
        "beta": 6.0, "validation_pairs": 8, "held_out_accuracy": {"2": 0.5, "6": 0.75}}}))
    paths = build_report(run)
    page = paths["html"].read_text()
    assert page.count("<img") == 1 and "win rate vs champion" in page and "3 wins" in page
    assert "SimPO beta search" in page and "<th>beta 6</th>" in page
    assert "ifeval prompt strict minus champion" in page
    assert "The judge picked the answer shown first in 93% [91%, 94%] of 1052 verdicts: it follows the position" in page
    assert "Champion timeline" in page and "Served now: <b>condor-iter-00</b>" in page
    assert "rejected: win rate too low" in page and "3-1-2" in page
    summary = paths["markdown"].read_text()
    assert "- condor-iter-01: rejected (rejected: win rate too low)" in summary
    assert "SimPO beta search, held-out pairs ranked right: beta 2 0.50, beta 6 0.75; kept beta 6" in summary
    assert "IFEval prompt strict minus `m0` (paired): 0.300" in summary
    assert "- The judge picked the answer shown first in 93%" in summary
    assert "IFEval prompt strict: 0.300 [0.250, 0.350] (n=100)" in summary
