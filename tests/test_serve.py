"""Ray Serve: the OpenAI-compatible app on the embedded model, driven by the official `openai`
client over 127.0.0.1; a bounded load test across a hot swap; an LLM step through the endpoint."""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pandas as pd
import pytest
from flaky_server import FlakyProxy

from conftest import kept_and_rejected, run_raysynth
from raysynth.registry import read_registry
from tiny_models import build_shifted_head_copy

pytestmark = pytest.mark.slow

KEY = "test-key-123"
ADMIN = "admin-key-456"
PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"
FIXED_PROMPT = "What is the capital of France?"  # answered greedily in one token by both checkpoints


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module: the embedded model as `it-0`. Registered beside it: `it-1` (other
    weights), `it-2` (the embedded model again, under a new name), and two broken checkpoints."""
    import ray
    from ray import serve

    from raysynth.config import ServeConfig
    from raysynth.models import resolve_model
    from raysynth.pipeline import init_ray
    from raysynth.registry import register_model
    from raysynth.serve import start_server, wait_until_healthy

    # Replicas read keys from their own environment: it must be set before Ray starts its workers.
    ray.shutdown()
    os.environ["RAYSYNTH_NO_PROGRESS"] = "1"
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.pop("RAYSYNTH_ADMIN_KEY", None)
    os.environ["RAYSYNTH_API_KEY"] = KEY
    root = tmp_path_factory.mktemp("serve")
    base = Path(resolve_model("smollm2-135m"))
    run_dir = root / "run"
    register_model(run_dir, "it-1", build_shifted_head_copy(base, root / "checkpoint-2"), 1, make_current=False)
    register_model(run_dir, "it-2", base, 2, make_current=False)
    register_model(run_dir, "truncated", build_truncated_copy(base, root / "truncated"), 3, make_current=False)
    register_model(run_dir, "bad-config", build_bad_config_copy(base, root / "bad-config"), 4, make_current=False)
    admin_key_file = root / "admin_key"
    admin_key_file.write_text(ADMIN)
    init_ray()
    # num_cpus=0: on this 2-core machine the replica's logical CPU would leave the endpoint test's Ray
    # Data stage (a read task needs a whole CPU) waiting forever; vLLM uses the cores either way.
    # keep_previous 1: the model before a swap stays addressable by name. At most 8 requests run on
    # the replica and 12 wait; more are refused with 503 (the load test stays under 8 + 12 at once).
    cfg = ServeConfig(run_dir=run_dir, model=str(base), model_name="it-0", port=PORT, poll_s=0.5,
                      max_tokens_limit=256, num_cpus=0, keep_previous=1, max_ongoing_requests=8,
                      max_queued_requests=12, admin_key_file=admin_key_file, max_body_bytes=64 * 1024,
                      health_check_period_s=2, health_check_timeout_s=10)
    start_server(cfg)
    wait_until_healthy(f"{BASE}/health", 300)
    yield {"run_dir": run_dir, "base": base, "admin_key_file": admin_key_file}
    serve.shutdown()
    ray.shutdown()
    os.environ.pop("RAYSYNTH_API_KEY", None)


def build_truncated_copy(base: Path, path: Path) -> Path:
    """The embedded model with its weights file cut in half, as an interrupted copy leaves it."""
    shutil.copytree(base, path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return path


def build_bad_config_copy(base: Path, path: Path) -> Path:
    """Whole weights, but a config whose vocabulary does not match them: only loading it in vLLM fails."""
    shutil.copytree(base, path)
    config = json.loads((path / "config.json").read_text())
    config["vocab_size"] += 848
    (path / "config.json").write_text(json.dumps(config))
    return path


def client(key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{BASE}/v1", api_key=key, max_retries=0, timeout=120)


def admin(method: str, route: str, key: str | None = ADMIN, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{BASE}/admin/{route}", headers=headers, timeout=300, **kwargs)


def ask(model: str = "current") -> tuple[str, str]:
    reply = client().chat.completions.create(model=model, messages=[{"role": "user", "content": FIXED_PROMPT}],
                                             max_tokens=1, temperature=0)
    return reply.model, reply.choices[0].message.content


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


def test_models_list_names_without_server_paths(server):
    listed = httpx.get(f"{BASE}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert listed.status_code == 200 and str(server["base"]) not in listed.text and "root" not in listed.text


def test_auth_validation_and_unknown_model(server):
    with pytest.raises(openai.AuthenticationError):
        client("wrong").models.list()
    assert httpx.get(f"{BASE}/v1/models").status_code == 401  # no key at all
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
    huge = json.dumps({"model": "it-0", "messages": [{"role": "user", "content": "x" * 100_000}]})
    oversized = httpx.post(f"{BASE}/v1/chat/completions", content=huge,
                           headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert oversized.status_code == 413 and "limit" in oversized.json()["error"]["message"]


def test_admin_needs_its_own_key_and_is_off_without_one(server):
    assert admin("GET", "status", key=None).status_code == 401
    assert admin("GET", "status", key="wrong").status_code == 401
    assert admin("GET", "status", key=KEY).status_code == 401  # the inference key is not the admin key
    assert admin("GET", "status").json()["current"] == "it-0"
    server["admin_key_file"].unlink()  # no admin key configured anywhere: the admin routes are off
    try:
        off = admin("POST", "swap", json={"model": "it-1"})
        assert off.status_code == 403 and "admin routes are off" in off.json()["error"]["message"]
        assert admin("GET", "status").status_code == 403
    finally:
        server["admin_key_file"].write_text(ADMIN)
    assert ask() == ("it-0", ask("it-0")[1])


def test_swaps_only_to_registered_models(server):
    before = admin("GET", "status").json()["loaded"]
    for target in (str(server["base"]), "HuggingFaceTB/SmolLM2-135M-Instruct"):  # a directory, a hub id
        refused = admin("POST", "swap", json={"model": target})
        assert refused.status_code == 400 and "raysynth models add" in refused.json()["error"]["message"]
    assert admin("POST", "swap", json={"model": "it-1", "name": "x"}).status_code == 400  # no renaming over HTTP
    assert admin("GET", "status").json()["loaded"] == before  # nothing was loaded


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
    assert stats.rows_out + sum(stats.rejected.values()) == 2
    assert not [r for r in stats.rejected if r.startswith("endpoint")], stats.rejected


def test_over_the_queue_limit_answers_503(server):
    """60 long requests at once against 8 running + 12 waiting: the rest are refused at once with 503
    (not queued without bound, not failed otherwise), and every accepted one completes."""
    async def one(c: openai.AsyncOpenAI) -> str:
        try:
            await c.chat.completions.create(model="it-0", messages=[{"role": "user", "content": "Tell me a story."}],
                                            max_tokens=64, temperature=0, extra_body={"min_tokens": 64})
            return "ok"
        except openai.APIStatusError as exc:
            return str(exc.status_code)

    async def main() -> list[str]:
        c = openai.AsyncOpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0, timeout=300)
        return await asyncio.wait_for(asyncio.gather(*(one(c) for _ in range(60))), timeout=500)

    outcomes = asyncio.run(main())
    assert set(outcomes) <= {"ok", "503"}, outcomes
    # 60 arrive within a second or two while each accepted one runs for seconds: about 40 would be
    # refused if they all arrived at once; arrivals spread out while early ones finish, so at least a
    # quarter of that overflow must be (with 40 requests, a loaded CI machine refused 9, 15 and 20).
    assert outcomes.count("503") >= 10, outcomes
    assert outcomes.count("ok") >= 8 + 12, outcomes


def test_load_across_hot_swap_loses_nothing(server):
    """200 one-token requests of one fixed prompt, 8 at a time; after 40 the run is pointed at
    checkpoint 2 (POST /admin/swap), whose weights answer that prompt differently. Requests keep
    flowing while it loads (paced, so the load spans the switch), and long streamed requests run
    back to back until the switch, so some are in flight across it. None may fail; every answer is
    the one the model it names gives (a server that only relabelled the old model would fail here);
    requests sent after the first response from the new model must all report it."""
    total, concurrency = 200, 8
    results: list[tuple[float, float, str, str]] = []  # (sent, received, model id, text)
    streams: list[tuple[float, float, set[str], int]] = []  # (sent, last chunk, model ids, chunks)
    failures: list[str] = []
    state = {"sent": 0, "swap_requested": False, "first_new": None}

    async def ask(c: openai.AsyncOpenAI, model: str = "current") -> tuple[str, str]:
        reply = await c.chat.completions.create(model=model, messages=[{"role": "user", "content": FIXED_PROMPT}],
                                                max_tokens=1, temperature=0)
        return reply.model, reply.choices[0].message.content

    async def worker(c: openai.AsyncOpenAI) -> None:
        while state["sent"] < total:
            if state["swap_requested"] and state.get("switched_at") is None:
                if state["sent"] >= total - 60:
                    await asyncio.sleep(0.5)  # keep the last 60 for after the switch
                    continue
                await asyncio.sleep(2.0)  # pace the load while the new model loads
            state["sent"] += 1
            sent = time.time()
            try:
                model, text = await ask(c)
                results.append((sent, time.time(), model, text))
                if model == "it-1" and state["first_new"] is None:
                    state["first_new"] = time.time()
            except Exception as exc:  # counted: the test asserts there are none
                failures.append(f"{type(exc).__name__}: {exc}")
            if len(results) + len(failures) == 40 and not state["swap_requested"]:
                state["swap_requested"] = True
                async with httpx.AsyncClient(timeout=300) as http:  # answers once this replica switched
                    answer = await http.post(f"{BASE}/admin/swap", json={"model": "it-1"},
                                             headers={"Authorization": f"Bearer {ADMIN}"})
                assert answer.status_code == 200 and answer.json()["current"] == "it-1", answer.text

    async def long_streams(c: openai.AsyncOpenAI) -> None:
        while not state["swap_requested"]:
            await asyncio.sleep(0.2)
        while state.get("switched_at") is None and state["first_new"] is None:
            sent, models, chunks = time.time(), set(), 0
            try:
                stream = await c.chat.completions.create(
                    model="current", messages=[{"role": "user", "content": "Tell me a long story."}],
                    max_tokens=96, temperature=0, stream=True, extra_body={"min_tokens": 96})
                async for chunk in stream:
                    models.add(chunk.model)
                    chunks += 1
                streams.append((sent, time.time(), models, chunks))
            except Exception as exc:
                failures.append(f"stream {type(exc).__name__}: {exc}")

    async def watch_status() -> None:
        """When the server first reports the new model as current (polled 5 times a second)."""
        async with httpx.AsyncClient(timeout=60) as http:
            while state.get("switched_at") is None:
                answer = await http.get(f"{BASE}/admin/status", headers={"Authorization": f"Bearer {ADMIN}"})
                if answer.json()["current"] == "it-1":
                    state["switched_at"] = time.time()
                await asyncio.sleep(0.2)

    async def main() -> None:
        c = openai.AsyncOpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0, timeout=300)
        state["before"] = await ask(c)
        await asyncio.wait_for(asyncio.gather(*(worker(c) for _ in range(concurrency)),
                                              *(long_streams(c) for _ in range(2)), watch_status()), timeout=420)
        state["after"] = await ask(c, "it-1")

    asyncio.run(main())
    assert not failures, failures[:5]
    assert len(results) == total
    assert state["first_new"] is not None, "the server never switched"
    # Checkpoint 2 answers the prompt otherwise, and every response is its named model's answer.
    answers = {"it-0": state["before"][1], "it-1": state["after"][1]}
    assert state["before"][0] == "it-0" and answers["it-0"] != answers["it-1"], answers
    wrong = [(model, text) for _, _, model, text in results if text != answers[model]]
    assert not wrong, (answers, wrong[:5])
    after = [model for sent, _, model, _ in results if sent > state["first_new"]]
    assert len(after) >= 20 and set(after) == {"it-1"}
    assert sum(model == "it-0" for _, _, model, _ in results) >= 40
    # In flight across the switch: streams the old model answered, still sending after the server
    # reported the new model as current.
    assert streams and all(len(models) == 1 and chunks > 1 for _, _, models, chunks in streams), streams
    across = [s for s in streams if s[2] == {"it-0"} and s[1] > state["switched_at"]]
    assert across, f"no stream was in flight across the switch: {streams}"
    assert read_registry(server["run_dir"]).current == "it-1"
    # keep_previous 1: the old model still answers by name, with its own weights.
    assert [m.id for m in client().models.list().data] == ["it-1", "it-0"]
    old = client().chat.completions.create(model="it-0", messages=[{"role": "user", "content": FIXED_PROMPT}],
                                           max_tokens=1, temperature=0)
    assert (old.model, old.choices[0].message.content) == ("it-0", answers["it-0"])

    # One more swap: the oldest model beyond keep_previous is retired.
    assert admin("POST", "swap", json={"model": "it-2"}).status_code == 200
    assert [m.id for m in client().models.list().data] == ["it-2", "it-1"]
    with pytest.raises(openai.NotFoundError):
        client().chat.completions.create(model="it-0", messages=[{"role": "user", "content": "hi"}], max_tokens=1)


def test_rollback_serves_the_earlier_model(server):
    """After it-2 is current, `raysynth rollback` (to the champion before it: it-1, still loaded) and
    `raysynth rollback --to it-0` (retired, loaded again) make the next responses come from those
    models, by name and by weights. Then a name that moves to another directory."""
    answers = {"it-0": ask("it-2")[1], "it-1": ask("it-1")[1]}  # it-2 is it-0's checkpoint
    assert ask()[0] == "it-2"
    for name, to in (("it-1", ()), ("it-0", ("--to", "it-0"))):
        result = run_raysynth("rollback", "--run-dir", str(server["run_dir"]), *to)
        assert f"champion -> {name}" in result.stdout
        deadline = time.time() + 300
        while admin("GET", "status").json()["current"] != name:  # replicas poll the registry
            assert time.time() < deadline, f"the server did not roll back to {name}"
            time.sleep(0.5)
        assert ask() == (name, answers[name])
    registry = read_registry(server["run_dir"])
    assert registry.current == "it-0" and registry.models["it-2"].status == "rolled back"
    assert [e.event for e in registry.timeline[-2:]] == ["rolled back", "rolled back"]

    # A name moved to another directory (it-1 re-registered as the embedded model): serving it loads
    # the new directory, and the engine of the old one is shut down, not leaked.
    from raysynth.registry import register_model

    register_model(server["run_dir"], "it-1", server["base"], 5, make_current=False)
    before = settled_engine_processes()  # it-2, retired by the rollback above, may still be shutting down
    assert admin("POST", "swap", json={"model": "it-1"}).status_code == 200
    assert ask() == ("it-1", answers["it-0"])  # the embedded model's weights under the old name
    # The new engine's processes came and the displaced one's went: no more processes than before.
    now = settled_engine_processes()
    assert len(now) <= len(before), f"the displaced engine was not shut down: {describe(before)} -> {describe(now)}"
    assert admin("POST", "swap", json={"model": "it-0"}).json()["current"] == "it-0"


def test_a_broken_checkpoint_is_refused_while_the_old_model_serves(server):
    """Swaps to a truncated weights file and to a config vLLM cannot load: each refused with its reason
    (422), the registry unchanged, and a concurrent load across both attempts has no failure."""
    outcomes: list[str] = []
    refusals: dict[str, httpx.Response] = {}

    async def load(stop: asyncio.Event) -> None:
        c = openai.AsyncOpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0, timeout=120)
        while not stop.is_set():
            try:
                reply = await c.chat.completions.create(model="current", max_tokens=1, temperature=0,
                                                        messages=[{"role": "user", "content": FIXED_PROMPT}])
                outcomes.append(reply.model)
            except Exception as exc:  # counted: the test asserts there are none
                outcomes.append(f"{type(exc).__name__}: {exc}")

    async def main() -> None:
        stop = asyncio.Event()
        workers = [asyncio.create_task(load(stop)) for _ in range(4)]
        async with httpx.AsyncClient(timeout=300, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
            for name in ("truncated", "bad-config"):
                refusals[name] = await http.post(f"{BASE}/admin/swap", json={"model": name})
        await asyncio.sleep(1)
        stop.set()
        await asyncio.gather(*workers)

    asyncio.run(main())
    assert len(outcomes) >= 8 and set(outcomes) == {"it-0"}, outcomes[:5]
    for name, refusal in refusals.items():
        assert refusal.status_code == 422 and "still serving it-0" in refusal.json()["error"]["message"], refusal.text
    assert "model.safetensors is damaged" in refusals["truncated"].json()["error"]["message"]
    status = admin("GET", "status").json()
    assert status["current"] == "it-0" and set(status["failures"]) == {"truncated", "bad-config"}
    assert read_registry(server["run_dir"]).current == "it-0"


def test_a_worse_candidate_is_rejected_while_the_champion_serves(server, tmp_path):
    """The promotion gate on the real engine, with the server up: a candidate made deliberately worse
    (the champion's weights with the output layer shifted by one token: every answer garbled) is
    evaluated against the champion it-0 on the same prompts, judged by the frozen champion, and
    rejected. The server answers from it-0 throughout, and `raysynth models list` shows the rejection
    and its reason."""
    from raysynth.promotion import Contender, challenge
    from raysynth.recipes.isheep.config import ISheepRun
    from raysynth.store import RunDir

    run_dir, base = server["run_dir"], str(server["base"])
    assert read_registry(run_dir).current == "it-0"
    worse = build_shifted_head_copy(server["base"], tmp_path / "worse")
    cfg = ISheepRun.model_validate({"recipe": "isheep", "run_dir": str(run_dir), "eval": {
        "limit": 6, "generation": {"temperature": 0.0, "max_tokens": 48, "structured": False},
        "judge": {"pairwise": {"max_tokens": 64}, "max_explanation_chars": 60}}})
    run = RunDir(run_dir)
    served: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                served.append(ask()[0])
            except Exception as exc:  # counted: the test asserts there are none
                served.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.5)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        champion, verdict = challenge(run, 9, cfg, worse, base, tmp_path / "data.parquet",
                                      Contender("it-0", base, 0), base)
    finally:
        stop.set()
        thread.join(180)
        # The evaluation's kept engine holds a CPU: the next tests' Ray Data stages need it on 2 cores.
        run.engines.release()
    assert not verdict.promote and champion.name == "it-0", verdict.reason
    assert len(served) >= 4 and set(served) == {"it-0"}, served[:5]
    entry = read_registry(run_dir).models["isheep-iter-09"]
    assert entry.status == "rejected" and entry.reason == verdict.reason and entry.versus["champion"] == "it-0"
    result = json.loads((run_dir / "eval" / "iter-09.json").read_text())
    assert result["winrate"]["judge"] == base and result["paired"]["baseline"] == base
    assert ask()[0] == "it-0" and read_registry(run_dir).current == "it-0"
    listed = run_raysynth("models", "list", "--run-dir", str(run_dir))
    row = next(line for line in listed.stdout.splitlines() if "isheep-iter-09" in line)
    assert "rejected" in row and "rejected:" in listed.stdout


def judge_through(run_dir: Path, base_url: str, **settings):
    """Three pairs judged in both orders (6 rows, batches of 2) by the model behind `base_url`."""
    from raysynth.config import EndpointConfig, EngineConfig, JudgeConfig
    from raysynth.pipeline import Lineage, run_llm_stage, write_source_stage
    from raysynth.steps.judge import judge_steps, pairwise_rows
    from raysynth.store import RunDir

    endpoint = {"timeout_s": 60, "max_retries": 0, **settings.pop("endpoint", {})}
    run = RunDir(run_dir)
    lineage = Lineage("test", 0, "endpoint")
    pairs = [{"pair_id": f"p{i}", "instruction": f"Name a {thing}.", "a": f"A {thing}.", "b": "A chair."}
             for i, thing in enumerate(("fruit", "colour", "planet"))]
    source = write_source_stage(run, 0, "pairs", pairwise_rows(pairs), {"n": 3}, lineage)
    engine = EngineConfig(batch_size=2, **settings, endpoint=EndpointConfig(
        base_url=base_url, model="current", api_key_env="RAYSYNTH_API_KEY", structured_outputs=False, **endpoint))
    return run_llm_stage(run, 0, judge_steps(JudgeConfig())["pairwise"], source, engine, "", lineage)


def assert_same_rows(stage, reference) -> None:
    for ours, theirs in zip(kept_and_rejected(stage.path), kept_and_rejected(reference.path)):
        assert list(ours["id"]) == list(theirs["id"])
        columns = [c for c in ours.columns if c not in ("tokens_in", "tokens_out")]
        pd.testing.assert_frame_equal(ours[columns], theirs[columns], check_dtype=False)


def test_an_endpoint_that_refuses_and_fails_is_retried_and_loses_nothing(server, tmp_path):
    """Nothing listens at first (refused connections); then 6 requests fail (500s and connections
    dropped without an answer). The stage retries them and commits what a direct run commits."""
    direct = judge_through(tmp_path / "direct", f"{BASE}/v1")
    proxy = FlakyProxy(BASE, PORT + 1)
    threading.Timer(2.0, proxy.set, args=("fail", 6)).start()
    try:
        flaky = judge_through(tmp_path / "flaky", proxy.base_url, batch_retries=8)
    finally:
        proxy.close()
    assert proxy.seen["500"] == 3 and proxy.seen["dropped"] == 3, proxy.seen
    stats = flaky.stats()
    assert stats.rows_in == 6 and stats.rows_out + sum(stats.rejected.values()) == 6
    assert not [r for r in stats.rejected if r.startswith("endpoint")], stats.rejected
    assert_same_rows(flaky, direct)


def test_an_endpoint_that_never_answers_stops_the_run_and_a_rerun_completes(server, tmp_path):
    """A server that accepts and never answers: the stage stops (StageFailed naming it) within its
    timeouts, and `raysynth run` exits 4 with the command that resumes; once the server answers, the
    stage resumes and commits what a direct run commits, nothing twice."""
    from conftest import TINY_CONDOR, raysynth_cmd
    from raysynth.faults import StageFailed

    proxy = FlakyProxy(BASE, PORT + 2)
    proxy.set("hang")
    try:
        started = time.time()
        with pytest.raises(StageFailed, match=r"iter-00/judge-pairwise-\w+: MachineryFailure: .*requests failed 2 times"):
            judge_through(tmp_path / "run", proxy.base_url, batch_retries=1, endpoint={"timeout_s": 2})
        assert time.time() - started < 120 and proxy.seen["hung"] >= 2

        # The same through `raysynth run` (Condor, every LLM step on the endpoint), as a second job on
        # this test's Ray: a second local Ray beside it would compete for the two cores.
        import ray

        config = tmp_path / "condor.yaml"
        config.write_text(TINY_CONDOR.format(run_dir=tmp_path / "condor", rounds=1, keep_alive="true",
                                             answer_temperature=0))
        endpoint = {"base_url": proxy.base_url, "model": "current", "timeout_s": 2, "max_retries": 0,
                    "api_key_env": "RAYSYNTH_API_KEY"}
        run = subprocess.run(raysynth_cmd("run", str(config), "--set", "engine.batch_retries=1",
                                          *(a for k, v in endpoint.items() for a in ("--set", f"engine.endpoint.{k}={v}"))),
                             capture_output=True, text=True, timeout=600,
                             env={**os.environ, "RAYSYNTH_NO_PROGRESS": "1",
                                  "RAY_ADDRESS": ray.get_runtime_context().gcs_address})
        assert run.returncode == 4, run.stdout[-2000:] + run.stderr[-3000:]
        assert "iter-00/question" in run.stderr and "resume: raysynth run" in run.stderr
        assert "Traceback" not in run.stderr

        proxy.set("forward")
        resumed = judge_through(tmp_path / "run", proxy.base_url)
    finally:
        proxy.close()
    assert_same_rows(resumed, judge_through(tmp_path / "direct", f"{BASE}/v1"))
    assert resumed.done_count() == len(resumed.done_inputs()) == 6  # every input committed once


def engine_processes() -> list:
    """The vLLM engine processes of the server's replicas: the children of Ray's ServeReplica actors."""
    import psutil

    replicas = [p for p in psutil.process_iter(["cmdline"]) if "ServeReplica:raysynth" in " ".join(p.info["cmdline"] or [])]
    return [child for replica in replicas for child in replica.children(recursive=True)]


def settled_engine_processes(timeout_s: float = 120) -> list:
    """The engine processes once no displaced engine is still being shut down (`/admin/status` lists
    them under `retiring` from the swap on): a count taken during a retirement counts the leaving one."""
    deadline = time.time() + timeout_s
    while retiring := admin("GET", "status").json()["retiring"]:
        assert time.time() < deadline, f"a displaced engine was not shut down within {timeout_s:.0f} s: {retiring}"
        time.sleep(0.5)
    return engine_processes()


def describe(processes: list) -> list[str]:
    """pid and name of each process still running, for an assertion's message."""
    import psutil

    described = []
    for process in processes:
        try:
            described.append(f"{process.pid} {process.name()}")
        except psutil.Error:
            described.append(f"{process.pid} (gone)")
    return described


def test_a_dead_engine_is_replaced_and_a_broken_pointer_does_not_crash_loop(server):
    """The registry is pointed at the truncated checkpoint from the driver (as a recipe might), then
    every engine process of the replica is killed. Requests caught in it get 503 at once; Serve's
    health check replaces the replica within HEAL_S (3 checks 2 s apart, plus a model load); the new
    replica cannot load the pointer's model, serves the most recent earlier one that loads, and says why."""
    from raysynth.registry import make_current

    heal_s = 240  # documented in the README: health_check_period_s x 3 + a model load (~30 s here)
    make_current(server["run_dir"], "truncated")
    engines = engine_processes()
    assert engines, "found no engine process to kill"
    for process in engines:
        process.send_signal(signal.SIGKILL)
    killed_at = time.time()
    caught = httpx.post(f"{BASE}/v1/chat/completions", timeout=60, headers={"Authorization": f"Bearer {KEY}"},
                        json={"model": "current", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert caught.status_code in (200, 503), caught.text  # 503 from the dead one, or already a new replica
    while True:
        assert time.time() - killed_at < heal_s, "the server did not recover"
        try:
            if httpx.get(f"{BASE}/health", timeout=5).status_code == 200 and ask()[0] == "it-0":
                break
        except (httpx.HTTPError, openai.APIError):
            pass
        time.sleep(2)
    status = admin("GET", "status").json()
    assert status["current"] == "it-0" and status["registry_current"] == "truncated"
    assert "damaged" in status["failures"]["truncated"]["error"]
    assert not set(engines) & set(engine_processes())  # a new replica with new engines
