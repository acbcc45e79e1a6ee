"""Engine throughput: the Ray Data vLLM stage against bare `vllm.LLM.generate`, in one run.

Same prompts, same sampling, same engine arguments. Prints tokens/s of each and two ratios:
- generation: bare times `LLM.generate` alone (as vLLM's own throughput benchmark does); the Ray side
  times from the moment its actor's engine is ready to the last row reaching the driver, so Ray Data's
  scheduling, object-store transfer and the driver loop all count. The target (>= 0.9 at 256 prompts)
  is on this ratio.
- end to end: vllm import + engine start + generation on both sides; the Ray side also starts an actor
  process. A fixed cost that a long stage pays once.
Single-node: the engine-ready time is written by the actor and read by the driver from a local file.
Usage: python bench/engine.py [--prompts 256] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

from raysynth.config import EngineConfig, SamplingConfig
from raysynth.engine import VLLMStage
from raysynth.models import resolve_model
from raysynth.recipes.condor import leaf_tags, load_tag_tree

ALPACA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "seed" / "alpaca_3k.jsonl"


def load_prompts(count: int) -> list[str]:
    if ALPACA.exists():
        rows = [json.loads(line) for line in ALPACA.read_text().splitlines()[:count]]
        return [(r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")) for r in rows]
    tags = leaf_tags(load_tag_tree(None))
    return [f"Explain {path[-1]} ({path[0]}) to a curious student." for path in (tags * 8)[:count]]


class TimedVLLMStage(VLLMStage):
    """The stage as the pipeline runs it, plus a note of when its engine became ready."""

    def __init__(self, ready_file: str, **kwargs):
        super().__init__(**kwargs)
        Path(ready_file).write_text(str(time.time()))


def bare(engine: EngineConfig, model_dir: str, sampling: SamplingConfig,
         prompts: list[str]) -> tuple[float, float, int]:
    """(end-to-end seconds, generate seconds, tokens)."""
    started = time.time()  # the import counts: the Ray actor imports vllm too
    from vllm import LLM

    from raysynth.engine import chat_token_ids, engine_kwargs, sampling_params, token_prompt

    llm = LLM(**engine_kwargs(engine, model_dir, sampling.seed, offline=True))
    tok = llm.get_tokenizer()
    ids = [chat_token_ids(tok, [{"role": "user", "content": p}]) for p in prompts]
    generate_started = time.time()
    outs = llm.generate([token_prompt(i) for i in ids], sampling_params(sampling), use_tqdm=False)
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    ended = time.time()
    del llm
    gc.collect()
    return ended - started, ended - generate_started, tokens


def ray_stage(engine: EngineConfig, model_dir: str, sampling: SamplingConfig,
              prompts: list[str]) -> tuple[float, float, int]:
    """(end-to-end seconds, seconds from engine ready to the last row on the driver, tokens)."""
    import ray

    from raysynth.pipeline import init_ray

    init_ray()
    ready_file = Path(tempfile.mkdtemp()) / "engine_ready"
    started = time.time()
    ds = ray.data.from_items([{"id": str(i), "prompt_messages": json.dumps([{"role": "user", "content": p}])}
                              for i, p in enumerate(prompts)])
    ds = ds.map_batches(TimedVLLMStage, batch_format="pandas", batch_size=engine.batch_size,
                        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=engine.num_cpus,
                        fn_constructor_kwargs={"engine": engine, "model_dir": model_dir, "sampling": sampling,
                                               "ready_file": str(ready_file)})
    # Rows come back to the driver, as the pipeline's writer takes them; no aggregation actors. The
    # clock stops when the last rows arrive, before Ray Data tears the actor's engine down (the bare
    # side's clock also stops before `del llm`).
    tokens, ended = 0, started
    for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
        tokens, ended = tokens + int(batch["tokens_out"].sum()), time.time()
    return ended - started, ended - float(ready_file.read_text()), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    prompts = load_prompts(args.prompts)
    engine = EngineConfig(model=args.model, batch_size=len(prompts))
    sampling = SamplingConfig(temperature=0.7, max_tokens=args.max_tokens, structured=False)
    model_dir = resolve_model(args.model)

    bare_total, bare_gen, bare_tokens = bare(engine, model_dir, sampling, prompts)
    ray_total, ray_gen, ray_tokens = ray_stage(engine, model_dir, sampling, prompts)
    print(f"prompts={len(prompts)} max_tokens={args.max_tokens} model={args.model}")
    for phase, bare_s, ray_s in (("generation", bare_gen, ray_gen), ("end to end", bare_total, ray_total)):
        bare_rate, ray_rate = bare_tokens / bare_s, ray_tokens / ray_s
        print(f"[{phase}]")
        print(f"  bare vllm.LLM.generate : {bare_tokens:7d} tokens in {bare_s:7.1f} s = {bare_rate:7.1f} tok/s")
        print(f"  Ray Data VLLMStage     : {ray_tokens:7d} tokens in {ray_s:7.1f} s = {ray_rate:7.1f} tok/s")
        print(f"  ratio (Ray / bare)     : {ray_rate / bare_rate:.3f}" + ("  (target >= 0.9)" if phase == "generation" else ""))


if __name__ == "__main__":
    main()
