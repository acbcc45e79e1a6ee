"""Outcome study: does a recipe's loop make the model better, measured with paired intervals?

Runs RECIPE from `configs/RECIPE-SIZE.yaml` for `--iterations` iterations without an `eval:` section
(the paper's loop: every trained model is promoted and feeds the next iteration), then evaluates
iteration 0 and each iteration's model on IFEval (greedy) and by the frozen judge (the initial model,
both orders) against iteration 0 on the same prompts: accuracies, the paired differences and the win
rate, each with its bootstrap 95% interval, and the verdict the default promotion gate would give.
The figures go to `bench/results-outcome.md`, one section per recipe (a rerun replaces its section);
what they show is written under them by hand.

Size: the defaults are the issue's (all 541 IFEval prompts, 512 tokens). On the 2-core CPU machine
(I-SHEEP's study) one model's IFEval at that size took 6.3 minutes and the both-orders judging of its
1,082 pairs 15, so a two-iteration study is about 42 minutes of evaluation beyond the shared iteration
0, plus the recipe's run; `--limit` and `--max-tokens` shrink it, and the section records the size.

`--reuse-iteration-0 RUN_DIR` copies the committed iteration-0 evaluation stages of an earlier study
on the same initial model (their directory names are their identities, so the evaluation finds them
done; a different evaluation setting names other stages and nothing is reused).

    python bench/outcome.py isheep [--size small] [--iterations 2] [--limit 541] [--max-tokens 512]
    python bench/outcome.py synpo --reuse-iteration-0 runs/outcome-isheep
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import REPO, commit
from raysynth.config import EvalConfig, PromotionConfig, SamplingConfig
from raysynth.promotion import gate
from raysynth.recipes import load_config
from raysynth.store import StageDir

RESULTS = REPO / "bench" / "results-outcome.md"
ITERATED = {"synpo", "isheep"}  # Condor and REFED train once
EVAL_BATCH = 192


def fmt(m: dict[str, Any], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(m['value'])} [{f.format(m['low'])}, {f.format(m['high'])}]"


def run_recipe(recipe: str, config: Path, run_dir: Path, iterations: int) -> float:
    overrides = [f"run_dir={run_dir}", "eval=null"] + ([f"{recipe}.iterations={iterations}"] if recipe in ITERATED else [])
    started = time.time()
    subprocess.run([sys.executable, "-m", "raysynth.cli", "run", str(config),
                    *[a for o in overrides for a in ("--set", o)]], check=True)
    return time.time() - started


def copy_iteration_0(source: Path, run_dir: Path) -> list[str]:
    """The committed iteration-0 evaluation stages of `source` copied into `run_dir` (names copied)."""
    copied = []
    for stage in sorted((source / "iter-00").glob("eval-*")):
        target = run_dir / "iter-00" / stage.name
        if StageDir(stage).committed and not target.exists():
            shutil.copytree(stage, target)
            copied.append(stage.name)
    return copied


def evaluate_all(run_dir: Path, eval_cfg: EvalConfig) -> list[dict[str, Any]]:
    """Iteration 0, then every trained model against it (answers of iteration 0 reused)."""
    from raysynth.eval import evaluate
    from raysynth.pipeline import init_ray
    from raysynth.registry import read_registry
    from raysynth.store import RunDir

    cfg = load_config(run_dir / "config.yaml")
    initial = getattr(cfg, "student_model", None) or cfg.engine.model
    init_ray(run_dir / "logs" / "outcome.log")  # Ray's log lines there, not among the figures
    run = RunDir(run_dir)
    # The recipe's small engine batches (48 for I-SHEEP) leave the engine half empty on 541 long answers:
    # the evaluation feeds it EVAL_BATCH prompts per call (541 = 3 calls); the answers do not depend on it.
    engine = cfg.engine.model_copy(update={"batch_size": EVAL_BATCH})
    started = time.time()
    results = [evaluate(run, 0, initial, engine, eval_cfg) | {"seconds": time.time() - started}]
    for entry in sorted(read_registry(run_dir).models.values(), key=lambda e: e.iteration):
        if entry.iteration:
            started = time.time()
            result = evaluate(run, entry.iteration, entry.path, engine, eval_cfg, baseline=initial,
                              baseline_iteration=0, judge=initial)
            results.append(result | {"seconds": time.time() - started})
    return results


def section(recipe: str, args: argparse.Namespace, run_seconds: float, results: list[dict[str, Any]]) -> str:
    lines = [f"## {recipe}", "",
             f"`python bench/outcome.py {recipe} --size {args.size} --iterations {args.iterations} --limit "
             f"{args.limit} --max-tokens {args.max_tokens}`, measured {time.strftime('%Y-%m-%d')} at commit "
             f"{commit()} on this machine's CPU (2 cores). Recipe run {run_seconds / 60:.1f} min; evaluations "
             + ", ".join(f"iteration {r['iteration']} {r['seconds'] / 60:.1f} min" for r in results)
             + (f" (iteration 0's answers reused from {args.reuse_iteration_0})" if args.reuse_iteration_0 else "")
             + ".", "",
             "| iteration | IFEval prompt strict | loose | strict minus iter 0 (paired) | loose minus iter 0 "
             "| win rate vs iter 0 (W-T-L) | default gate |", "|---|---|---|---|---|---|---|"]
    for r in results:
        ifeval = r["ifeval"]
        row = [str(r["iteration"]), fmt(ifeval["prompt_strict"]), fmt(ifeval["prompt_loose"])]
        if r["iteration"]:
            paired, win = r["paired"]["ifeval"], r["winrate"]
            row += [fmt(paired["prompt_strict"], True), fmt(paired["prompt_loose"], True),
                    f"{fmt(win['win_rate'])} ({win['wins']}-{win['ties']}-{win['losses']}, "
                    f"{win['incomplete']} incomplete"
                    + (f"; first shown picked {win['picked_first_shown']['value']:.0%}" if "picked_first_shown" in win
                       else "") + ")",
                    "promote" if gate(r, PromotionConfig()).promote else "reject"]
        else:
            row += ["", "", "", ""]
        lines.append("| " + " | ".join(row) + " |")
    n = results[0]["ifeval"]["prompt_strict"]["n"]
    lines += ["", f"n = {n} prompts each; judge: {results[-1].get('winrate', {}).get('judge', '-')} (frozen, "
              "both orders; a tie counts half).", "", "Reading: (written by hand under the figures)", ""]
    return "\n".join(lines)


def replace_section(text: str, recipe: str, new: str) -> str:
    """`text` with recipe's `## recipe` section replaced by `new` (appended when absent); the reading
    written by hand under an earlier section of the same recipe is dropped with it."""
    pattern = re.compile(rf"^## {recipe}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(new.replace("\\", "\\\\") + "\n\n", text)
    return text.rstrip("\n") + "\n\n" + new + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", choices=["condor", "synpo", "isheep", "refed"])
    parser.add_argument("--size", default="small", help="configs/RECIPE-SIZE.yaml")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--limit", type=int, default=541, help="IFEval prompts (541: all)")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/outcome-RECIPE")
    parser.add_argument("--reuse-iteration-0", type=Path, default=None, metavar="RUN_DIR",
                        help="an earlier study's run dir on the same initial model: reuse its iteration-0 evaluation")
    args = parser.parse_args()
    run_dir = args.run_dir or REPO / "runs" / f"outcome-{args.recipe}"
    run_seconds = run_recipe(args.recipe, REPO / "configs" / f"{args.recipe}-{args.size}.yaml", run_dir,
                             args.iterations)
    eval_cfg = EvalConfig(limit=args.limit, generation=SamplingConfig(temperature=0.0, max_tokens=args.max_tokens,
                                                                      structured=False))
    if args.reuse_iteration_0:
        print("reused from", args.reuse_iteration_0, copy_iteration_0(args.reuse_iteration_0, run_dir))
    results = evaluate_all(run_dir, eval_cfg)
    (run_dir / "outcome.json").write_text(json.dumps(results, indent=1))
    text = RESULTS.read_text() if RESULTS.is_file() else "# Outcome studies (bench/outcome.py)\n"
    RESULTS.write_text(replace_section(text, args.recipe, section(args.recipe, args, run_seconds, results)))
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
