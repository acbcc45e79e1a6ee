"""LLM judge: tolerant parsing on fixed strings; both judge steps on the real engine."""

import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest

from raysynth.steps import Rejection
from raysynth.steps.judge import (combine_pairwise, pairwise_regex, pairwise_rows, parse_pairwise, parse_score,
                                  parse_winner, picked_first_shown, pointwise_regex)

TEST_DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("reply, score", [
    ("Explanation: fine.\nScore: 7", 7), ("Rating: [[8]]", 8), ("I'd give it 6/10.", 6),
    ("The score is 9 out of 10", 9), ("  4 ", 4), ("Score: **3**", 3), ("Example 2/10 ... Score: 5", 5),
])
def test_parse_score(reply, score):
    assert parse_score(reply) == score


def test_unusable_scores_are_rejections():
    with pytest.raises(Rejection) as err:
        parse_score("A thoughtful answer.")
    assert err.value.reason == "unparseable"
    with pytest.raises(Rejection) as err:
        parse_score("Score: 42")
    assert err.value.reason == "score_out_of_range"


@pytest.mark.parametrize("reply, winner", [
    ("Explanation: x\nWinner: B", "B"), ("[[A]]", "A"), ("Response A is better.", "A"), ("B", "B"),
    ("The better response is (B).", "B"),
])
def test_parse_winner(reply, winner):
    assert parse_winner(reply) == winner


def test_position_swap_maps_back_and_combines():
    rows = pairwise_rows([{"pair_id": "p1", "instruction": "i", "a": "x", "b": "y"}])
    assert [(r["order"], r["response_a"]) for r in rows] == [(0, "x"), (1, "y")]
    # The judge always prefers the first position: each order maps back to a different original.
    first = [parse_pairwise("Winner: A", r)[0]["judge_winner"] for r in rows]
    assert first == ["a", "b"]
    verdicts = pd.DataFrame([
        {"pair_id": "p1", "order": 0, "judge_winner": "a"}, {"pair_id": "p1", "order": 1, "judge_winner": "b"},
        {"pair_id": "p2", "order": 0, "judge_winner": "a"}, {"pair_id": "p2", "order": 1, "judge_winner": "a"},
        {"pair_id": "p3", "order": 0, "judge_winner": "b"},
    ])
    assert dict(combine_pairwise(verdicts).values.tolist()) == {"p1": "tie", "p2": "a", "p3": "incomplete"}
    # p1: the first-shown answer in both orders (a tie); p2: answer a in both (first shown once); p3: the second
    assert picked_first_shown(verdicts) == [1, 1, 1, 0, 0]


def test_structured_regexes_accept_their_own_format():
    assert re.fullmatch(pointwise_regex(50), "Explanation: it answers the question.\nScore: 10")
    assert re.fullmatch(pairwise_regex(50), "Explanation: A is more complete.\nWinner: A")
    assert not re.fullmatch(pointwise_regex(50), "Explanation: it answers the question.\nScore: 11")


@pytest.mark.slow
def test_judges_on_the_embedded_model(local_ray, tmp_path):
    """50 Self-Instruct seed tasks (instruction, human response), pointwise; 10 pairs, pairwise.

    Floor for the parsed share: 0.9. Structured outputs hold the reply to the verdict format, so
    only a reply cut at max_tokens can fail to parse; 96 tokens leave room for the longest allowed
    explanation (200 characters, about 50 tokens) plus the verdict, so nearly all must parse.
    """
    from raysynth.config import EngineConfig, JudgeConfig, ScorerConfig
    from raysynth.score.stage import run_pair_scores
    from raysynth.models import resolve_model
    from raysynth.pipeline import Lineage, run_llm_stage, write_source_stage
    from raysynth.steps.judge import judge_steps
    from raysynth.store import RunDir

    tasks = [json.loads(line) for line in (TEST_DATA / "self_instruct_seed_50.jsonl").read_text().splitlines()]
    first = [t["instances"][0] for t in tasks]
    rows = [{"instruction": t["instruction"] + ("\n\n" + i["input"] if i["input"] else ""), "response": i["output"]}
            for t, i in zip(tasks, first)]
    pairs = [{"pair_id": f"p{k}", "instruction": rows[k]["instruction"], "a": rows[k]["response"],
              "b": "I don't know."} for k in range(10)]
    run, lineage = RunDir(tmp_path / "run"), Lineage("judge", 0, "smollm2-135m")
    steps = judge_steps(JudgeConfig())
    engine, model_dir = EngineConfig(batch_size=64), resolve_model("smollm2-135m")

    items_stage = write_source_stage(run, 0, "items", rows, {"n": len(rows)}, lineage)
    scored = run_llm_stage(run, 0, steps["pointwise"], items_stage, engine, model_dir, lineage)
    share = scored.manifest()["rows_out"] / len(rows)
    scores = scored.read()["judge_score"]
    print(f"pointwise: parsed {share:.0%} of {len(rows)}; scores {scores.value_counts().to_dict()}")
    assert share >= 0.9 and scores.between(1, 10).all()

    # The pairwise judge as the configured pair scorer (both orders, agreed wins kept).
    source = write_source_stage(run, 0, "pairs", [{"prompt": p["instruction"], "a": p["a"], "b": p["b"]}
                                                  for p in pairs], {"n": len(pairs)}, lineage)
    scorer = ScorerConfig(kind="llm_judge", max_repetition=None)
    scored = run_pair_scores(run, 0, "judged", source, scorer, ("prompt", "a", "b"), lineage, engine, model_dir)
    manifest = scored.manifest()
    kept = scored.read()
    print("pairwise judge:", manifest["rows_out"], "agreed wins for the reference answer; dropped",
          manifest["rejected"])
    assert manifest["rows_out"] + sum(manifest["rejected"].values()) == len(pairs)
    assert set(manifest["rejected"]) <= {"gap_below_threshold", "score_error"}
    assert kept.empty or (kept["score_gap"] == 2.0).all()
    # The same floor as pointwise: the verdict format is held by structured outputs, so at least 90%
    # of the 20 verdicts (10 pairs, both orders) parse, and at most one pair lacks a verdict.
    verdicts = [s for s in run.stages() if s.name.rsplit("-", 1)[0] == "judged-judge"][0].manifest()
    assert verdicts["rows_in"] == 2 * len(pairs) and verdicts["rows_out"] >= 0.9 * verdicts["rows_in"], verdicts
    assert manifest["rejected"].get("score_error", 0) <= 1, manifest

    # Both judge stages (and the pairwise judge's two orders) ran on one kept engine actor, still
    # alive for the next stage until released.
    import ray
    from ray.util.state import list_actors

    def engines(state: str) -> list:
        return [a for a in list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", state)])
                if a.class_name == "VLLMEngine"]

    assert len(engines("ALIVE")) == 1 and not engines("DEAD")
    run.engines.release()
    deadline = time.time() + 60
    while engines("ALIVE") and time.time() < deadline:
        time.sleep(1)
    assert not engines("ALIVE") and len(engines("DEAD")) == 1
