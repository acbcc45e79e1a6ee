"""The champion/challenger gate on fixed metric sets, paired differences, the registry's verdicts,
statuses and timeline, stop rules, and `raysynth models list` / `promote` / `rollback`. Fast: no Ray,
no engine (the gate on the real engine, with a server running, is in test_serve.py)."""

import math
import time
from types import SimpleNamespace

import pandas as pd
import pytest

from raysynth.config import PromotionConfig
from raysynth.eval.stats import difference, rate
from raysynth.promotion import Contender, Ladder, gate, generated_tokens, next_policy, stop_reason, versus
from raysynth.registry import make_current, read_registry, record_decision, register_model
from raysynth.store import RunDir
from test_registry import cli


def metric(value: float, low: float, high: float, n: int = 100) -> dict:
    return {"value": value, "low": low, "high": high, "n": n}


def evaluation(win: dict | None, strict: dict | None, loose: dict | None) -> dict:
    result: dict = {"iteration": 1, "model": "cand", "paired": {"baseline": "champ", "ifeval": {}}}
    if win is not None:
        result["winrate"] = {"baseline": "champ", "win_rate": win, "judge": "frozen", "wins": 60, "ties": 20,
                             "losses": 20, "incomplete": 0}
    for name, m in (("prompt_strict", strict), ("prompt_loose", loose)):
        if m is not None:
            result["paired"]["ifeval"][name] = m
    return result


SAME = metric(0.0, -0.03, 0.03)
GATE = PromotionConfig()


def test_a_clear_win_without_an_ifeval_drop_is_promoted():
    verdict = gate(evaluation(metric(0.70, 0.62, 0.78), SAME, metric(0.02, -0.01, 0.05)), GATE)
    assert verdict.promote and verdict.reason.startswith("promoted: win rate 0.700 [0.620, 0.780]")
    assert "60-20-20 W-T-L" in verdict.reason and "judge frozen" in verdict.reason


def test_a_win_rate_interval_reaching_one_half_is_rejected():
    verdict = gate(evaluation(metric(0.56, 0.49, 0.63), SAME, SAME), GATE)
    assert not verdict.promote
    assert verdict.reason == ("rejected: win rate 0.560 [0.490, 0.630] (n=100), 60-20-20 W-T-L, judge frozen: "
                              "lower bound not above 0.5")


def test_an_ifeval_drop_beyond_the_tolerance_is_rejected_despite_the_win():
    verdict = gate(evaluation(metric(0.80, 0.72, 0.88), metric(-0.08, -0.14, -0.02), SAME), GATE)
    assert not verdict.promote
    assert "IFEval prompt_strict difference -0.080 [-0.140, -0.020] (n=100): may drop more than 0.05" in verdict.reason
    assert "prompt_loose" not in verdict.reason  # only failed rules are named in a rejection
    # The tolerance is a field: wider, the same figures pass.
    assert gate(evaluation(metric(0.80, 0.72, 0.88), metric(-0.08, -0.14, -0.02), SAME),
                PromotionConfig(max_ifeval_drop=0.15)).promote


def test_a_tie_is_not_a_promotion():
    all_ties = rate([0.5] * 30)  # every pair judged a tie: the interval is the point 0.5
    assert (all_ties["low"], all_ties["high"]) == (0.5, 0.5)
    verdict = gate(evaluation(all_ties, metric(0.0, 0.0, 0.0), metric(0.0, 0.0, 0.0)), GATE)
    assert not verdict.promote and "lower bound not above 0.5" in verdict.reason


@pytest.mark.parametrize("missing", ["winrate", "prompt_strict", "nan"])
def test_a_missing_metric_fails_its_rule(missing):
    win = None if missing == "winrate" else metric(0.9, 0.8, 0.95)
    if missing == "nan":  # no verdict parsed: rate([]) is NaN with n 0
        win = rate([])
    strict = None if missing == "prompt_strict" else SAME
    verdict = gate(evaluation(win, strict, SAME), GATE)
    assert not verdict.promote
    expected = "no paired IFEval prompt_strict" if missing == "prompt_strict" else "no judged win rate"
    assert expected in verdict.reason


def test_without_a_gate_or_an_evaluation_every_model_is_promoted():
    worse = evaluation(metric(0.1, 0.05, 0.2), metric(-0.5, -0.6, -0.4), SAME)
    assert gate(worse, PromotionConfig(gate=False)).promote
    verdict = gate(None, GATE)
    assert verdict.promote and "no eval section" in verdict.reason


def test_the_paired_difference_is_narrower_than_the_two_rates():
    """Both models answer the same prompts; most prompts pass or fail for both. Side by side the two
    rates' intervals overlap widely, while the paired difference's interval excludes 0."""
    import random

    rng = random.Random(0)
    hard = [rng.random() < 0.5 for _ in range(200)]  # per-prompt difficulty shared by both models
    champion = [int(not h) for h in hard]
    candidate = [1 if c else int(rng.random() < 0.15) for c in champion]  # fixes some prompts, breaks none
    a, b, d = rate(candidate), rate(champion), difference(candidate, champion)
    assert a["low"] < b["high"]  # unpaired: the intervals overlap
    assert d["low"] > 0 and d["value"] == pytest.approx(a["value"] - b["value"]) and d["n"] == 200
    with pytest.raises(ValueError, match="same units"):
        difference([1, 0], [1])


def test_stop_rules_and_the_next_policy(tmp_path):
    champion = Contender("isheep-iter-01", "/runs/m1", 1)
    assert next_policy(PromotionConfig(), "/runs/m3", champion) == "/runs/m3"  # the paper's chain
    assert next_policy(PromotionConfig(next_policy="champion"), "/runs/m3", champion) == "/runs/m1"
    assert stop_reason(PromotionConfig(), 10, time.time()) is None
    assert "2 iterations in a row without a promotion" in stop_reason(PromotionConfig(patience=2), 2, time.time())
    assert stop_reason(PromotionConfig(patience=2), 1, time.time()) is None
    assert "minutes spent" in stop_reason(PromotionConfig(max_minutes=1), 0, time.time() - 61)
    assert stop_reason(PromotionConfig(max_tokens=1000), 0, time.time(), lambda: 999) is None
    assert "1,000 tokens generated" in stop_reason(PromotionConfig(max_tokens=1000), 0, time.time(), lambda: 1000)
    # The loop's state object counts each started iteration until a promotion resets the count.
    ladder = Ladder(RunDir(tmp_path / "run"), SimpleNamespace(promotion=PromotionConfig(patience=2)), champion, "judge")
    assert ladder.stop() is None and ladder.stop() is None
    assert "2 iterations in a row without a promotion" in ladder.stop()


def test_the_token_budget_counts_every_committed_batch_of_the_run(tmp_path):
    """A committed stage counts its manifest's total; a stage cut short, its committed batches."""
    from raysynth.pipeline import finish_stage, open_stage

    run = RunDir(tmp_path / "run")

    def stage(iteration: int, name: str, tokens: list[int], finish: bool) -> None:
        opened = open_stage(run, iteration, name, {"n": name})
        for k, out in enumerate(tokens):
            rows = pd.DataFrame([{"id": f"{name}-{k}", "parent_id": ""}])
            opened.commit_batch([f"{name}-{k}"], rows, pd.DataFrame(),
                                {"rows_in": 1, "rows_out": 1, "rejected": {}, "tokens_in": 5, "tokens_out": out})
        if finish:
            finish_stage(run, opened, {"n": name}, len(tokens))

    stage(1, "answer", [100, 200], finish=True)
    stage(2, "critique", [50], finish=False)  # an interrupted stage: its committed batch counts
    assert generated_tokens(run) == 350
    ladder = Ladder(run, SimpleNamespace(promotion=PromotionConfig(max_tokens=300)), Contender("r", "/m", 0), "judge")
    assert "350 tokens generated (promotion.max_tokens: 300)" in ladder.stop()


def test_verdicts_statuses_and_the_timeline_in_the_registry(tmp_path):
    register_model(tmp_path, "r-iter-00", tmp_path / "m0", 0, lineage={"recipe": "r"})
    lineage = {"recipe": "r", "parent": str(tmp_path / "m0"), "training_data": "iter-01/sft.parquet",
               "config_hash": "abc123"}
    register_model(tmp_path, "r-iter-01", tmp_path / "m1", 1, make_current=False, lineage=lineage)
    result = evaluation(metric(0.5, 0.4, 0.6), SAME, SAME)
    verdict = gate(result, GATE)
    record_decision(tmp_path, "r-iter-01", verdict.promote, verdict.reason,
                    versus(result, Contender("r-iter-00", "m0", 0)))
    registry = read_registry(tmp_path)
    rejected = registry.models["r-iter-01"]
    assert registry.current == "r-iter-00" and rejected.status == "rejected" and rejected.reason == verdict.reason
    assert rejected.config_hash == "abc123" and rejected.versus["champion"] == "r-iter-00"
    assert math.isclose(rejected.versus["winrate"]["win_rate"]["low"], 0.4)

    register_model(tmp_path, "r-iter-02", tmp_path / "m2", 2, make_current=False, lineage=lineage)
    record_decision(tmp_path, "r-iter-02", True, "promoted: better")
    record_decision(tmp_path, "r-iter-02", True, "promoted: better")  # a resumed run: nothing changes
    make_current(tmp_path, None, "rolled back", "a user saw bad answers")
    record_decision(tmp_path, "r-iter-02", True, "promoted: better")  # ... nor undoes the rollback
    registry = read_registry(tmp_path)
    assert registry.current == "r-iter-00"
    assert {n: e.status for n, e in registry.models.items()} == {
        "r-iter-00": "champion", "r-iter-01": "rejected", "r-iter-02": "rolled back"}
    assert [(e.model, e.event) for e in registry.timeline] == [
        ("r-iter-00", "champion"), ("r-iter-01", "rejected"), ("r-iter-02", "promoted"),
        ("r-iter-00", "rolled back")]


def test_models_promote_and_rollback_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    register_model(run, "r-iter-00", tmp_path / "m0", 0)
    register_model(run, "r-iter-01", tmp_path / "m1", 1, make_current=False,
                   lineage={"recipe": "r", "parent": str(tmp_path / "m0"), "config_hash": "abc123"})
    record_decision(run, "r-iter-01", False, "rejected: win rate 0.480 [0.400, 0.560] (n=100)")
    listed = cli("models", "list", str(run))
    assert listed.returncode == 0, listed.stderr
    assert "r-iter-00 *" in listed.stdout and "rejected" in listed.stdout and "win rate 0.480" in listed.stdout
    assert "champion timeline" in listed.stdout and "abc123" in listed.stdout
    assert cli("models", str(run)).stdout == listed.stdout  # the list without naming the command

    promoted = cli("promote", "r-iter-01", "--run-dir", str(run), "--reason", "a person read the answers")
    assert promoted.returncode == 0 and "champion -> r-iter-01" in promoted.stdout, promoted.stderr
    assert read_registry(run).timeline[-1].reason == "a person read the answers"
    rolled = cli("rollback", "--run-dir", str(run))
    assert rolled.returncode == 0 and "champion -> r-iter-00" in rolled.stdout, rolled.stderr
    assert read_registry(run).models["r-iter-01"].status == "rolled back"
    nothing_before = cli("rollback", "--run-dir", str(tmp_path / "other"))
    assert nothing_before.returncode == 2 and "no models.json" in nothing_before.stderr
