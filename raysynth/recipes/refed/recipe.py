"""Reference-level feedback (REFED, Mehri et al. 2025), its figure 2:

  curated reference samples (instruction, response)
  --> instruction feedback (subject areas, skills) and response feedback (strengths, improvements),
      collected once per reference and stored                                            [iter-00]
  --> per reference and instruction feature: one request for 10 new, distinct instructions of similar
      complexity and length, steered by that feature
      [--> ROUGE-L diversity selection]
  --> a one-shot answer to each, the reference pair as the example
  --> the answer improved with the reference's response feedback, keeping the points that apply
      (analysis, strategy, improved response)
      [--> judge: kept when the improved response beats the original in both orders]
  --> SFT of the student (`student_model`, default the synthesizer) on (instruction, improved
      response) --> evaluated against the student before training                         [iter-01]

Ablations (`refed.feedback`): instruction_only (no improvement), sample (feedback written on each
answer instead of the reference's); the seed-only baseline (`refed.training_data: references`) trains
on the references alone. `iter-01/iteration.json` holds the funnel and the JSON repair,
failure and judge keep rates for the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raysynth.eval import evaluate
from raysynth.export import export_sft
from raysynth.hashing import stable_hash
from raysynth.models import engine_for, resolve_model
from raysynth.pipeline import Lineage, run_llm_stage, write_source_stage
from raysynth.promotion import Ladder, first_champion
from raysynth.recipes.refed.config import RefedRun
from raysynth.recipes.refed.steps import refed_steps
from raysynth.score.filter_stage import run_filter_stage
from raysynth.score.stage import run_pair_scores
from raysynth.shipped import seed_pairs
from raysynth.store import RunDir, StageDir
from raysynth.train import train_model

RECIPE = "refed"
FEEDBACK_COLUMNS = ("subject_areas", "skills", "strengths", "improvements")


def reference_rows(path: Path | None, limit: int | None) -> list[dict[str, Any]]:
    """References as (ref_prompt, ref_output): Alpaca rows or prompt/response rows (the default is the
    Alpaca slice shipped with raysynth)."""
    return [{"reference": i, "ref_prompt": row["prompt"], "ref_output": row["gold"]}
            for i, row in enumerate(seed_pairs(path, limit))]


def synthesis_requests(feedback: StageDir, features: list[str]) -> list[dict[str, Any]]:
    """One request per (reference, instruction feature), carrying the reference and its feedback."""
    frame = feedback.read()
    if not len(frame):  # no reference got usable feedback
        return []
    columns = ["reference", "ref_prompt", "ref_output", *[c for c in FEEDBACK_COLUMNS if c in frame.columns]]
    rows = frame[columns].sort_values("reference", kind="stable").to_dict("records")

    def plain(key: str, value: Any) -> Any:  # Parquet gives numpy arrays and integers: JSON-able values
        if key in FEEDBACK_COLUMNS:
            return [str(v) for v in value]
        return int(value) if key == "reference" else str(value)

    return [{**{k: plain(k, row[k]) for k in columns}, "feature": feature} for row in rows for feature in features]


def json_rates(stage: StageDir, label: str) -> dict[str, float]:
    """Shares of a JSON step's replies that needed repair and that were unusable even so."""
    manifest = stage.manifest()
    total = max(1, manifest["rows_in"])
    repaired = int(stage.read(["json_repaired"])["json_repaired"].sum()) if manifest["rows_out"] else 0
    return {f"{label} JSON repaired": repaired / total,
            f"{label} JSON unusable": sum(n for reason, n in manifest["rejected"].items()  # + "_truncated"
                                          if reason.startswith("unusable_json")) / total}


def run(cfg: RefedRun) -> dict[str, Any]:
    run_dir, r = RunDir(cfg.run_dir, cfg.stop_after, cfg.on_empty), cfg.refed
    start, (engine, model_dir) = cfg.engine.model, engine_for(cfg.engine, cfg.engine.model)
    student = cfg.student_model or start  # the paper's student learns from a teacher's synthesis
    steps = refed_steps(r)

    # Feedback, once per reference: iteration 0, reused by any synthesis on the same references.
    lineage = Lineage(RECIPE, 0, start)
    refs = reference_rows(r.references, r.reference_limit)
    references = write_source_stage(run_dir, 0, "references", refs, {"rows": stable_hash(refs)}, lineage)
    if r.training_data == "references":  # the paper's seed-only baseline: no synthesis at all
        if cfg.eval is not None:
            evaluate(run_dir, 0, student, cfg.engine, cfg.eval)
        export = export_sft(references, run_dir.iteration_dir(1) / "sft", "ref_prompt", "ref_output")
        step = {"iteration": 1, "funnel": {"references": len(refs), "trained on": export["rows"]}, "rates": {}}
        return train_and_evaluate(cfg, run_dir, export, step, student, [ref["ref_prompt"] for ref in refs])
    feedback = run_llm_stage(run_dir, 0, steps["instruction_feedback"], references, engine, model_dir, lineage)
    funnel = {"references": len(refs), "with instruction feedback": feedback.rows_out()}
    rates = json_rates(feedback, "instruction feedback")
    if r.feedback == "reference":
        feedback = run_llm_stage(run_dir, 0, steps["reference_feedback"], feedback, engine, model_dir, lineage)
        funnel["with response feedback"] = feedback.rows_out()
        rates |= json_rates(feedback, "response feedback")
    if cfg.eval is not None:
        evaluate(run_dir, 0, student, cfg.engine, cfg.eval)

    lineage = Lineage(RECIPE, 1, start)
    rows = synthesis_requests(feedback, r.features)
    requests = write_source_stage(run_dir, 1, "requests", rows, {"input": feedback.name, "features": r.features}, lineage)
    instructions = run_llm_stage(run_dir, 1, steps["generate"], requests, engine, model_dir, lineage)
    funnel["new instructions"] = instructions.rows_out()
    if r.diversity_filter is not None:
        instructions = run_filter_stage(run_dir, 1, "diversity", instructions, "instruction", r.diversity_filter, lineage)
        funnel["kept by diversity selection"] = instructions.rows_out()
    final = run_llm_stage(run_dir, 1, steps["answer"], instructions, engine, model_dir, lineage)
    funnel["answered"], response_column = final.rows_out(), "response"
    if r.feedback != "instruction_only":
        if r.feedback == "sample":
            final = run_llm_stage(run_dir, 1, steps["sample_feedback"], final, engine, model_dir, lineage)
            funnel["with sample feedback"] = final.rows_out()
            rates |= json_rates(final, "sample feedback")
        final = run_llm_stage(run_dir, 1, steps["improve"], final, engine, model_dir, lineage)
        funnel["improved"], response_column = final.rows_out(), "improved"
        rates |= json_rates(final, "improvement")
        if r.judge_filter:
            judged = run_pair_scores(run_dir, 1, "judge", final, r.judge, ("instruction", "improved", "response"),
                                     lineage, *engine_for(cfg.engine, r.judge_model or start))
            rates["judge keep rate"] = judged.rows_out() / max(1, final.rows_out())
            final = judged
            funnel["kept by judge"] = final.rows_out()

    export = export_sft(final, run_dir.iteration_dir(1) / "sft", "instruction", response_column,
                        extra_columns=("ref_prompt",))
    step: dict[str, Any] = {"iteration": 1, "funnel": funnel | {"trained on": export["rows"]}, "rates": rates}
    texts = [str(i) for i in instructions.read(["instruction"])["instruction"]]
    return train_and_evaluate(cfg, run_dir, export, step, student, texts)


def train_and_evaluate(cfg: RefedRun, run_dir: RunDir, export: dict[str, Any], step: dict[str, Any], student: str,
                       texts: list[str]) -> dict[str, Any]:
    """SFT of the student on the export, registered as iteration 1's candidate and evaluated against the
    student before training, the first champion (`texts`: the instructions it learnt from, for the
    diversity figures)."""
    if cfg.train is not None and not export["rows"]:
        run_dir.skip_iteration(step, "no sample was kept to train on", f"the model stays {student}")
    run_dir.write_iteration_summary(step)
    summary = {**export, "iterations": [step]}
    if cfg.train is not None and export["rows"]:
        data, student_dir = Path(str(export["parquet"])), resolve_model(student)
        trained = train_model(cfg.train, data, student, student_dir, run_dir.iteration_dir(1),
                              cfg.engine.trust_remote_code, cfg.engine.prompt_format, run_dir.engines.release)
        ladder = Ladder(run_dir, cfg, first_champion(run_dir, RECIPE, student, student_dir), student)
        step |= ladder.climb(1, trained, student, data, texts)[1]
        summary["model"] = step["model"]
        run_dir.write_iteration_summary(step)
    return summary
