"""A chain of short LLM stages with the engine kept alive between stages, against per-stage engine
pools (`engine.keep_alive: false`), in one run.

Each side runs the same chain through `pipeline.run_llm_stage`, the recipes' entry: `--stages`
consecutive answer stages on the same model, each over the rows the previous one made (`--rows` rows,
`--max-tokens` tokens). Prints each side's seconds per stage and the ratio. The kept engine pays one
engine start for the whole chain; the per-stage pools pay one per stage, which dominates short stages
(small-model iterations, tests); long stages amortise it. Each measurement runs in a fresh process
(Ray's start not timed); each side is warmed once, then measured `--repeats` times, interleaved in
alternating order.
Usage: python bench/stages.py [--stages 4] [--rows 16] [--max-tokens 32] [--repeats 3] [--out bench/results-stages.txt]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from raysynth.config import EngineConfig
from raysynth.models import resolve_model
from raysynth.pipeline import Lineage, init_ray, run_llm_stage, write_source_stage
from raysynth.recipes.isheep.config import ISheepConfig
from raysynth.recipes.isheep.steps import isheep_steps
from raysynth.store import RunDir


def chain(keep_alive: bool, stages: int, rows: int, max_tokens: int) -> float:
    """Seconds for `stages` answer stages in a row, each over the rows the previous one made."""
    run = RunDir(Path(tempfile.mkdtemp()) / "run")
    lineage = Lineage("bench", 1, "smollm2-135m")
    engine = EngineConfig(batch_size=8, keep_alive=keep_alive)
    answer = isheep_steps(ISheepConfig())["answer"]
    source = write_source_stage(run, 1, "instructions", [
        {"instruction": f"Write one sentence about the number {i}.", "input": "",
         "prompt": f"Write one sentence about the number {i}."} for i in range(rows)], {"rows": rows}, lineage)
    started = time.time()
    for k in range(stages):
        step = replace(answer, name=f"answer-{k}", sampling=answer.sampling.model_copy(
            update={"max_tokens": max_tokens, "temperature": 0.7}))
        source = run_llm_stage(run, 1, step, source, engine, resolve_model("smollm2-135m"), lineage)
    run.engines.release()
    return time.time() - started


def main() -> None:
    from common import interleaved, spread, write_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results-stages.txt")
    parser.add_argument("--side", choices=["per-stage", "kept"], help="one measurement (used by the bench itself)")
    args = parser.parse_args()
    if args.side:
        init_ray()
        print(json.dumps({"seconds": chain(args.side == "kept", args.stages, args.rows, args.max_tokens)}))
        return
    runs = interleaved(Path(__file__), ["per-stage", "kept"], ["--stages", str(args.stages), "--rows", str(args.rows),
                                                               "--max-tokens", str(args.max_tokens)], args.repeats)
    seconds = {side: [r["seconds"] for r in runs[side]] for side in runs}
    per_stage = {side: [s / args.stages for s in values] for side, values in seconds.items()}
    lines = [f"stages={args.stages} rows={args.rows} max_tokens={args.max_tokens} model=smollm2-135m repeats={args.repeats}",
             f"  per-stage engine pools : {spread(per_stage['per-stage'], '{:.1f}')} s/stage",
             f"  kept engine            : {spread(per_stage['kept'], '{:.1f}')} s/stage",
             f"  speed-up of medians (per-stage / kept): "
             f"{statistics.median(seconds['per-stage']) / statistics.median(seconds['kept']):.2f}x"]
    write_results(args.out, f"python bench/stages.py --stages {args.stages} --rows {args.rows} --max-tokens "
                            f"{args.max_tokens} --repeats {args.repeats}", lines,
                  ["each side: the whole chain through run_llm_stage, engine starts included, Ray's start excluded"])


if __name__ == "__main__":
    main()
