"""Engine throughput: raysynth's default LLM-stage path against bare vLLM, same prompts, three workloads.

- uniform (`--prompts 256 --max-tokens 128`): Alpaca instructions; bare is `LLM.generate` on all of
  them at once (the most a single call can do).
- mixed (`--prompts 128 --max-tokens 512`): half the prompts ask for one word, half for a ~400-word
  essay; bare is a synchronous loop of `LLM.generate` calls of `engine.batch_size` prompts, one after
  the other (what a plain Ray Data callable class or a naive user does), so each call waits for its
  longest row.
- chain (`--prompts 64 --max-tokens 128`): Condor's answer -> critique -> refine on one model, each
  step over what the previous one kept; bare is the same three `LLM.generate` calls in sequence on one
  engine (prompts built and replies parsed by the same step functions, the same structured outputs).

raysynth: `pipeline.run_llm_stage` as the recipes call it, with the engine kept alive (the default,
`engine.batches_in_flight` batches in flight): prompts built from the rows, batches handed to the
engine actor, replies parsed, every batch committed to the stage store.

Two timings per side: "generation" (the engine already loaded: the raysynth side from a ready engine
actor to the committed stage(s), the bare side its generate call(s) alone) and "end to end" (vllm
import and engine start included on both sides; Ray's own start is not, as a run pays it once). Each
measurement runs in a fresh process; each side is warmed once, then measured `--repeats` times,
interleaved in alternating order. Ratios are of tokens/s (raysynth / bare).

`--baseline no-prefix-caching` measures vLLM's prefix caching instead: the raysynth side as above
against the same side with `engine.prefix_caching: false` (the chain's critique and refine prompts
share their templates' openings, 99 and 75 words).

    python bench/engine.py [--workload uniform|mixed|chain] [--prompts N] [--max-tokens N] [--repeats 3]
                           [--baseline bare|no-prefix-caching]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from raysynth.config import EngineConfig, SamplingConfig
from raysynth.models import resolve_model
from raysynth.shipped import ALPACA_SEED, read_jsonl

MODEL = "smollm2-135m"
DEFAULTS = {"uniform": (256, 128), "mixed": (128, 512), "chain": (64, 128)}
TOPICS = ["the sea", "a city at night", "winter", "trains", "music", "a market", "the moon", "forests"]


def load_prompts(count: int) -> list[str]:
    """The first `count` instructions of the shipped Alpaca slice (with their inputs)."""
    rows = read_jsonl(ALPACA_SEED, count)
    return [r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "") for r in rows]


def mixed_prompts(count: int) -> list[str]:
    """Alternately a one-word question and a ~400-word essay request."""
    return [f"Answer with a single word: what colour is {TOPICS[i // 2 % len(TOPICS)]}?" if i % 2 == 0 else
            f"Write a detailed essay of about 400 words about {TOPICS[i // 2 % len(TOPICS)]}, part {i // 16}."
            for i in range(count)]


def steps(workload: str, max_tokens: int) -> list:
    """The step(s) of the workload, each sampling at temperature 0.7 up to `max_tokens`."""
    sampling = {"temperature": 0.7, "max_tokens": max_tokens}
    if workload == "chain":
        from raysynth.recipes.condor.config import CondorConfig
        from raysynth.recipes.condor.steps import condor_steps

        chain = condor_steps(CondorConfig(steps={name: sampling for name in ("answer", "critique", "refine")}))
        return [chain["answer"], chain["critique"], chain["refine"]]
    from raysynth.steps.eval import respond_step

    return [respond_step(SamplingConfig(structured=False, **sampling))]


def source_rows(workload: str, count: int) -> list[dict]:
    if workload == "chain":
        return [{"question": q} for q in load_prompts(count)]
    return [{"prompt": p} for p in (mixed_prompts(count) if workload == "mixed" else load_prompts(count))]


def bare(workload: str, count: int, max_tokens: int) -> dict[str, float]:
    started = time.time()
    from vllm import LLM

    from raysynth.engine import chat_token_ids, engine_kwargs, sampling_params, token_prompt

    engine = EngineConfig(model=MODEL)
    llm = LLM(**engine_kwargs(engine, resolve_model(MODEL), 0, offline=True))
    tok = llm.get_tokenizer()
    rows, tokens = source_rows(workload, count), 0
    generate_started = time.time()
    for step in steps(workload, max_tokens):
        prompts = [token_prompt(chat_token_ids(tok, step.build(row, step.template))) for row in rows]
        params = sampling_params(step.sampling, step.regex, step.json_schema)
        size = engine.batch_size if workload == "mixed" else max(1, len(prompts))
        outs = [o for k in range(0, len(prompts), size)
                for o in llm.generate(prompts[k:k + size], params, use_tqdm=False)]
        tokens += sum(len(c.token_ids) for o in outs for c in o.outputs)
        made = []
        for row, out in zip(rows, outs):
            try:
                made += [{**row, **new} for new in step.parse(out.outputs[0].text, row)]
            except Exception:  # a rejected reply, as the stage would reject it
                pass
        rows = made
    ended = time.time()
    return {"tokens": tokens, "rows_out": len(rows), "generation_s": ended - generate_started,
            "end_to_end_s": ended - started}


def raysynth(workload: str, count: int, max_tokens: int, prefix_caching: bool = True) -> dict[str, float]:
    import ray

    from raysynth.pipeline import Lineage, init_ray, run_llm_stage, write_source_stage
    from raysynth.store import RunDir

    init_ray()
    run, lineage = RunDir(Path(tempfile.mkdtemp()) / "run"), Lineage("bench", 0, MODEL)
    stage = write_source_stage(run, 0, "rows", source_rows(workload, count), {"n": count}, lineage)
    engine, model_dir = EngineConfig(model=MODEL, prefix_caching=prefix_caching), resolve_model(MODEL)
    started = time.time()
    ray.get([actor.__ray_ready__.remote() for actor in run.engines.actors(engine, model_dir)])
    generate_started, tokens = time.time(), 0
    for step in steps(workload, max_tokens):
        stage = run_llm_stage(run, 0, step, stage, engine, model_dir, lineage)
        tokens += stage.manifest()["tokens_out"]
    ended = time.time()
    return {"tokens": tokens, "rows_out": stage.manifest()["rows_out"], "generation_s": ended - generate_started,
            "end_to_end_s": ended - started}


def main() -> None:
    from common import interleaved, spread, write_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(DEFAULTS), default="uniform")
    parser.add_argument("--prompts", type=int)
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="default: bench/results-engine[-WORKLOAD].txt")
    parser.add_argument("--baseline", choices=["bare", "no-prefix-caching"], default="bare")
    parser.add_argument("--side", choices=["bare", "raysynth", "no-prefix-caching"],
                        help="one measurement (used by the bench itself)")
    args = parser.parse_args()
    count = args.prompts or DEFAULTS[args.workload][0]
    max_tokens = args.max_tokens or DEFAULTS[args.workload][1]
    if args.side:
        measured = {"bare": lambda: bare(args.workload, count, max_tokens),
                    "raysynth": lambda: raysynth(args.workload, count, max_tokens),
                    "no-prefix-caching": lambda: raysynth(args.workload, count, max_tokens, prefix_caching=False)}
        print(json.dumps(measured[args.side]()))
        return
    options = ["--workload", args.workload, "--prompts", str(count), "--max-tokens", str(max_tokens)]
    runs = interleaved(Path(__file__), [args.baseline, "raysynth"], options, args.repeats)
    runs["bare"] = runs.pop(args.baseline)  # the baseline, whichever it is
    bare_name = {"uniform": "bare LLM.generate, all at once", "mixed": "synchronous loop of LLM.generate",
                 "chain": "three bare LLM.generate calls"}[args.workload]
    if args.baseline == "no-prefix-caching":
        bare_name = "raysynth, prefix caching off"
    engine = EngineConfig()
    lines = [f"workload={args.workload} prompts={count} max_tokens={max_tokens} temperature=0.7 model={MODEL} "
             f"batch_size={engine.batch_size} batches_in_flight={engine.batches_in_flight} repeats={args.repeats}",
             f"  tokens generated (median): bare {statistics.median(r['tokens'] for r in runs['bare']):.0f}, "
             f"raysynth {statistics.median(r['tokens'] for r in runs['raysynth']):.0f}; rows out: bare "
             f"{statistics.median(r['rows_out'] for r in runs['bare']):.0f}, raysynth "
             f"{statistics.median(r['rows_out'] for r in runs['raysynth']):.0f}"]
    for phase in ("generation", "end_to_end"):
        rates = {side: [r["tokens"] / r[f"{phase}_s"] for r in runs[side]] for side in runs}
        lines.append(f"[{phase.replace('_', ' ')}]")
        lines.append(f"  {bare_name:<36}: {spread(rates['bare'], '{:.1f}')} tok/s")
        ours = "raysynth run_llm_stage" + (", caching on" if args.baseline == "no-prefix-caching" else "")
        lines.append(f"  {ours:<36}: {spread(rates['raysynth'], '{:.1f}')} tok/s")
        ratios = [r / b for r, b in zip(rates["raysynth"], rates["bare"])]
        lines.append(f"  {'ratio of medians':<36}: {statistics.median(rates['raysynth']) / statistics.median(rates['bare']):.3f}"
                     f"   (per round: {spread(ratios)})")
    suffix = ("" if args.workload == "uniform" else f"-{args.workload}") + \
        ("-prefix-caching" if args.baseline == "no-prefix-caching" else "")
    out = args.out or Path(__file__).parent / f"results-engine{suffix}.txt"
    options += ["--repeats", str(args.repeats)] + (["--baseline", args.baseline] if args.baseline != "bare" else [])
    write_results(out, "python bench/engine.py " + " ".join(options), lines,
                  ["generation: the raysynth side from a ready kept engine actor to the committed stage(s) (build, "
                   "generate with batches in flight, parse, commit); bare: its generate call(s) on a loaded engine.",
                   "end to end: vllm import and engine start included on both sides (Ray's start excluded)."])


if __name__ == "__main__":
    main()
