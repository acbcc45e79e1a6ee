"""SynPO (arXiv 2410.06961), its figure 2 and algorithm 1:

  seed SFT data --(2 keywords of a prompt + 1 noise keyword -> the prompt)--> SFT --> self-prompt generator
  corpus paragraphs --> keyword-list pool (3 keywords a paragraph)                            [once]
  iteration t = 1..T, with policy M_{t-1} (M_0 = the initial model):
    keyword lists --generator--> synthetic prompts (empty / over-long / near-duplicate dropped)
    M_{t-1} answers the synthetic prompts and the seed prompts
    seed (prompt, M_{t-1}'s answer -> gold) where the scorer prefers gold by the gap --> SFT of the
      initial model --> response improver R_t
    R_t rewrites each answer --> (improved, original) scored; gap + repetition filters
    up to `pairs_per_iteration` kept pairs join the accumulated set --> SimPO of the initial model --> M_t
      (with `beta_search`, one SimPO run per beta, the best on held-out seed pairs kept)
    evaluate M_t against M_0; register M_t as the run's current model (a running server swaps to it)

`pair_builder` swaps the last three steps for the paper's baselines: sampling_ranking (best vs
worst of n samples by the scorer) or seed_po (gold as chosen, M_{t-1}'s answer as rejected).
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from raysynth.config import EngineConfig
from raysynth.eval import evaluate
from raysynth.export import export_preferences, export_sft, select_pairs
from raysynth.hashing import stable_hash
from raysynth.models import engine_for, resolve_model
from raysynth.pipeline import Lineage, finish_stage, open_stage, run_llm_stage, write_source_stage
from raysynth.promotion import Ladder, first_champion
from raysynth.recipes.synpo.config import SynpoRun
from raysynth.recipes.synpo.keywords import candidates, run_keyword_pool, run_keyword_sample
from raysynth.recipes.synpo.steps import generator_keywords, generator_message, improver_message, synpo_steps, templates
from raysynth.score.filter_stage import run_filter_stage
from raysynth.score.stage import filter_and_commit, run_pair_scores
from raysynth.shipped import CORPUS, seed_pairs
from raysynth.store import RunDir, StageDir, atomic_write_parquet
from raysynth.train import train_model, training_summary

RECIPE = "synpo"


def generator_rows(seeds: list[dict[str, str]], keyword_cfg, template: str, seed: int) -> list[dict[str, Any]]:
    """The self-prompt generator's SFT rows: shuffled (2 prompt keywords + 1 noise keyword) -> prompt."""
    words = [candidates(row["prompt"], keyword_cfg) for row in seeds]
    rng = random.Random(seed)
    rows = []
    for i, row in enumerate(seeds):
        other = rng.choice([j for j in range(len(seeds)) if j != i]) if len(seeds) > 1 else i
        keywords = generator_keywords(words[i], [w for w in words[other] if w not in words[i]], rng)
        if keywords:
            rows.append({"prompt": row["prompt"], "keywords": keywords,
                         "generator_input": generator_message(keywords, template)})
    return rows


def best_worst(scored: pd.DataFrame) -> list[dict[str, Any]]:
    """Sampling-ranking: per prompt, the best and the worst sample by their gap against sample 0
    (score_gap = score(sample) - score(sample 0): 0 for sample 0 itself, whichever scorer) as (chosen,
    rejected) with the difference of their gaps. Ranking by score_a alone would put a reward model's
    absolute scores beside sample 0's fixed 0."""
    pairs: list[dict[str, Any]] = []
    if not len(scored):
        return pairs
    for prompt_id, group in scored.groupby("prompt_id"):
        first = group.iloc[0]
        ranked = [(0.0, str(first["reference"]))] + list(zip(group["score_gap"].astype(float), group["response"].astype(str)))
        ranked.sort(key=lambda item: item[0])
        (low, worst), (high, best) = ranked[0], ranked[-1]
        pairs.append({"prompt_id": prompt_id, "prompt": str(first["prompt"]), "chosen": best, "rejected": worst,
                      "score_a": high, "score_b": low, "score_gap": high - low, "score_error": ""})
    return pairs


def run(cfg: SynpoRun) -> dict[str, Any]:
    run_dir, s = RunDir(cfg.run_dir, cfg.stop_after, cfg.on_empty), cfg.synpo
    initial, initial_dir = cfg.engine.model, resolve_model(cfg.engine.model)
    steps, text = synpo_steps(s), templates()
    judge_engine, judge_dir = engine_for(cfg.engine, s.judge_model or initial)

    # Self-prompt generator: the initial model fine-tuned once on keywords -> seed prompt.
    lineage = Lineage(RECIPE, 0, initial)
    seed_list, holdout_list = split_holdout(seed_pairs(s.seed_data, s.seed_limit),
                                            s.beta_search_holdout if s.beta_search else 0.0, cfg.seed)
    seeds = write_source_stage(run_dir, 0, "seed", seed_list, {"rows": stable_hash(seed_list)}, lineage)
    holdout = write_source_stage(run_dir, 0, "seed-holdout", holdout_list, {"rows": stable_hash(holdout_list)},
                                 lineage) if holdout_list else None
    made = generator_rows(seed_list, s.keywords, text["generate_prompt"], cfg.seed)
    generator_data = write_source_stage(run_dir, 0, "generator-data", made, {"rows": stable_hash(made)}, lineage)
    generator_sft = export_sft(generator_data, run_dir.iteration_dir(0) / "generator-sft", "generator_input", "prompt")
    generator = str(train_model(s.generator_train, Path(str(generator_sft["parquet"])), initial, initial_dir,
                                run_dir.iteration_dir(0), cfg.engine.trust_remote_code, cfg.engine.prompt_format,
                                run_dir.engines.release))
    corpus = s.corpus or [str(CORPUS)]
    pool = run_keyword_pool(run_dir, corpus, s.text_column, s.keywords, cfg.seed, lineage)
    if cfg.eval is not None:
        evaluate(run_dir, 0, initial, cfg.engine, cfg.eval)
    ladder = Ladder(run_dir, cfg, first_champion(run_dir, RECIPE, initial, initial_dir), initial)
    policy, selections, summary = initial, [], {"iterations": []}
    for t in range(1, s.iterations + 1):
        if stopped := ladder.stop():
            summary["stopped"] = stopped
            break
        lineage = Lineage(RECIPE, t, policy)
        keywords = run_keyword_sample(run_dir, t, pool, s.prompts_per_iteration, s.keywords, cfg.seed, lineage)
        generated = run_llm_stage(run_dir, t, steps["generate_prompt"], keywords, *engine_for(cfg.engine, generator),
                                  Lineage(RECIPE, t, generator))
        prompts = run_filter_stage(run_dir, t, "prompt-filter", generated, "prompt", s.prompt_filter, lineage)
        step = {"iteration": t, "funnel": {"synthetic prompts": prompts.rows_out(),
                                           "preference pairs accumulated": 0}}
        summary["iterations"].append(step)
        if s.pair_builder == "seed_po":
            pairs, chosen, rejected = seed_preferences(run_dir, t, seeds, cfg, policy, judge_engine, judge_dir), "gold", "response"
        elif s.pair_builder == "sampling_ranking":
            pairs, chosen, rejected = ranked_pairs(run_dir, t, prompts, cfg, policy, judge_engine, judge_dir), "chosen", "rejected"
        else:
            # Response improver R_t: the initial model trained on seed (prompt, M_{t-1} answer) -> gold,
            # where the scorer rates gold above the answer by the gap (appendix C.2).
            improver_data = seed_preferences(run_dir, t, seeds, cfg, policy, judge_engine, judge_dir)
            improver_sft = export_sft(improver_data, run_dir.iteration_dir(t) / "improver-sft", "prompt", "gold",
                                      user_text=lambda row: improver_message(str(row["prompt"]), str(row["response"]),
                                                                             text["improve"]))
            if not improver_sft["rows"]:
                run_dir.skip_iteration(step, "the scorer passed no seed rows to train the improver on",
                                       f"the policy stays {policy}")
                continue
            improver = str(train_model(s.improver_train, Path(str(improver_sft["parquet"])), initial, initial_dir,
                                       run_dir.iteration_dir(t), cfg.engine.trust_remote_code,
                                       cfg.engine.prompt_format, run_dir.engines.release))
            answers = run_llm_stage(run_dir, t, steps["answer"], prompts, *engine_for(cfg.engine, policy), lineage)
            improved = run_llm_stage(run_dir, t, steps["improve"], answers, *engine_for(cfg.engine, improver), Lineage(RECIPE, t, improver))
            pairs = run_pair_scores(run_dir, t, "pairs", improved, s.scorer, ("prompt", "improved", "response"),
                                    lineage, judge_engine, judge_dir)
            chosen, rejected = "improved", "response"

        selection = run_dir.iteration_dir(t) / "preferences" / "selected.parquet"
        selection.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_parquet(selection, select_pairs(pairs, chosen, rejected, s.pairs_per_iteration, cfg.seed))
        selections.append(selection)
        data = export_preferences(selections, selection.with_name("accumulated.parquet"))
        step["funnel"]["preference pairs accumulated"] = data["rows"]
        run_dir.write_iteration_summary(step)
        if not data["rows"]:
            run_dir.skip_iteration(step, "no preference pairs were kept", f"the policy stays {policy}")
            continue
        model, searched = train_policy(run_dir, t, cfg, Path(data["parquet"]), policy, holdout)
        if searched:
            step["beta_search"] = searched
        texts = [str(p) for p in prompts.read(["prompt"])["prompt"]]
        policy, outcome = ladder.climb(t, model, initial, Path(data["parquet"]), texts)
        step |= outcome
        summary["model"] = step["model"]
        run_dir.write_iteration_summary(step)
    return summary


def split_holdout(rows: list[dict[str, Any]], share: float, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The seed rows the recipe uses, and `share` of them (a seeded draw, at least one, never all) set
    aside; share 0 or fewer than two rows: all rows, none set aside. Both keep the rows' order."""
    if not share or len(rows) < 2:
        return rows, []
    held = set(random.Random(seed).sample(range(len(rows)), min(len(rows) - 1, max(1, round(share * len(rows))))))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def seed_answers(run_dir: RunDir, t: int, seeds: StageDir, cfg: SynpoRun, policy: str, name: str) -> StageDir:
    """M_{t-1}'s one answer to each seed prompt."""
    answer = replace(synpo_steps(cfg.synpo)["answer"], name=name, sampling=cfg.synpo.steps.answer.model_copy(update={"n": 1}))
    return run_llm_stage(run_dir, t, answer, seeds, *engine_for(cfg.engine, policy), Lineage(RECIPE, t, policy))


def seed_preferences(run_dir: RunDir, t: int, seeds: StageDir, cfg: SynpoRun, policy: str,
                     judge_engine: EngineConfig, judge_dir: str) -> StageDir:
    """M_{t-1} answers the seed prompts; rows where the scorer prefers the gold answer by the gap."""
    answers = seed_answers(run_dir, t, seeds, cfg, policy, "seed-answer")
    return run_pair_scores(run_dir, t, "seed-pairs", answers, cfg.synpo.scorer, ("prompt", "gold", "response"),
                           Lineage(RECIPE, t, policy), judge_engine, judge_dir)


def train_policy(run_dir: RunDir, t: int, cfg: SynpoRun, data: Path, policy: str,
                 holdout: StageDir | None) -> tuple[Path, dict[str, Any] | None]:
    """SimPO of the initial model on all synthetic pairs so far (the paper retrains M_0 each time). With
    `synpo.beta_search`: one run per beta, each evaluated on the held-out seed prompts answered by M_{t-1}
    (gold as chosen, the answer as rejected); kept: the model that ranks the most pairs right by SimPO's
    implicit reward (the length-normalised log-likelihood; beta only scales it, so the accuracy compares
    across betas; TRL reports it as the mean of its evaluation batches' shares, exact when the pairs
    fill the batches evenly), the first listed beta on a tie. gamma follows beta, keeping train's
    gamma/beta ratio (SimPO tunes that ratio; TRL's simpo_gamma is the absolute margin). Returns the
    model and what the search found."""
    initial = cfg.engine.model

    def train(train_cfg, eval_data: Path | None = None) -> Path:
        return train_model(train_cfg, data, initial, resolve_model(initial), run_dir.iteration_dir(t),
                           cfg.engine.trust_remote_code, cfg.engine.prompt_format, run_dir.engines.release, eval_data)

    if not cfg.synpo.beta_search or holdout is None:
        return train(cfg.train), None
    answers = seed_answers(run_dir, t, holdout, cfg, policy, "holdout-answer")
    if not answers.rows_out():
        print(f"[beta] iteration {t}: no held-out seed prompt was answered; trained with train.simpo_beta")
        return train(cfg.train), {"skipped": "no validation pairs"}
    validation = run_dir.iteration_dir(t) / "preferences" / "validation.parquet"
    validation.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(validation, select_pairs(answers, "gold", "response", answers.rows_out(), cfg.seed))
    models, accuracy, ratio = {}, {}, cfg.train.simpo_gamma / cfg.train.simpo_beta
    for beta in cfg.synpo.beta_search:
        models[beta] = train(cfg.train.model_copy(update={"simpo_beta": beta, "simpo_gamma": ratio * beta}), validation)
        accuracy[beta] = float(training_summary(models[beta])["train_metrics"]["eval_rewards/accuracies"])
    best = max(cfg.synpo.beta_search, key=lambda beta: accuracy[beta])
    print(f"[beta] iteration {t}: held-out pairs ranked right " + ", ".join(
        f"{accuracy[b]:.0%} at beta {b:g}" for b in cfg.synpo.beta_search) + f"; kept beta {best:g}")
    return models[best], {"beta": best, "validation_pairs": answers.rows_out(),
                          "held_out_accuracy": {f"{b:g}": accuracy[b] for b in cfg.synpo.beta_search}}


def ranked_pairs(run_dir: RunDir, t: int, prompts: StageDir, cfg: SynpoRun, policy: str,
                 judge_engine: EngineConfig, judge_dir: str) -> StageDir:
    """Sampling-ranking baseline: n samples per prompt, each scored against sample 0 with the
    configured scorer, best vs worst kept when their gap passes the threshold."""
    lineage = Lineage(RECIPE, t, policy)
    answers = run_llm_stage(run_dir, t, synpo_steps(cfg.synpo)["answer"], prompts, *engine_for(cfg.engine, policy),
                            lineage)
    frame = answers.read(["id", "parent_id", "sample", "prompt", "response"]).sort_values(["parent_id", "sample"])
    rows = []
    for prompt_id, group in frame.groupby("parent_id"):
        reference = str(group.iloc[0]["response"])
        rows += [{"prompt_id": prompt_id, "prompt": str(r["prompt"]), "response": str(r["response"]),
                  "reference": reference} for r in group.iloc[1:].to_dict("records")]
    versus = write_source_stage(run_dir, t, "ranking-candidates", rows, {"input": answers.name}, lineage)
    unfiltered = cfg.synpo.scorer.model_copy(update={"gap_threshold": -1e9, "max_repetition": None})
    scored = run_pair_scores(run_dir, t, "ranking-scores", versus, unfiltered, ("prompt", "response", "reference"),
                             lineage, judge_engine, judge_dir)
    identity = {"input": scored.name, "scorer": cfg.synpo.scorer.model_dump(mode="json"),
                "repetition_checked": ["chosen", "rejected"]}
    stage = open_stage(run_dir, t, "pairs", identity)
    if not stage.committed:
        frame = pd.DataFrame(best_worst(scored.read()), columns=["prompt_id", "prompt", "chosen", "rejected", "score_a", "score_b",
                                            "score_gap", "score_error"])
        frame["id"] = frame["prompt_id"]
        filter_and_commit(frame, "pairs", str(stage.path), lineage, cfg.synpo.scorer.threshold,
                          cfg.synpo.scorer.max_repetition, ("chosen", "rejected"))
        finish_stage(run_dir, stage, identity, len(frame))
    return stage
