"""Serving throughput: `raysynth serve` (Ray Serve + vLLM AsyncLLM) against vLLM's own OpenAI server,
same model, same engine settings, same load, in one run. Prints requests/s and p50/p95 latency of
each and the ratios (raysynth / vLLM). Loopback only; the load is bounded (N requests, C at a time).

Usage: python bench/serve.py [--requests 64] [--concurrency 8] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import numpy as np
import openai

from raysynth.config import EngineConfig, ServeConfig
from raysynth.engine import engine_kwargs
from raysynth.models import resolve_model
from raysynth.serve import wait_until_healthy

PROMPTS = ["Give one tip for learning a language.", "Name a planet and one fact about it.",
           "Write a short sentence about the sea.", "What is a prime number?"]


async def load(base_url: str, model: str, requests: int, concurrency: int, max_tokens: int) -> dict[str, float]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)
    latencies: list[float] = []
    failures = 0
    queue = list(range(requests))

    async def worker() -> None:
        nonlocal failures
        while queue:
            i = queue.pop()
            started = time.perf_counter()
            try:
                await client.chat.completions.create(model=model, max_tokens=max_tokens, temperature=0,
                                                     messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])
                latencies.append(time.perf_counter() - started)
            except Exception:
                failures += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return {"rps": len(latencies) / seconds, "p50": float(np.percentile(latencies, 50)),
            "p95": float(np.percentile(latencies, 95)), "failures": failures}


def bench_raysynth(model_dir: str, args) -> dict[str, float]:
    import ray
    from ray import serve

    from raysynth.pipeline import init_ray
    from raysynth.serve import start_server

    os.environ.pop("RAYSYNTH_API_KEY", None)
    init_ray()
    cfg = ServeConfig(run_dir=args.run_dir, model=model_dir, model_name="bench", port=args.port, num_cpus=0)
    start_server(cfg)
    wait_until_healthy(f"http://127.0.0.1:{args.port}/health")
    asyncio.run(load(f"http://127.0.0.1:{args.port}/v1", "bench", 8, args.concurrency, 4))  # warm-up
    result = asyncio.run(load(f"http://127.0.0.1:{args.port}/v1", "bench", args.requests, args.concurrency,
                              args.max_tokens))
    serve.shutdown()
    ray.shutdown()
    return result


def bench_vllm(model_dir: str, engine: EngineConfig, args) -> dict[str, float]:
    kwargs = engine_kwargs(engine, model_dir, 0)  # also sets the CPU thread binding in os.environ
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", "bench", "--host", "127.0.0.1", "--port", str(args.port + 1),
           "--dtype", kwargs["dtype"], "--max-model-len", str(kwargs["max_model_len"]),
           "--gpu-memory-utilization", str(kwargs["gpu_memory_utilization"]), "--seed", "0",
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--run-dir", default="runs/bench-serve")
    args = parser.parse_args()
    model_dir = resolve_model(args.model)
    engine = ServeConfig().engine
    ours = bench_raysynth(model_dir, args)
    theirs = bench_vllm(model_dir, engine, args)
    print(f"requests={args.requests} concurrency={args.concurrency} max_tokens={args.max_tokens} model={args.model}")
    for label, r in (("vLLM OpenAI server", theirs), ("raysynth serve", ours)):
        print(f"{label:20s}: {r['rps']:6.2f} req/s  p50 {r['p50']:6.2f} s  p95 {r['p95']:6.2f} s  failures {r['failures']}")
    print(f"ratio raysynth/vLLM : req/s {ours['rps'] / theirs['rps']:.3f}  p50 {ours['p50'] / theirs['p50']:.3f}  "
          f"p95 {ours['p95'] / theirs['p95']:.3f}  (req/s: higher is better; latency: lower)")


if __name__ == "__main__":
    main()
