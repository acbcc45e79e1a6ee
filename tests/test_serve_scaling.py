"""Serve autoscaling, shown: under a bounded loopback load the deployment goes from `min_replicas` (1)
to `max_replicas` (2), every request answered; once the load stops it goes back to one replica."""

import asyncio
import os
import time

import openai
import pytest

from conftest import free_port

pytestmark = pytest.mark.slow

PORT = free_port()
BASE = f"http://127.0.0.1:{PORT}"


def running_replicas() -> int:
    from ray import serve

    from raysynth.serve import APP_NAME

    app = serve.status().applications.get(APP_NAME)
    if app is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())


def until(condition, timeout_s: float) -> float | None:
    """Seconds until `condition()` holds, or None after `timeout_s`."""
    started = time.time()
    while time.time() - started < timeout_s:
        if condition():
            return time.time() - started
        time.sleep(1)
    return None


@pytest.mark.timeout(900)
def test_replicas_follow_the_load_up_to_max_and_back_to_min(tmp_path):
    import ray
    from ray import serve

    from raysynth.config import EngineConfig, ServeConfig
    from raysynth.pipeline import init_ray
    from raysynth.serve import start_server, wait_until_healthy

    ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)
    for name in ("RAYSYNTH_API_KEY", "RAYSYNTH_ADMIN_KEY"):
        os.environ.pop(name, None)  # loopback: inference without a key, admin off
    init_ray()
    # One ongoing request per replica is the target: eight at once ask for more replicas than allowed.
    # Short delays so the test sees both decisions within its bounds (Serve's defaults: 30 s and 600 s).
    cfg = ServeConfig(run_dir=tmp_path / "run", port=PORT, num_cpus=0, min_replicas=1, max_replicas=2,
                      target_ongoing_requests=1, upscale_delay_s=2, downscale_delay_s=10, max_ongoing_requests=8,
                      # An explicit KV cache: the default 0.1 share of RAM, on CPU the engine's whole budget,
                      # came out negative once a replica's own memory was taken from it.
                      engine=EngineConfig(gpu_memory_utilization=0.1, cpu_kv_cache_tokens=4096))
    try:
        start_server(cfg)
        wait_until_healthy(f"{BASE}/health", 300)
        assert running_replicas() == 1

        outcomes: list[str] = []
        peak = {"replicas": 1}

        async def one(c: openai.AsyncOpenAI) -> None:
            try:
                await c.chat.completions.create(model="current", max_tokens=48, temperature=0,
                                                messages=[{"role": "user", "content": "Tell me a story."}])
                outcomes.append("ok")
            except openai.APIError as exc:
                outcomes.append(type(exc).__name__)

        async def load() -> float | None:
            """Eight requests in flight until both replicas run (at most 240 s and 400 requests)."""
            c = openai.AsyncOpenAI(base_url=f"{BASE}/v1", api_key="none", max_retries=0, timeout=120)
            started, scaled = time.time(), None
            in_flight: set = set()
            while time.time() - started < 240 and len(outcomes) + len(in_flight) < 400:
                while len(in_flight) < 8:
                    in_flight.add(asyncio.ensure_future(one(c)))
                _, in_flight = await asyncio.wait(in_flight, timeout=1, return_when=asyncio.FIRST_COMPLETED)
                peak["replicas"] = max(peak["replicas"], running_replicas())
                if peak["replicas"] == 2 and scaled is None:
                    scaled = time.time() - started
                if scaled is not None and time.time() - started > scaled + 5:  # a few requests on both
                    break
            await asyncio.gather(*in_flight)
            return scaled

        scaled_in = asyncio.run(load())
        assert scaled_in is not None, f"still {running_replicas()} replica(s) after 240 s of load"
        assert outcomes and set(outcomes) == {"ok"}, outcomes  # scaling up failed no request
        back_in = until(lambda: running_replicas() == 1, 120)
        assert back_in is not None, f"{running_replicas()} replicas 120 s after the load stopped"
    finally:
        serve.shutdown()
        ray.shutdown()
