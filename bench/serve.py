"""Serving throughput: `raysynth serve` (Ray Serve + vLLM AsyncLLM) against vLLM's own OpenAI server,
same model, same engine settings, same load, in one run. Prints requests/s and p50/p95 latency of
each and the ratios (raysynth / vLLM). Loopback only; the load is bounded (N requests, C at a time).

Each side runs in a fresh process (server start, an untimed warm-up of 8 requests, then the load);
sides alternate over `--repeats` rounds after one discarded warm-up run of each (bench/common.py).
raysynth's side runs as deployed: an inference key (Bearer checks on every request), an admin key,
the body cap, tokenization off the event loop.

Usage: python bench/serve.py [--requests 64] [--concurrency 8] [--max-tokens 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openai

from raysynth.config import ServeConfig
from raysynth.engine import engine_kwargs
from raysynth.models import resolve_model
from raysynth.serve import wait_until_healthy

PROMPTS = ["Give one tip for learning a language.", "Name a planet and one fact about it.",
           "Write a short sentence about the sea.", "What is a prime number?"]


KEY = "bench-key"


async def load(base_url: str, model: str, requests: int, concurrency: int, max_tokens: int) -> dict[str, float]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=600)
    latencies: list[float] = []
    failures = tokens = 0
    queue = list(range(requests))

    async def worker() -> None:
        nonlocal failures, tokens
        while queue:
            i = queue.pop()
            started = time.perf_counter()
            try:
                reply = await client.chat.completions.create(
                    model=model, max_tokens=max_tokens, temperature=0,
                    messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])
                tokens += reply.usage.completion_tokens
                latencies.append(time.perf_counter() - started)
            except Exception:
                failures += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return {"rps": len(latencies) / seconds, "p50": float(np.percentile(latencies, 50)),
            "p95": float(np.percentile(latencies, 95)), "failures": failures, "tokens": tokens}


def bench_raysynth(model_dir: str, args) -> dict[str, float]:
    import ray
    from ray import serve

    from raysynth.pipeline import init_ray
    from raysynth.serve import start_server

    os.environ["RAYSYNTH_API_KEY"] = KEY  # read by the replica: set before Ray starts
    os.environ["RAYSYNTH_ADMIN_KEY"] = "bench-admin-key"
    init_ray()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as run_dir:  # the run's registry
        cfg = ServeConfig(run_dir=Path(run_dir), model=model_dir, model_name="bench", port=args.port, num_cpus=0)
        start_server(cfg)
        wait_until_healthy(f"http://127.0.0.1:{args.port}/health")
        asyncio.run(load(f"http://127.0.0.1:{args.port}/v1", "bench", 8, args.concurrency, 4))  # warm-up
        result = asyncio.run(load(f"http://127.0.0.1:{args.port}/v1", "bench", args.requests, args.concurrency,
                                  args.max_tokens))
        serve.shutdown()
        ray.shutdown()
    return result


def bench_vllm(model_dir: str, args) -> dict[str, float]:
    kwargs = engine_kwargs(ServeConfig().engine, model_dir, 0)  # also sets the CPU thread binding in os.environ
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", "bench", "--api-key", KEY, "--host", "127.0.0.1", "--port", str(args.port + 1),
           "--dtype", kwargs["dtype"], "--max-model-len", str(kwargs["max_model_len"]),
           *(["--kv-cache-memory-bytes", str(kwargs["kv_cache_memory_bytes"])] if "kv_cache_memory_bytes" in kwargs
             else ["--gpu-memory-utilization", str(kwargs["gpu_memory_utilization"])]), "--seed", "0",
           "--disable-log-stats"] + (["--enforce-eager"] if kwargs["enforce_eager"] else [])
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    try:
        wait_until_healthy(f"http://127.0.0.1:{args.port + 1}/health")
        base = f"http://127.0.0.1:{args.port + 1}/v1"
        asyncio.run(load(base, "bench", 8, args.concurrency, 4))  # warm-up
        return asyncio.run(load(base, "bench", args.requests, args.concurrency, args.max_tokens))
    finally:
        server.terminate()
        server.wait(60)


def main() -> None:
    from common import interleaved, spread, write_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results-serve.txt")
    parser.add_argument("--side", choices=["vllm", "raysynth"], help="one measurement (used by the bench itself)")
    args = parser.parse_args()
    if args.side:
        model_dir = resolve_model(args.model)
        bench = bench_raysynth if args.side == "raysynth" else bench_vllm
        print(json.dumps(bench(model_dir, args)))
        return
    runs = interleaved(Path(__file__), ["vllm", "raysynth"],
                       ["--requests", str(args.requests), "--concurrency", str(args.concurrency), "--max-tokens",
                        str(args.max_tokens), "--model", args.model, "--port", str(args.port)], args.repeats)
    median = {side: {k: statistics.median(r[k] for r in runs[side]) for k in ("rps", "p50", "p95")} for side in runs}
    lines = [f"requests={args.requests} concurrency={args.concurrency} max_tokens={args.max_tokens} "
             f"model={args.model} repeats={args.repeats}"]
    for label, side in (("vLLM OpenAI server", "vllm"), ("raysynth serve", "raysynth")):
        r = runs[side]
        lines.append(f"  {label:20s}: {spread([x['rps'] for x in r], '{:.2f}')} req/s  p50 "
                     f"{spread([x['p50'] for x in r], '{:.2f}')} s  p95 {spread([x['p95'] for x in r], '{:.2f}')} s  "
                     f"failures {sum(x['failures'] for x in r)}  completion tokens per run "
                     f"{sorted({x['tokens'] for x in r})}")
    ours, theirs = median["raysynth"], median["vllm"]
    lines.append(f"  ratio of medians raysynth/vLLM: req/s {ours['rps'] / theirs['rps']:.3f}  p50 "
                 f"{ours['p50'] / theirs['p50']:.3f}  p95 {ours['p95'] / theirs['p95']:.3f}  "
                 "(req/s: higher is better; latency: lower)")
    write_results(args.out, f"python bench/serve.py --requests {args.requests} --concurrency {args.concurrency} "
                            f"--max-tokens {args.max_tokens} --repeats {args.repeats}", lines,
                  ["same model and engine settings (float32, both cores bound, enforce_eager), chat requests, greedy",
                   "raysynth's path adds the Ray Serve proxy hop, FastAPI and the key check in the replica"])


if __name__ == "__main__":
    main()
