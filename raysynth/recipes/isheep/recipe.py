"""I-SHEEP (arXiv 2408.08072), its algorithm 1:

  seed tasks (175, Self-Instruct)
  iteration t = 1..T, with M_{t-1} (M_0 = the base model) doing every step:
    in-context generation: sampled seed tasks -> a new instruction (+ input)
    Self-Instruct's heuristic filters + ROUGE-L novelty against the seeds and kept instructions
    M_{t-1} answers each instruction zero-shot
    self-assessment: M_{t-1} scores quality and instruction following 1-10; unparseable dropped
    pairs below the threshold (8) dropped      [optional: perplexity / density filters]
    SFT: the base model on this iteration's data (One_base; or One_last / Total_base) --> M_t
    evaluate M_t against M_0; register M_t as the run's current model

Each iteration writes `iter-NN/iteration.json` (the data funnel and score histograms) for the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raysynth.eval import evaluate
from raysynth.export import export_sft
from raysynth.hashing import stable_hash
from raysynth.models import engine_for
from raysynth.pipeline import Lineage, run_decision_stage, run_llm_stage, write_source_stage
from raysynth.promotion import Ladder, first_champion
from raysynth.recipes.isheep.config import ISheepRun
from raysynth.recipes.isheep.self_stats import data_filter_reasons, run_self_stats_stage
from raysynth.recipes.isheep.steps import ASPECTS, generation_requests, isheep_steps, threshold_reason
from raysynth.score.filter_stage import run_filter_stage
from raysynth.shipped import seed_tasks
from raysynth.store import RunDir, StageDir, atomic_write_parquet
from raysynth.train import train_model

RECIPE = "isheep"


def score_histograms(assessed: StageDir, level: str) -> dict[str, dict[str, int]]:
    """Counts of each self-assessed score (1-10), per assessed aspect."""
    if not ASPECTS[level]:
        return {}
    frame = assessed.read([f"{a}_score" for a in ASPECTS[level]])
    return {aspect: {str(s): int((frame[f"{aspect}_score"] == s).sum()) for s in range(1, 11)}
            for aspect in ASPECTS[level]}


def accumulate_sft(files: list[Path], out: Path) -> Path:
    """All iterations' SFT rows in one file (the Total_base setting)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(out, pa.concat_tables([pq.read_table(f) for f in files]))
    return out


def run(cfg: ISheepRun) -> dict[str, Any]:
    run_dir, s = RunDir(cfg.run_dir, cfg.stop_after, cfg.on_empty), cfg.isheep
    base = cfg.engine.model
    steps = isheep_steps(s)
    tasks = seed_tasks(s.seed_tasks)
    if cfg.eval is not None:
        evaluate(run_dir, 0, base, cfg.engine, cfg.eval)
    ladder = Ladder(run_dir, cfg, first_champion(run_dir, RECIPE, base, engine_for(cfg.engine, base)[1]), base)
    model, sft_files, summary = base, [], {"iterations": []}
    for t in range(1, s.iterations + 1):
        if stopped := ladder.stop():
            summary["stopped"] = stopped
            break
        lineage, (engine, model_dir) = Lineage(RECIPE, t, model), engine_for(cfg.engine, model)
        requests = generation_requests(tasks, s.instructions_per_iteration, s.icl_examples, cfg.seed, t)
        asked = write_source_stage(run_dir, t, "requests", requests, {"rows": stable_hash(requests)}, lineage)
        generated = run_llm_stage(run_dir, t, steps["generate"], asked, engine, model_dir, lineage)
        novel = run_filter_stage(run_dir, t, "instruction-filter", generated, "instruction", s.instruction_filter,
                                 lineage, reference=[task["instruction"] for task in tasks])
        answers = run_llm_stage(run_dir, t, steps["answer"], novel, engine, model_dir, lineage)
        funnel = {"requests": len(requests), "instructions parsed": generated.rows_out(),
                  "kept by instruction filter": novel.rows_out(), "answered": answers.rows_out()}
        kept, histograms = answers, {}
        if s.assessment.level != "none":
            assessed = run_llm_stage(run_dir, t, steps["assess"], answers, engine, model_dir, lineage)
            kept = run_decision_stage(
                run_dir, t, "score-filter", {"assessment": s.assessment.model_dump(mode="json"), "input": assessed.name},
                assessed, lambda frame: [threshold_reason(row, s.assessment) for row in frame.to_dict("records")],
                "assessment", lineage, extra_columns=("quality_score", "following_score"))
            funnel |= {"assessed": assessed.rows_out(), "kept by score threshold": kept.rows_out()}
            histograms = score_histograms(assessed, s.assessment.level)
        if s.data_filter.kind != "none":
            stats = run_self_stats_stage(run_dir, t, "self-stats", kept, model, model_dir, s.data_filter, lineage,
                                         cfg.engine.trust_remote_code, cfg.engine.prompt_format)
            kept = run_decision_stage(
                run_dir, t, "data-filter", {"filter": s.data_filter.model_dump(mode="json"), "input": stats.name,
                                            "seed": cfg.seed},
                stats, lambda frame: data_filter_reasons(frame, s.data_filter, cfg.seed), "response", lineage,
                extra_columns=("perplexity",))
            funnel |= {"kept by data filter": kept.rows_out()}

        export = export_sft(kept, run_dir.iteration_dir(t) / "sft", "prompt", "response",
                            extra_columns=("instruction", "input"))
        sft_files.append(Path(str(export["parquet"])))
        step = {"iteration": t, "generated_by": model, "funnel": funnel | {"trained on": export["rows"]},
                "histograms": histograms}
        summary["iterations"].append(step)
        run_dir.write_iteration_summary(step)
        if not export["rows"]:
            run_dir.skip_iteration(step, "no pair was kept", f"the model stays {model}")
            continue
        # One_base (paper): the base model on this iteration's data; One_last: the last model on it;
        # Total_base: the base model on every iteration's data so far.
        data = sft_files[-1]
        if s.training_setting == "total_base":
            data = accumulate_sft(sft_files, run_dir.iteration_dir(t) / "sft-accumulated" / "sft.parquet")
        start = model if s.training_setting == "one_last" else base
        trained = train_model(cfg.train, data, start, engine_for(cfg.engine, start)[1], run_dir.iteration_dir(t),
                              cfg.engine.trust_remote_code, cfg.engine.prompt_format, run_dir.engines.release)
        texts = [str(i) for i in kept.read(["instruction"])["instruction"]]
        model, outcome = ladder.climb(t, trained, start, data, texts)
        step |= outcome
        summary["model"] = step["model"]
        run_dir.write_iteration_summary(step)
    return summary
