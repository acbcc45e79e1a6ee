"""SynPO's pure pieces on fixed strings: the generator's training keywords, prompt and improvement
parsing, sampling-ranking, config errors (keyword lists: test_keywords.py)."""

import random
from pathlib import Path

import pandas as pd
import pytest

from raysynth.config import ConfigError
from raysynth.recipes import load_config
from raysynth.recipes.synpo.config import KeywordConfig
from raysynth.recipes.synpo.recipe import best_worst, generator_rows
from raysynth.recipes.synpo.steps import (clean_reply, generator_keywords, parse_generated_prompt, parse_improved,
                                          synpo_steps, templates)
from raysynth.steps import Rejection


def test_generator_keywords_two_of_the_prompt_and_one_noise():
    rng = random.Random(0)
    made = generator_keywords(["alpha", "beta", "gamma"], ["noise"], rng)
    assert len(made) == 3 and "noise" in made and len({"alpha", "beta", "gamma"} & set(made)) == 2
    assert generator_keywords(["alpha"], ["noise"], rng) is None
    assert generator_keywords(["alpha", "beta"], [], rng) is None


def test_generator_rows_fill_the_template():
    seeds = [{"prompt": "Describe the water cycle of tropical rainforests in simple terms.", "gold": "x"},
             {"prompt": "Write a poem about autumn leaves falling in a quiet city park.", "gold": "y"}]
    rows = generator_rows(seeds, KeywordConfig(), templates()["generate_prompt"], 0)
    assert len(rows) == 2
    for row in rows:
        assert all(k in row["generator_input"] for k in row["keywords"])
        assert row["prompt"] in {s["prompt"] for s in seeds}


def test_prompt_and_improvement_parsing():
    assert clean_reply('Request: "Explain photosynthesis to a child."') == "Explain photosynthesis to a child."
    assert clean_reply("**Improved response:** Better text.") == "Better text."
    assert parse_generated_prompt("  Explain tides.  ", {}, 100) == [{"prompt": "Explain tides."}]
    with pytest.raises(Rejection, match="empty"):
        parse_generated_prompt('""', {}, 100)
    with pytest.raises(Rejection, match="too_long"):
        parse_generated_prompt("x" * 101, {}, 100)
    assert parse_improved("Improved response: Tides come from the moon.", {}) == [{"improved": "Tides come from the moon."}]
    with pytest.raises(Rejection, match="empty"):
        parse_improved("   ", {})


def test_step_messages_use_the_templates():
    from raysynth.recipes.synpo.config import SynpoConfig

    steps = synpo_steps(SynpoConfig())
    generate = steps["generate_prompt"].build({"keywords": ["tides", "moon", "piano"]}, steps["generate_prompt"].template)
    assert "tides, moon, piano" in generate[0]["content"]
    improve = steps["improve"].build({"prompt": "Why tides?", "response": "Moon."}, steps["improve"].template)
    assert "Why tides?" in improve[0]["content"] and "Moon." in improve[0]["content"]
    assert steps["answer"].build({"prompt": "Why tides?"}, steps["answer"].template)[0]["content"].strip() == "Why tides?"


def test_best_worst_ranks_against_sample_zero():
    # PairRM-like: score_a = preference of the sample over sample 0, score_b its negative.
    scored = pd.DataFrame([
        {"prompt_id": "p", "prompt": "q", "response": "s1", "reference": "s0", "score_a": 0.2, "score_b": -0.2},
        {"prompt_id": "p", "prompt": "q", "response": "s2", "reference": "s0", "score_a": -0.15, "score_b": 0.15},
        {"prompt_id": "r", "prompt": "q2", "response": "t1", "reference": "t0", "score_a": -0.25, "score_b": 0.25},
    ])
    scored["score_gap"] = scored["score_a"] - scored["score_b"]
    pairs = {p["prompt_id"]: p for p in best_worst(scored)}
    assert (pairs["p"]["chosen"], pairs["p"]["rejected"]) == ("s1", "s2")
    assert pairs["p"]["score_gap"] == pytest.approx(0.7)
    assert (pairs["r"]["chosen"], pairs["r"]["rejected"]) == ("t0", "t1")  # the reference itself can win


def test_best_worst_with_absolute_reward_model_scores():
    """A reward model scores each answer on its own (score_b: sample 0's score): sample 0 (score 5)
    beats both others here, which ranking by score_a against a fixed 0 would have missed."""
    scored = pd.DataFrame([
        {"prompt_id": "p", "prompt": "q", "response": "s1", "reference": "s0", "score_a": 3.0, "score_b": 5.0},
        {"prompt_id": "p", "prompt": "q", "response": "s2", "reference": "s0", "score_a": 1.0, "score_b": 5.0},
    ])
    scored["score_gap"] = scored["score_a"] - scored["score_b"]
    (pair,) = best_worst(scored)
    assert (pair["chosen"], pair["rejected"]) == ("s0", "s2") and pair["score_gap"] == pytest.approx(4.0)


@pytest.mark.parametrize("body, message", [
    ("synpo:\n  pair_builder: sampling_ranking\n", r"field 'synpo'.*steps.answer.n >= 2"),
    ("synpo:\n  corpus: [missing.jsonl]\n", r"field 'synpo.corpus': not found: .*missing.jsonl"),
    ("train: {method: sft}\n", r"field 'train': expected a preference method"),
    ("synpo:\n  prompts_per_iteration: 0\n", r"field 'synpo.prompts_per_iteration'"),
    ("synpo:\n  beta_search: [2, 4]\ntrain: {method: dpo}\n", r"synpo.beta_search: expected train.method simpo"),
    ("synpo:\n  beta_search: [0]\n", r"field 'synpo.beta_search.0'"),
])
def test_config_errors_name_the_file_and_field(tmp_path: Path, body: str, message: str):
    path = tmp_path / "synpo.yaml"
    path.write_text("recipe: synpo\n" + body)
    with pytest.raises(ConfigError, match=r"synpo.yaml: .*" + message):
        load_config(path)


def test_shipped_synpo_configs_validate():
    from conftest import REPO as repo

    small = load_config(repo / "configs" / "synpo-small.yaml")
    assert small.synpo.iterations == 1 and small.synpo.scorer.kind == "llm_judge"
    # The cluster job names cluster paths; everything else must validate here.
    job = load_config(repo / "jobs" / "synpo.yaml", ["synpo.seed_data=null", "synpo.corpus=null"])
    assert (job.synpo.prompts_per_iteration, job.synpo.pairs_per_iteration, job.synpo.iterations) == (50000, 10000, 4)
    assert job.synpo.scorer.threshold == 0.20 and job.synpo.improver_train.max_length == 6000
    assert job.engine.num_gpus == 1 and job.train.method == "simpo"


def test_the_held_out_seed_rows_are_a_seeded_disjoint_share():
    from raysynth.recipes.synpo.recipe import split_holdout

    rows = [{"prompt": f"p{i}", "gold": f"g{i}"} for i in range(50)]
    kept, held = split_holdout(rows, 0.1, seed=3)
    assert len(held) == 5 and len(kept) == 45 and not {r["prompt"] for r in held} & {r["prompt"] for r in kept}
    assert kept == [r for r in rows if r not in held]  # the order is the seed data's
    assert split_holdout(rows, 0.1, seed=3) == (kept, held) and split_holdout(rows, 0.1, seed=4)[1] != held
    assert split_holdout(rows, 0.0, seed=3) == (rows, [])  # no beta search: every row, as before
