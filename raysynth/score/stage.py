"""Pair scoring as stages: a reward-model actor pool (PairRM, sequence-classification RMs) or the
pairwise LLM judge scores (prompt, A, B) rows; the gap and repetition filters then decide, and kept
and rejected rows (with reasons) go into the stage store. `run_pair_scores` picks by config."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import ray

from raysynth.config import EngineConfig, ScorerConfig
from raysynth.faults import ACTOR_POOL_RETRIES, MachineryFailure
from raysynth.pipeline import (Lineage, commit_decisions, finish_stage, open_stage, run_llm_stage,
                               run_stage, write_source_stage)
from raysynth.score.filters import gap_reason, repetition_reason
from raysynth.steps.judge import combine_pairwise, judge_steps, pairwise_rows
from raysynth.store import RunDir, StageDir


class ScoreActor:
    """Callable class for `map_batches`: adds score_a, score_b, score_gap (= a - b), score_error."""

    def __init__(self, scorer: ScorerConfig, columns: tuple[str, str, str]):
        import torch

        device = "cuda" if scorer.num_gpus > 0 else "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, int(scorer.num_cpus)))
        self.kind, self.columns = scorer.kind, columns
        if scorer.kind == "pairrm":
            from raysynth.score.pairrm import PairRM

            self.model = PairRM(scorer.model, device, source_max_length=scorer.max_length // 2,
                                candidate_max_length=scorer.max_length // 4)
        else:
            from raysynth.score.reward_model import SequenceRewardModel

            self.model = SequenceRewardModel(scorer.model, device, scorer.max_length, scorer.trust_remote_code)

    def _score(self, prompts: list[str], a: list[str], b: list[str]) -> tuple[list[float], list[float]]:
        if self.kind == "pairrm":
            preference = self.model.compare(prompts, a, b)
            return preference, [-p for p in preference]
        return self.model.score(prompts, a), self.model.score(prompts, b)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        prompt, a, b = (batch[c].astype(str).tolist() for c in self.columns)
        n = len(batch)
        score_a, score_b, errors = [float("nan")] * n, [float("nan")] * n, [""] * n
        try:
            score_a, score_b = self._score(prompt, a, b)
        except Exception as first:  # one bad row must not fail the batch: score rows one by one
            for i in range(n):
                try:
                    (score_a[i],), (score_b[i],) = self._score([prompt[i]], [a[i]], [b[i]])
                except Exception as exc:
                    errors[i] = f"score_error: {type(exc).__name__}: {exc}"
            if n > 1 and all(errors):  # the scorer, not the rows: redo the batch (faults.py)
                raise MachineryFailure(f"the scorer failed every row of a batch of {n}: "
                                       f"{type(first).__name__}: {first}"[:500]) from first
        batch = batch.copy()
        batch["score_a"], batch["score_b"], batch["score_error"] = score_a, score_b, errors
        batch["score_gap"] = batch["score_a"] - batch["score_b"]
        return batch


def filter_and_commit(batch: pd.DataFrame, name: str, stage_dir: str, lineage: Lineage, threshold: float,
                      max_repetition: float | None, response_columns: tuple[str, str]) -> pd.DataFrame:
    """Keep a pair when its gap passes and neither response is repetitive (both sides of a preference
    pair are training text: a repetitive rejected answer teaches as much noise as a chosen one)."""
    rows = batch.to_dict("records")
    reasons = []
    for row in rows:
        reason = "score_error" if row["score_error"] else gap_reason(row["score_gap"], threshold)
        for column in response_columns if max_repetition is not None else ():
            reason = reason or repetition_reason(str(row[column]), max_repetition)
        reasons.append(reason)
    raws = [row["score_error"] or str(row[response_columns[0]]) for row in rows]
    scores = [{k: row[k] for k in ("score_a", "score_b", "score_gap")} for row in rows]
    kept = commit_decisions(StageDir(stage_dir), name, lineage, rows, reasons, raws, scores)
    return pd.DataFrame([{"rows_in": len(rows), "rows_out": kept}])


def run_score_stage(run: RunDir, iteration: int, name: str, source: StageDir, scorer: ScorerConfig,
                    columns: tuple[str, str, str], lineage: Lineage) -> StageDir:
    """Score `columns` = (prompt, response A, response B) of every source row; keep rows whose
    gap passes the threshold and neither of whose responses is repetitive; reject the rest with reasons."""
    identity = {"scorer": scorer.model_dump(mode="json"), "columns": list(columns), "input": source.name,
                "repetition_checked": list(columns[1:])}

    def add_ops(ds, stage: StageDir):
        run.engines.release()  # the reward model's actors need the CPUs / GPUs the kept engines hold
        ds = ds.map_batches(ScoreActor, batch_format="pandas", batch_size=scorer.batch_size,
                            compute=ray.data.ActorPoolStrategy(min_size=scorer.concurrency[0],
                                                               max_size=scorer.concurrency[1]),
                            num_cpus=scorer.num_cpus, num_gpus=scorer.num_gpus, **ACTOR_POOL_RETRIES,
                            fn_constructor_kwargs={"scorer": scorer, "columns": columns})
        return ds.map_batches(filter_and_commit, batch_format="pandas", batch_size=None, num_cpus=0.25,
                              fn_kwargs={"name": name, "stage_dir": str(stage.path), "lineage": lineage,
                                         "threshold": scorer.threshold, "max_repetition": scorer.max_repetition,
                                         "response_columns": columns[1:]})

    return run_stage(run, iteration, name, identity, source, scorer.batch_size, f"{lineage.recipe}/{name}",
                      add_ops)


JUDGE_SCORE = {"a": 1.0, "tie": 0.0, "b": -1.0}


def run_pair_scores(run: RunDir, iteration: int, name: str, source: StageDir, scorer: ScorerConfig,
                    columns: tuple[str, str, str], lineage: Lineage, engine: EngineConfig | None = None,
                    model_dir: str | None = None) -> StageDir:
    """Score with the scorer the config names; recipes call this, so switching needs no code.

    llm_judge judges each pair in both orders on the vLLM stage (`engine`, `model_dir`), then
    score_a = +1 / 0 / -1 for an agreed win / a tie / an agreed loss, score_b = -score_a.
    """
    if scorer.kind != "llm_judge":
        return run_score_stage(run, iteration, name, source, scorer, columns, lineage)
    if engine is None or model_dir is None:
        raise ValueError("the llm_judge scorer needs the engine and model to judge with")
    prompt, a, b = columns
    rows = source.read()
    pairs = [{"pair_id": r["id"], "instruction": r[prompt], "a": r[a], "b": r[b]} for r in rows.to_dict("records")]
    shown = write_source_stage(run, iteration, f"{name}-orders", pairwise_rows(pairs),
                               {"input": source.name, "columns": list(columns)}, lineage)
    step = replace(judge_steps(scorer.judge)["pairwise"], name=f"{name}-judge")
    verdicts = run_llm_stage(run, iteration, step, shown, engine, model_dir, lineage)

    identity = {"scorer": scorer.model_dump(mode="json"), "columns": list(columns), "verdicts": verdicts.name,
                "repetition_checked": [a, b]}
    stage = open_stage(run, iteration, name, identity)
    if stage.committed:
        return stage
    winners = dict(combine_pairwise(verdicts.read(["pair_id", "order", "judge_winner"])).values.tolist())
    frame = rows.copy()
    if len(frame):  # an empty source (every row dropped before) has no columns to add to
        outcome = frame["id"].map(lambda i: winners.get(i, "incomplete"))
        frame["score_a"] = outcome.map(lambda w: JUDGE_SCORE.get(w, float("nan")))
        frame["score_b"] = -frame["score_a"]
        frame["score_gap"] = frame["score_a"] - frame["score_b"]
        frame["score_error"] = outcome.map(lambda w: "" if w in JUDGE_SCORE else "judge verdict missing in an order")
    filter_and_commit(frame, name, str(stage.path), lineage, scorer.threshold, scorer.max_repetition, (a, b))
    return finish_stage(run, stage, identity, len(rows))
