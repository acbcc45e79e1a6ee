"""Evaluation of one model in a run: IFEval accuracies, judged win rate against a baseline model
(in a recipe: the champion it challenges), diversity of synthetic texts. Every rate has a bootstrap
95% interval (eval/stats.py); against a baseline, the IFEval differences are paired by prompt.

The win-rate judge is never the model being evaluated: `eval.judge_model`, `eval.judge_endpoint`, or
a model frozen for the whole run (a recipe passes its initial model; `raysynth eval`, the baseline).

Generation and judging are ordinary stages of the run (`iter-NN/eval-*`), so they are resumable,
show in `raysynth status`, and the baseline's answers are generated once and reused. The result
is written to `<run-dir>/eval/iter-NN.json`, which `raysynth report` plots.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from raysynth.config import EngineConfig, EvalConfig, ScorerConfig
from raysynth.eval.diversity import diversity
from raysynth.eval.ifeval import check_response, load_ifeval
from raysynth.eval.stats import difference, rate, ratio
from raysynth.hashing import stable_hash
from raysynth.models import engine_for
from raysynth.pipeline import Lineage, run_llm_stage, write_source_stage
from raysynth.score.stage import run_score_stage
from raysynth.shipped import read_jsonl
from raysynth.steps.eval import respond_step
from raysynth.steps.judge import combine_pairwise, judge_steps, pairwise_rows, picked_first_shown
from raysynth.store import RunDir, atomic_write_json

# Win rate counts a tie as half a win (AlpacaEval's convention).
OUTCOME_VALUE = {"a": 1.0, "tie": 0.5, "b": 0.0}


def eval_path(run: RunDir, iteration: int) -> Path:
    return run.path / "eval" / f"iter-{iteration:02d}.json"


def _answers(run: RunDir, iteration: int, prompts, model: str, engine: EngineConfig,
             cfg: EvalConfig) -> dict[str, str]:
    """Answers of `model` to the prompt stage's rows, by prompt key; rows the engine rejected
    (e.g. a prompt longer than the context) answer with ''."""
    stage = run_llm_stage(run, iteration, respond_step(cfg.generation), prompts, *engine_for(engine, model),
                          Lineage("eval", iteration, model))
    answers = {str(k): "" for k in prompts.read(["key"])["key"]}
    answers.update({str(k): r for k, r in stage.read(["key", "response"]).values.tolist()})
    return answers


def ifeval_verdicts(rows: list[dict[str, Any]], answers: dict[str, str]) -> list[dict[str, Any]]:
    return [check_response(row, answers.get(str(row["key"]), "")) for row in rows]


def ifeval_metrics(verdicts: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    return {
        "prompt_strict": rate([v["prompt_strict"] for v in verdicts], seed),
        "prompt_loose": rate([v["prompt_loose"] for v in verdicts], seed),
        "instruction_strict": ratio([sum(v["strict"]) for v in verdicts], [len(v["strict"]) for v in verdicts], seed),
        "instruction_loose": ratio([sum(v["loose"]) for v in verdicts], [len(v["loose"]) for v in verdicts], seed),
    }


def paired_ifeval(verdicts: list[dict[str, Any]], baseline_verdicts: list[dict[str, Any]],
                  seed: int) -> dict[str, Any]:
    """Per-prompt differences (this model minus the baseline) of the prompt-level verdicts."""
    return {metric: difference([v[metric] for v in verdicts], [v[metric] for v in baseline_verdicts], seed)
            for metric in ("prompt_strict", "prompt_loose")}


def judge_engine(engine: EngineConfig, cfg: EvalConfig, frozen: str) -> tuple[EngineConfig, str, str]:
    """(engine, model dir, model name) of the judge: an endpoint, `eval.judge_model`, or `frozen`."""
    if cfg.judge_endpoint is not None:
        return engine.model_copy(update={"endpoint": cfg.judge_endpoint}), "", cfg.judge_endpoint.model
    name = cfg.judge_model or frozen
    return *engine_for(engine, name), name


def win_rate(run: RunDir, iteration: int, prompts: dict[str, str], answers: dict[str, str],
             baseline_answers: dict[str, str], engine: EngineConfig, cfg: EvalConfig, judge: str) -> dict[str, Any]:
    """Pairwise judge, both orders: a = this model, b = the baseline; a win needs both orders to agree.
    With `eval.judge_scorer`, a reward model scores each pair instead (`scored_outcomes`)."""
    pairs = [{"pair_id": key, "instruction": prompts[key], "a": answers[key], "b": baseline_answers[key]}
             for key in sorted(prompts) if key in answers and key in baseline_answers]
    bias: dict[str, Any] = {}  # the LLM judge's position habit
    if cfg.judge_scorer is not None:
        judge_name = f"{cfg.judge_scorer.kind}:{cfg.judge_scorer.model}"
        outcomes = scored_outcomes(run, iteration, pairs, cfg.judge_scorer, Lineage("eval", iteration, judge_name))
    else:
        judge_config, judge_dir, judge_name = judge_engine(engine, cfg, judge)
        lineage = Lineage("eval", iteration, judge_name)
        shown = write_source_stage(run, iteration, "eval-winrate-pairs", pairwise_rows(pairs),
                                   {"pairs": stable_hash(pairs)}, lineage)
        step = replace(judge_steps(cfg.judge)["pairwise"], name="eval-winrate-judge")
        verdicts = run_llm_stage(run, iteration, step, shown, judge_config, judge_dir, lineage)
        judged = verdicts.read(["pair_id", "order", "judge_winner"])
        outcomes = combine_pairwise(judged)
        bias["picked_first_shown"] = rate(picked_first_shown(judged), cfg.seed)
    decided = [OUTCOME_VALUE[w] for w in outcomes["winner"] if w in OUTCOME_VALUE]
    counts = {w: int((outcomes["winner"] == w).sum()) for w in ("a", "tie", "b", "incomplete")}
    counts["incomplete"] += len(pairs) - len(outcomes)  # both verdicts of the pair unparseable
    method = "reward-model score gap" if cfg.judge_scorer is not None else "both orders"
    return {"win_rate": rate(decided, cfg.seed), "judge": judge_name, "method": method,
            "wins": counts["a"], "ties": counts["tie"], "losses": counts["b"], "incomplete": counts["incomplete"],
            **bias}


def scored_outcomes(run: RunDir, iteration: int, pairs: list[dict[str, Any]], scorer: ScorerConfig,
                    lineage: Lineage) -> pd.DataFrame:
    """`pair_id, winner` by a reward model: "a" when score(a) - score(b) reaches the scorer's gap
    threshold, "b" when it reaches it the other way, else "tie"; a pair the scorer failed on is missing
    (counted incomplete). Every pair is scored (no gap or repetition filter): the verdict is the point."""
    source = write_source_stage(run, iteration, "eval-winrate-scored-pairs", pairs, {"pairs": stable_hash(pairs)},
                                lineage)
    keep_all = scorer.model_copy(update={"gap_threshold": -1e30, "max_repetition": None})
    scored = run_score_stage(run, iteration, "eval-winrate-scores", source, keep_all, ("instruction", "a", "b"), lineage)
    frame = scored.read(["pair_id", "score_gap"]) if scored.rows_out() else pd.DataFrame(columns=["pair_id", "score_gap"])
    margin = scorer.threshold
    winner = ["a" if gap >= margin else "b" if gap <= -margin else "tie" for gap in frame["score_gap"].astype(float)]
    return pd.DataFrame({"pair_id": frame["pair_id"], "winner": winner})


def _winrate_prompts(path: Path) -> list[dict[str, Any]]:
    return [{"key": str(i), "prompt": r.get("prompt") or r["instruction"]} for i, r in enumerate(read_jsonl(path))]


def evaluate(run: RunDir, iteration: int, model: str, engine: EngineConfig, cfg: EvalConfig,
             baseline: str | None = None, texts: list[str] | None = None, baseline_iteration: int = 0,
             judge: str | None = None) -> dict[str, Any]:
    """Evaluate `model` as iteration `iteration` of `run`: against `baseline` (the model as evaluated at
    `baseline_iteration`, whose answers are reused) the judged win rate and the paired IFEval
    differences; `judge` (default: the baseline) is the frozen model that judges when `eval.judge_model`,
    `eval.judge_endpoint` and `eval.judge_scorer` are unset; `texts` (this iteration's synthetic data) for diversity.
    Writes eval/iter-NN.json."""
    # Its stages measure: a judge that parses no verdict is a result (counted as incomplete), never a
    # reason to stop the run, whatever the run's on_empty says.
    run = RunDir(run.path, run.stop_after, on_empty="continue", engines=run.engines)
    rows = load_ifeval(cfg.ifeval, cfg.limit)
    lineage = Lineage("eval", iteration, model)
    prompt_rows = [{"key": str(r["key"]), "prompt": r["prompt"]} for r in rows]
    prompts = write_source_stage(run, iteration, "eval-ifeval-prompts", prompt_rows,
                                 {"rows": stable_hash(prompt_rows)}, lineage)
    answers = _answers(run, iteration, prompts, model, engine, cfg)
    verdicts = ifeval_verdicts(rows, answers)
    result: dict[str, Any] = {"iteration": iteration, "model": model, "ifeval": ifeval_metrics(verdicts, cfg.seed),
                              "ifeval_prompts": len(rows),
                              "generation": cfg.generation.model_dump()}
    if baseline is not None and baseline != model:
        theirs = _answers(run, baseline_iteration, prompts, baseline, engine, cfg)
        result["paired"] = {"baseline": baseline, "baseline_iteration": baseline_iteration,
                            "ifeval": paired_ifeval(verdicts, ifeval_verdicts(rows, theirs), cfg.seed)}
        if cfg.winrate:
            judge = judge or baseline
            if cfg.winrate_prompts is None:
                held_out = {r["key"]: r["prompt"] for r in prompt_rows}
                ours = answers
            else:
                extra = _winrate_prompts(cfg.winrate_prompts)
                held_out = {r["key"]: r["prompt"] for r in extra}
                source = write_source_stage(run, iteration, "eval-winrate-prompts", extra,
                                            {"rows": stable_hash(extra)}, lineage)
                ours, theirs = (_answers(run, iteration, source, model, engine, cfg),
                                _answers(run, baseline_iteration, source, baseline, engine, cfg))
            result["winrate"] = {"baseline": baseline,
                                 **win_rate(run, iteration, held_out, ours, theirs, engine, cfg, judge)}
    if texts:
        result["diversity"] = diversity(texts, cfg.seed, cfg.diversity_group, embedding_model=cfg.embedding_model)
    path = eval_path(run, iteration)
    previous = json.loads(path.read_text()) if path.is_file() else {}
    if previous.get("model") == model:  # e.g. `raysynth eval` again: keep what this call did not measure
        result = {**{k: v for k, v in previous.items() if k in ("winrate", "paired", "diversity")}, **result}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    return result
