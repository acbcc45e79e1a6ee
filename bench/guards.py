"""Structured outputs on the embedded model, three ways, for each step whose grammar the small-model
guards change (Condor's question, critique and refine, I-SHEEP's instruction generation and
self-assessment: `small_model_guards`; REFED's improvement record: `max_list_items`), in one run:

  guarded     the grammar holds the markers and the content (one line, capital first letter, no
              brackets, length caps): `small_model_guards: true` / `max_list_items: 5`, the defaults
  markers     the grammar holds only the markers (or the JSON shape) the parser needs:
              `small_model_guards: false` / `max_list_items: null`, as in jobs/*.yaml
  free+retry  no grammar; the inputs whose reply did not parse are asked once more with the guarded
              grammar (measured here; not a mode of the pipeline)

Every way answers the same fixed inputs (made once beforehand: Condor requests drawn from the shipped
tag tree x the seven task types, answers and critiques made with the guarded steps, I-SHEEP requests
from the seed tasks and its assessments of the shipped Alpaca pairs' answers, REFED improvements of the
shipped references' answers with the guarded feedback written on them). Per step and way: the parse
rate (inputs with a parsed reply, bootstrap 95% interval), generated tokens/s (the stage's tokens over its seconds, Ray Data included), and seconds
per parsed input, the cost a default should minimise. Before any measured stage the engine is loaded
and each way's step runs once on one input (untimed), so no grammar is compiled in a measured stage.

    .venv/bin/python bench/guards.py [--rows 16] [--steps isheep/assess,refed/improve]
                                     [--out bench/results-guards.txt]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from raysynth.config import EngineConfig
from raysynth.eval.stats import rate
from raysynth.hashing import stable_hash
from raysynth.models import resolve_model
from raysynth.pipeline import Lineage, carried_columns, init_ray, run_llm_stage, write_source_stage
from raysynth.recipes.condor.config import CONDOR_TASK_TYPES, CondorConfig
from raysynth.recipes.condor.recipe import example_questions, load_tag_tree, tag_task_rows
from raysynth.recipes.condor.steps import condor_steps
from raysynth.recipes.isheep.config import ISheepConfig
from raysynth.recipes.isheep.steps import generation_requests, isheep_steps
from raysynth.recipes.refed.config import RefedConfig
from raysynth.recipes.refed.recipe import reference_rows
from raysynth.recipes.refed.steps import refed_steps
from raysynth.shipped import seed_pairs, seed_tasks
from raysynth.steps import LLMStep
from raysynth.store import RunDir, StageDir

MODEL = "smollm2-135m"
LINEAGE = Lineage("bench", 1, MODEL)
WAYS = ("guarded", "markers", "free+retry")


def format_steps(guards: bool) -> dict[str, LLMStep]:
    condor = condor_steps(CondorConfig(small_model_guards=guards))
    isheep = isheep_steps(ISheepConfig(small_model_guards=guards))
    return {"condor/question": condor["question"], "condor/critique": condor["critique"],
            "condor/refine": condor["refine"], "isheep/generate": isheep["generate"], "isheep/assess": isheep["assess"],
            "refed/improve": refed_steps(RefedConfig(max_list_items=5 if guards else None))["improve"]}


def named(step: LLMStep, way: str, structured: bool = True) -> LLMStep:
    return replace(step, name=f"{step.name}-{way.replace('+', '-')}",
                   sampling=step.sampling.model_copy(update={"structured": structured}))


def source_of(run: RunDir, name: str, rows: list[dict[str, Any]]) -> StageDir:
    """A source stage of `rows` (their own columns: the lineage and engine columns of a stage they were
    read from dropped)."""
    rows = [carried_columns(row) for row in rows]
    return write_source_stage(run, 1, name, rows, {"rows": stable_hash(rows)}, LINEAGE)


class Bench:
    def __init__(self, run: RunDir, engine: EngineConfig):
        self.run, self.engine, self.model_dir = run, engine, resolve_model(MODEL)

    def stage(self, step: LLMStep, source: StageDir) -> StageDir:
        return run_llm_stage(self.run, 1, step, source, self.engine, self.model_dir, LINEAGE)

    def inputs(self, rows: int, seed: int, wanted: list[str]) -> dict[str, StageDir]:
        """The fixed inputs of each wanted step, made with the guarded steps (untimed)."""
        guarded, made = format_steps(True), {}
        if any(key.startswith("condor/") for key in wanted):
            requests = tag_task_rows(load_tag_tree(None), CONDOR_TASK_TYPES, None, seed, example_questions(None), 3)
            requests = random.Random(seed).sample(requests, rows)
            questions = self.stage(named(guarded["condor/question"], "prep"),
                                   source_of(self.run, "prep-requests", requests))
            answer = condor_steps(CondorConfig())["answer"]
            first = questions.read().sort_values("id").head(rows).to_dict("records")
            answers = self.stage(replace(answer, name="answer-prep"), source_of(self.run, "prep-questions", first))
            critiques = self.stage(named(guarded["condor/critique"], "prep"), answers)
            made |= {"condor/question": source_of(self.run, "in-question", requests),
                     "condor/critique": source_of(self.run, "in-critique", answers.read().to_dict("records")),
                     "condor/refine": source_of(self.run, "in-refine", critiques.read().to_dict("records")[:rows])}
        tasks = seed_tasks(None)
        made["isheep/generate"] = source_of(self.run, "in-generate",
                                            generation_requests(tasks, rows, ISheepConfig().icl_examples, seed, 1))
        made["isheep/assess"] = source_of(self.run, "in-assess", [
            {"prompt": pair["prompt"], "response": pair["gold"]} for pair in seed_pairs(None, rows)])
        if "refed/improve" in wanted:
            feedback = self.stage(replace(refed_steps(RefedConfig())["reference_feedback"], name="feedback-prep"),
                                  source_of(self.run, "prep-references", reference_rows(None, rows)))
            made["refed/improve"] = source_of(self.run, "in-improve", [
                {"instruction": row["ref_prompt"], "response": row["ref_output"],
                 "strengths": [str(v) for v in row["strengths"]], "improvements": [str(v) for v in row["improvements"]]}
                for row in feedback.read().to_dict("records")])
        return {key: made[key] for key in wanted}

    def measure(self, step: LLMStep, source: StageDir, retry: LLMStep | None) -> dict[str, Any]:
        """One way on one step: per input 1 (a reply parsed) or 0, tokens and seconds; with `retry`,
        the inputs whose reply did not parse are asked once more with that step and both stages count."""
        stage = self.stage(step, source)
        inputs = source.read(["id"])
        parsed_parents = set(stage.read(["parent_id"])["parent_id"]) if stage.rows_out() else set()
        stats = stage.stats()
        parsed, tokens, seconds = len(parsed_parents), stats.tokens_out, stats.seconds
        failed = [r for r in source.read().to_dict("records") if r["id"] not in parsed_parents]
        if retry is not None and failed:
            again = self.stage(retry, source_of(self.run, f"retry-{step.name}", failed))
            parsed += len(set(again.read(["parent_id"])["parent_id"])) if again.rows_out() else 0
            again_stats = again.stats()
            tokens, seconds = tokens + again_stats.tokens_out, seconds + again_stats.seconds
        return {"per_input": [1] * parsed + [0] * (len(inputs) - parsed), "tokens": tokens, "seconds": seconds,
                "retried": len(failed) if retry is not None else 0}


def main() -> None:
    from common import write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16, help="inputs per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", default=",".join(format_steps(True)), help="comma-separated steps to measure "
                        "(default: all)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results-guards.txt"))
    args = parser.parse_args()
    wanted = args.steps.split(",")
    unknown = set(wanted) - set(format_steps(True))
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; known: {', '.join(format_steps(True))}")
    os.environ["RAYSYNTH_NO_PROGRESS"] = "1"
    init_ray()

    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(RunDir(Path(tmp) / "run"), EngineConfig())
        inputs = bench.inputs(args.rows, args.seed, wanted)
        guarded, markers = format_steps(True), format_steps(False)
        for key, source in inputs.items():  # warm-up: every grammar compiled once
            one = source_of(bench.run, f"warm-{key.replace('/', '-')}", source.read().head(1).to_dict("records"))
            for step in (named(guarded[key], "warm-g"), named(markers[key], "warm-m"),
                         named(guarded[key], "warm-f", structured=False)):
                bench.stage(step, one)
        results: dict[str, dict[str, dict[str, Any]]] = {}
        for key, source in inputs.items():
            results[key] = {
                "guarded": bench.measure(named(guarded[key], "guarded"), source, None),
                "markers": bench.measure(named(markers[key], "markers"), source, None),
                "free+retry": bench.measure(named(guarded[key], "free", structured=False), source,
                                            named(guarded[key], "retry")),
            }
            print(key, {way: {k: v for k, v in r.items() if k != "per_input"} for way, r in results[key].items()},
                  flush=True)
        bench.run.engines.release()

    lines = [f"up to {args.rows} fixed inputs per step; engine {MODEL}, float32, each step's default sampling",
             f"{'step':17} {'way':11} {'parsed':>7} {'rate (95% CI)':17} {'tok/s':>6} {'s/parsed':>9} {'retried':>8}"]
    for key, ways in results.items():
        for way in WAYS:
            r = ways[way]
            parse, parsed = rate(r["per_input"], args.seed), sum(r["per_input"])
            per_parsed = f"{r['seconds'] / parsed:9.1f}" if parsed else f"{'-':>9}"
            interval = f"{parse['value']:.0%} ({parse['low']:.0%}-{parse['high']:.0%})"
            lines.append(f"{key:17} {way:11} {str(parsed) + '/' + str(parse['n']):>7} {interval:17} "
                         f"{r['tokens'] / max(r['seconds'], 1e-9):6.1f} {per_parsed} {r['retried']:8}")
    steps = "" if args.steps == ",".join(format_steps(True)) else f" --steps {args.steps}"
    write_results(args.out, f"python bench/guards.py --rows {args.rows} --seed {args.seed}{steps}", lines,
                  ["parse rate: inputs with at least one parsed reply; s/parsed: the way's stage seconds (the retry "
                   "stage's included) per parsed input"], summary="one run of each way, in turn (tok/s carry one "
                  "measurement's noise; the parse rates carry their intervals)")


if __name__ == "__main__":
    main()
