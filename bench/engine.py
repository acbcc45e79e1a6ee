"""Engine throughput: raysynth's default LLM-stage path against bare `vllm.LLM.generate`, same prompts.

- raysynth: `pipeline.run_llm_stage` as the recipes call it, with the engine kept alive (the default):
  prompts built from the rows, batches of `engine.batch_size` handed to the engine actor, replies
  parsed, every batch committed to the stage store.
- bare: the same chat-templated prompts, all at once, to `LLM.generate` in one process.

Two timings per side: "generation" (the engine already loaded: the raysynth side from a ready engine
actor to the committed stage, the bare side `LLM.generate` alone) and "end to end" (vllm import and
engine start included; Ray's own start is not, as a run pays it once). Each measurement runs in a fresh
process; each side is warmed once, then measured `--repeats` times, interleaved in alternating order.
Ratios are of the medians' tokens/s (raysynth / bare).

    python bench/engine.py [--prompts 256] [--max-tokens 128] [--repeats 3] [--out bench/results-engine.txt]
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
from raysynth.steps.eval import build_respond, respond_step

MODEL = "smollm2-135m"


def load_prompts(count: int) -> list[str]:
    """The first `count` instructions of the shipped Alpaca slice (with their inputs)."""
    rows = read_jsonl(ALPACA_SEED, count)
    return [r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "") for r in rows]


def sampling(max_tokens: int) -> SamplingConfig:
    return SamplingConfig(temperature=0.7, max_tokens=max_tokens, structured=False)


def bare(prompts: list[str], max_tokens: int) -> dict[str, float]:
    started = time.time()
    from vllm import LLM

    from raysynth.engine import chat_token_ids, engine_kwargs, sampling_params, token_prompt

    step, engine = respond_step(sampling(max_tokens)), EngineConfig(model=MODEL)
    llm = LLM(**engine_kwargs(engine, resolve_model(MODEL), 0, offline=True))
    tok = llm.get_tokenizer()
    ids = [chat_token_ids(tok, build_respond({"prompt": p}, step.template)) for p in prompts]
    generate_started = time.time()
    outs = llm.generate([token_prompt(i) for i in ids], sampling_params(step.sampling), use_tqdm=False)
    ended = time.time()
    return {"tokens": sum(len(c.token_ids) for o in outs for c in o.outputs),
            "generation_s": ended - generate_started, "end_to_end_s": ended - started}


def raysynth(prompts: list[str], max_tokens: int) -> dict[str, float]:
    import ray

    from raysynth.pipeline import Lineage, init_ray, run_llm_stage, write_source_stage
    from raysynth.store import RunDir

    init_ray()
    run, lineage = RunDir(Path(tempfile.mkdtemp()) / "run"), Lineage("bench", 0, MODEL)
    source = write_source_stage(run, 0, "prompts", [{"prompt": p} for p in prompts], {"n": len(prompts)}, lineage)
    engine, model_dir = EngineConfig(model=MODEL), resolve_model(MODEL)
    started = time.time()
    ray.get([actor.__ray_ready__.remote() for actor in run.engines.actors(engine, model_dir)])
    generate_started = time.time()
    stage = run_llm_stage(run, 0, respond_step(sampling(max_tokens)), source, engine, model_dir, lineage)
    ended = time.time()
    return {"tokens": stage.manifest()["tokens_out"], "generation_s": ended - generate_started,
            "end_to_end_s": ended - started}


def main() -> None:
    from common import interleaved, spread, write_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results-engine.txt")
    parser.add_argument("--side", choices=["bare", "raysynth"], help="one measurement (used by the bench itself)")
    args = parser.parse_args()
    if args.side:
        measure = bare if args.side == "bare" else raysynth
        print(json.dumps(measure(load_prompts(args.prompts), args.max_tokens)))
        return
    runs = interleaved(Path(__file__), ["bare", "raysynth"], ["--prompts", str(args.prompts), "--max-tokens",
                                                              str(args.max_tokens)], args.repeats)
    lines = [f"prompts={args.prompts} max_tokens={args.max_tokens} temperature=0.7 model={MODEL} "
             f"batch_size={EngineConfig().batch_size} repeats={args.repeats}"]
    for phase in ("generation", "end_to_end"):
        rates = {side: [r["tokens"] / r[f"{phase}_s"] for r in runs[side]] for side in runs}
        lines.append(f"[{phase.replace('_', ' ')}]")
        lines.append(f"  bare vllm.LLM.generate      : {spread(rates['bare'], '{:.1f}')} tok/s")
        lines.append(f"  raysynth run_llm_stage      : {spread(rates['raysynth'], '{:.1f}')} tok/s")
        ratios = [r / b for r, b in zip(rates["raysynth"], rates["bare"])]
        lines.append(f"  ratio of medians            : {statistics.median(rates['raysynth']) / statistics.median(rates['bare']):.3f}"
                     f"   (per round: {spread(ratios)})")
    write_results(args.out, "python bench/engine.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("prompts", args.prompts), ("max_tokens", args.max_tokens),
                                                     ("repeats", args.repeats))), lines,
                  ["generation: the raysynth side from a ready kept engine actor to the committed stage (build, "
                   "generate in batches, parse, commit); bare: LLM.generate on all prompts at once.",
                   "end to end: vllm import and engine start included on both sides (Ray's start excluded)."])


if __name__ == "__main__":
    main()
