"""Ray Serve: the OpenAI-compatible app on the embedded model, driven by the official `openai`
client over 127.0.0.1; a bounded load test across a hot swap; an LLM step through the endpoint."""

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow

KEY = "test-key-123"
PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module: the embedded model as `it-0`; a second checkpoint to swap to."""
    import ray
    from ray import serve

    from raysynth.config import ServeConfig
    from raysynth.models import resolve_model
    from raysynth.pipeline import init_ray
    from raysynth.serve import start_server, wait_until_healthy

    os.environ["RAYSYNTH_NO_PROGRESS"] = "1"
    os.environ.pop("RAY_ADDRESS", None)
    os.environ["RAYSYNTH_API_KEY"] = KEY
    root = tmp_path_factory.mktemp("serve")
    base = Path(resolve_model("smollm2-135m"))
    second = root / "checkpoint-2"  # a new checkpoint as far as the server can tell: another directory
    second.mkdir()
    for item in base.iterdir():
        (second / item.name).symlink_to(item)
    init_ray()
    # num_cpus=0: on this 2-core machine the replica's logical CPU would leave the endpoint test's Ray
    # Data stage (a read task needs a whole CPU) waiting forever; vLLM uses the cores either way.
    cfg = ServeConfig(run_dir=root / "run", model=str(base), model_name="it-0", port=PORT, poll_s=0.5,
                      max_tokens_limit=256, num_cpus=0)
    start_server(cfg)
    wait_until_healthy(f"{BASE}/health", 300)
    yield {"run_dir": cfg.run_dir, "second": second}
    serve.shutdown()
    ray.shutdown()
    os.environ.pop("RAYSYNTH_API_KEY", None)


def client(key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{BASE}/v1", api_key=key, max_retries=0, timeout=120)


def test_models_chat_stream_and_completions(server):
    c = client()
    assert [m.id for m in c.models.list().data] == ["it-0"]
    chat = c.chat.completions.create(model="it-0", messages=[{"role": "user", "content": "Say hello."}],
                                     max_tokens=8, temperature=0)
    assert chat.model == "it-0" and chat.choices[0].message.content.strip()
    assert chat.usage.completion_tokens > 0 and chat.usage.prompt_tokens > 5

    chunks = list(c.chat.completions.create(model="current", messages=[{"role": "user", "content": "Count to five."}],
                                            max_tokens=12, temperature=0, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert len(chunks) > 3 and text.strip() and chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert {ch.model for ch in chunks} == {"it-0"}

    done = c.completions.create(model="it-0", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert done.model == "it-0" and done.choices[0].text and done.object == "text_completion"


def test_auth_validation_and_unknown_model(server):
    with pytest.raises(openai.AuthenticationError):
        client("wrong").models.list()
    c = client()
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="it-0", messages=[{"role": "robot", "content": "hi"}], max_tokens=4)
    with pytest.raises(openai.BadRequestError) as too_many:
        c.chat.completions.create(model="it-0", messages=[{"role": "user", "content": "hi"}], max_tokens=5000)
    assert "limit" in str(too_many.value)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    malformed = httpx.post(f"{BASE}/v1/chat/completions", content=b"{not json",
                           headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["error"]["type"] == "invalid_request_error"


def test_llm_step_through_the_endpoint(server, tmp_path):
    """EndpointStage: an LLM step whose engine is this server (e.g. a remote judge)."""
    from raysynth.config import EndpointConfig, EngineConfig, JudgeConfig
    from raysynth.pipeline import Lineage, run_llm_stage, write_source_stage
    from raysynth.steps.judge import judge_steps, pairwise_rows
    from raysynth.store import RunDir

    run = RunDir(tmp_path / "run")
    lineage = Lineage("test", 0, "endpoint")
    pairs = [{"pair_id": "p1", "instruction": "Name a fruit.", "a": "An apple.", "b": "A chair."}]
    source = write_source_stage(run, 0, "pairs", pairwise_rows(pairs), {"n": 1}, lineage)
    engine = EngineConfig(batch_size=2, endpoint=EndpointConfig(base_url=f"{BASE}/v1", model="current",
                                                                api_key_env="RAYSYNTH_API_KEY", structured_outputs=False))
    step = judge_steps(JudgeConfig())["pairwise"]
    stage = run_llm_stage(run, 0, step, source, engine, "", lineage)
    stats = stage.stats()
    assert stats.rows_in == 2 and stats.tokens_out > 0
    assert stats.rows_out + sum(stats.rejected.values()) == 2 and "endpoint_error" not in stats.rejected


def test_load_across_hot_swap_loses_nothing(server):
    """200 requests, 8 at a time; after 40 the run is pointed at checkpoint 2 (POST /admin/swap).
    Requests keep flowing while it loads (paced, so the load spans the switch); none may fail, and
    requests sent after the first response from the new model must all report it."""
    total, concurrency = 200, 8
    results: list[tuple[float, float, str]] = []  # (sent, received, model id)
    failures: list[str] = []
    state = {"sent": 0, "swap_requested": False, "first_new": None}

    async def worker(c: openai.AsyncOpenAI) -> None:
        while state["sent"] < total:
            if state["swap_requested"] and state["first_new"] is None:
                if state["sent"] >= total - 30:
                    await asyncio.sleep(0.5)  # keep the last 30 for after the switch
                    continue
                await asyncio.sleep(2.0)  # pace the load while the new model loads
            state["sent"] += 1
            sent = time.time()
            try:
                reply = await c.chat.completions.create(
                    model="current", messages=[{"role": "user", "content": f"Say a word. ({state['sent']})"}],
                    max_tokens=4, temperature=0)
                results.append((sent, time.time(), reply.model))
                if reply.model == "it-1" and state["first_new"] is None:
                    state["first_new"] = time.time()
            except Exception as exc:  # counted: the test asserts there are none
                failures.append(f"{type(exc).__name__}: {exc}")
            if len(results) + len(failures) == 40 and not state["swap_requested"]:
                state["swap_requested"] = True
                async with httpx.AsyncClient() as http:
                    answer = await http.post(f"{BASE}/admin/swap", json={"model": str(server["second"]), "name": "it-1"},
                                             headers={"Authorization": f"Bearer {KEY}"})
                assert answer.status_code == 202, answer.text

    async def main() -> None:
        c = openai.AsyncOpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0, timeout=300)
        await asyncio.wait_for(asyncio.gather(*(worker(c) for _ in range(concurrency))), timeout=420)

    asyncio.run(main())
    assert not failures, failures[:5]
    assert len(results) == total
    assert state["first_new"] is not None, "the server never switched"
    after = [model for sent, _, model in results if sent > state["first_new"]]
    assert len(after) >= 20 and set(after) == {"it-1"}
    assert sum(model == "it-0" for _, _, model in results) >= 40
    pointer = json.loads((server["run_dir"] / "current_model.json").read_text())
    assert pointer["name"] == "it-1"
    assert [m.id for m in client().models.list().data] == ["it-1"]  # the old model was retired
