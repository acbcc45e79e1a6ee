"""Scorers and filters: pure filters on fixed strings; reward models as Ray Data actor pools."""

import math
import random

import pandas as pd
import pytest
from rouge_score import rouge_scorer

from raysynth.score.filters import (gap_reason, near_duplicate_reasons, repetition_ratio, repetition_reason,
                                    rouge_novelty_reasons)
from tiny_models import WORDS, build_tiny_pairrm, build_tiny_reward_model


def test_repetition_ratio():
    assert repetition_ratio("The quick brown fox jumps over the lazy dog.") == 0.0
    loop = "I am sorry I can not help. " * 6
    assert repetition_ratio(loop) > 0.5 and repetition_reason(loop) == "repetition"
    assert repetition_reason("a b c") is None


def test_gap_threshold():
    assert gap_reason(0.25, 0.20) is None
    assert gap_reason(0.1, 0.20) == "gap_below_threshold"
    assert gap_reason(None, 0.2) == "unscored"


def brute_force_novelty(texts, threshold=0.7):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept, reasons = [], []
    for text in texts:
        if any(scorer.score(k, text)["rougeL"].fmeasure >= threshold for k in kept):
            reasons.append("rouge_l_too_similar")
        else:
            reasons.append(None)
            kept.append(text)
    return reasons


def test_rouge_novelty_with_lsh_screen_matches_exact_rouge():
    rng = random.Random(0)
    texts = []
    for _ in range(150):
        if texts and rng.random() < 0.4:  # a near copy of an earlier text
            words = rng.choice(texts).split()
            words[rng.randrange(len(words))] = rng.choice(WORDS)
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))))
    fast = rouge_novelty_reasons(texts)
    assert fast == brute_force_novelty(texts)
    assert 10 < fast.count("rouge_l_too_similar") < 140


def test_near_duplicates():
    texts = ["the cat sat on the mat today and yesterday", "the cat sat on the mat today and yesterday",
             "dogs are good pets for a family"]
    assert near_duplicate_reasons(texts) == [None, "near_duplicate", None]


# --- reward models through Ray Data actor pools ---------------------------------------------

PAIRS = [
    {"prompt": "what is the capital of france", "a": "paris is the capital", "b": "i do not know maybe berlin"},
    {"prompt": "tell me about cats", "a": "they are pets", "b": "cats cats cats cats cats cats cats cats"},
    {"prompt": "a question", "a": "yes", "b": "no"},
    {"prompt": "what is a city", "a": "a city on the seine", "b": "hard to say"},
]


def score_through_stage(tmp_path, scorer, rows, name="score"):
    from raysynth.pipeline import Lineage, write_source_stage
    from raysynth.score.stage import run_score_stage
    from raysynth.store import RunDir

    run = RunDir(tmp_path / "run")
    lineage = Lineage("test", 0, "tiny")
    source = write_source_stage(run, 0, "pairs", rows, {"rows": len(rows)}, lineage)
    stage = run_score_stage(run, 0, name, source, scorer, ("prompt", "a", "b"), lineage)
    kept = stage.read()
    rejected = pd.read_parquet(stage.path / "rejected") if (stage.path / "rejected").exists() else pd.DataFrame()
    return stage, kept, rejected


def test_pairrm_checkpoint_scores_in_two_actors_and_swap_flips_sign(local_ray, tmp_path):
    from raysynth.config import ScorerConfig
    from raysynth.score.pairrm import PairRM

    model_dir = build_tiny_pairrm(tmp_path / "pairrm")
    keys = PairRM(str(model_dir)).model.state_dict().keys()
    assert all(k.startswith(("pretrained_model.", "head_layer.")) for k in keys)  # the reference's names

    scorer = ScorerConfig(kind="pairrm", model=str(model_dir), batch_size=1, concurrency=(2, 2),
                          num_cpus=0.5, gap_threshold=-1e9, max_repetition=None, max_length=256)
    rows = [{**pair, "k": k} for k, pair in enumerate(PAIRS * 3)]
    swapped = [{**r, "a": r["b"], "b": r["a"]} for r in rows]
    _, kept, _ = score_through_stage(tmp_path / "x", scorer, rows)
    _, kept_swapped, _ = score_through_stage(tmp_path / "y", scorer, swapped)
    assert len(kept) == len(kept_swapped) == len(rows)
    both = kept.merge(kept_swapped, on="k", suffixes=("", "_swapped"))
    assert len(both) == len(rows)
    for gap, gap_swapped in zip(both["score_gap"], both["score_gap_swapped"]):
        assert math.isfinite(gap) and gap != 0
        assert gap == pytest.approx(-gap_swapped, abs=1e-5)

    # The gap is the model's own single-order logits, f(A, B) - f(B, A), computed here apart from the
    # stage; the model alone is not antisymmetric (f(A, B) != -f(B, A)), so the flip above is the
    # position averaging at work, not a property any number would have.
    import torch

    from raysynth.score.pairrm import encode_pairs

    ranker = PairRM(str(model_dir), source_max_length=128, candidate_max_length=64)
    prompts, a, b = ([p[k] for p in PAIRS] for k in ("prompt", "a", "b"))
    with torch.no_grad():
        def logits(first, second):
            batch = encode_pairs(ranker.tokenizer, prompts, first, second, 128, 64)
            return ranker.model(batch["input_ids"], batch["attention_mask"]).float()

        forward, backward = logits(a, b), logits(b, a)
    expected = (forward - backward).tolist()
    assert kept.sort_values("k")["score_gap"].tolist()[:len(PAIRS)] == pytest.approx(expected, abs=1e-4)
    assert (forward + backward).abs().max() > 1e-3


def test_reward_model_scores_and_filters_count_reasons(local_ray, tmp_path):
    from raysynth.config import ScorerConfig
    from raysynth.models import resolve_model

    model_dir = build_tiny_reward_model(tmp_path / "rm", resolve_model("smollm2-135m"))
    assert ScorerConfig(kind="reward_model").threshold == 0.02 and ScorerConfig().threshold == 0.20
    # A threshold no finite gap fails, so only the repetition filter drops: exactly the three rows with a
    # looping response, on either side of the pair (the two added here and PAIRS' "cats cats ..." b side).
    scorer = ScorerConfig(kind="reward_model", model=str(model_dir), batch_size=2, concurrency=(2, 2),
                          num_cpus=0.5, max_length=128, gap_threshold=-1e9)
    rows = PAIRS + [{"prompt": "p", "a": "the same answer again " * 10, "b": "x"},
                    {"prompt": "q", "a": "y", "b": "the same answer again " * 10}]
    stage, kept, rejected = score_through_stage(tmp_path, scorer, rows)
    manifest = stage.manifest()
    assert manifest["rows_in"] == len(rows)
    assert manifest["rejected"] == {"repetition": 3} and manifest["rows_out"] == len(PAIRS) - 1
    assert "cats cats" not in " ".join(kept["b"].astype(str))
    assert kept["score_gap"].map(math.isfinite).all()
    assert (kept["score_gap"] == kept["score_a"] - kept["score_b"]).all()
    assert kept["score_a"].nunique() > 1  # real scores, not a constant


def test_filter_stage_counts_each_reason(tmp_path):
    from raysynth.config import FilterConfig
    from raysynth.pipeline import Lineage, write_source_stage
    from raysynth.score.filter_stage import run_filter_stage
    from raysynth.store import RunDir

    texts = ["Write a poem about the sea at night.",            # kept
             "Write a poem about the sea at night.",            # exact copy: near-duplicate
             "Write a poem about the sea at dawn.",             # ROUGE-L 0.875 with the first
             "Hi",                                              # too short
             "List three uses of copper in electronics.",       # kept
             "Summarize the history of the printing press."]    # ROUGE-L vs the seed below
    run, lineage = RunDir(tmp_path / "run"), Lineage("test", 0, "none")
    source = write_source_stage(run, 0, "instructions", [{"instruction": t, "k": i} for i, t in enumerate(texts)],
                                {"n": len(texts)}, lineage)
    stage = run_filter_stage(run, 0, "filtered", source, "instruction", FilterConfig(min_chars=5), lineage,
                             reference=["Summarize the history of the printing press briefly."])
    manifest = stage.manifest()
    assert manifest["rows_in"] == 6 and manifest["rows_out"] == 2
    assert manifest["rejected"] == {"near_duplicate": 1, "rouge_l_too_similar": 2, "too_short": 1}
    assert sorted(stage.read()["k"]) == [0, 4]


def test_a_reward_model_judges_the_win_rate_and_swapping_the_sides_mirrors_it(local_ray, tmp_path):
    """`eval.judge_scorer`: a frozen reward model (a tiny PairRM, gaps of about 1) decides each pair
    of the win rate; the same pairs with the sides swapped give the wins and losses the other way."""
    from raysynth.config import EngineConfig, EvalConfig
    from raysynth.eval import win_rate
    from raysynth.store import RunDir

    pairrm = build_tiny_pairrm(tmp_path / "pairrm", head_scale=100)
    cfg = EvalConfig(judge_scorer={"kind": "pairrm", "model": str(pairrm), "max_length": 128, "num_cpus": 0.5})
    prompts = {str(i): f"What is {i} plus {i}?" for i in range(12)}
    ours = {k: f"{int(k) * 2}, since {k} and {k} make {int(k) * 2}." for k in prompts}
    theirs = {k: random.Random(k).choice(WORDS) + " maybe" for k in prompts}
    run = RunDir(tmp_path / "run")
    forward = win_rate(run, 1, prompts, ours, theirs, EngineConfig(), cfg, judge="smollm2-135m")
    backward = win_rate(run, 2, prompts, theirs, ours, EngineConfig(), cfg, judge="smollm2-135m")
    assert forward["judge"] == f"pairrm:{pairrm}"
    assert forward["incomplete"] == 0 and forward["wins"] + forward["ties"] + forward["losses"] == 12
    assert forward["wins"] + forward["losses"] > 0, forward  # gaps past PairRM's 0.20 decide pairs
    assert (forward["wins"], forward["ties"], forward["losses"]) == (backward["losses"], backward["ties"],
                                                                     backward["wins"])
    assert forward["win_rate"]["value"] == pytest.approx(1 - backward["win_rate"]["value"])
