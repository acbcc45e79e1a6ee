"""The vLLM engine: the only module that imports vllm.

`VLLMEngine` loads a model once and generates for each batch it is given: input column
`prompt_messages` (JSON chat messages), output columns `completions` (list of n texts),
`finish_reasons`, `tokens_in`, `tokens_out` and `engine_error`. Several batches are in flight on one
engine at once (`RequestLoop`), each row sampling on a seed of its own. A row that fails on its own
comes back with `engine_error` set (a row reason: too long, malformed, refused by vLLM); an engine
that fails a step fails every batch in flight with MachineryFailure and its actor restarts, so the
batches are redone (raysynth/faults.py). It runs as a long-lived Ray actor shared by consecutive
stages on the same model, or inside `VLLMStage`, a Ray Data actor pool of one stage.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pandas as pd

from raysynth.config import EngineConfig, SamplingConfig
from raysynth.faults import MachineryFailure
from raysynth.hashing import stable_hash

log = logging.getLogger(__name__)

CPU_RAM_SHARE = 0.3  # the most RAM a CPU engine's KV cache takes when gpu_memory_utilization is unset
# vLLM rounds the cache to whole blocks and refuses one that cannot hold a max_model_len request.
KV_HEADROOM_TOKENS = 512
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


def choose_dtype(engine: EngineConfig, on_gpu: bool) -> str:
    """auto: bf16 on GPUs, float32 on every CPU. On an AVX2-only CPU bf16 is emulated (24 tok/s against
    224 in float32). On a CPU with native bf16 (AMX) it is fast, but a batch's bf16 draws changed with
    what the engine had generated before it: a batch redone on a fresh engine after a resume differed
    from the uninterrupted run (I-SHEEP's resume test, twice), and float32's did not. Set
    engine.dtype: bfloat16 to trade that for speed."""
    if engine.dtype != "auto":
        return engine.dtype
    return "bfloat16" if on_gpu else "float32"


def actor_runtime_env(engine: EngineConfig) -> dict[str, Any]:
    """Ray options for an engine actor's process. A CPU engine binding every core gets
    OMP_NUM_THREADS (the driver's core count) when its process starts: Ray otherwise starts it with
    num_cpus (1), OpenMP reads that once, and an in-process engine runs in the actor's own process.
    Measured: the kept engine generated on one thread (0.47x bare vLLM's tokens/s on 2 cores), and
    raising the count later in one thread made a Ray Data engine's threads disagree, which vLLM's CPU
    attention refuses (thread_num 1 vs. 2). On a cluster of unlike CPU nodes, set cpu_threads_bind.
    Every CPU engine gets GOMP_SPINCOUNT (engine.omp_spin_count), also read once, at OpenMP's start."""
    if engine.endpoint is not None or engine.num_gpus > 0:
        return {}
    env = {"GOMP_SPINCOUNT": str(engine.omp_spin_count)}
    if engine.cpu_threads_bind == "all":
        env["OMP_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))
    return {"runtime_env": {"env_vars": env}}


def kv_bytes_per_token(model_dir: str, dtype: str) -> int | None:
    """Bytes of KV cache one token takes (keys and values of every layer), from the model's
    config.json; None when that is not a local file or lacks the fields (a hub id, an unusual model)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        config = config.get("text_config", config)
        heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        kv_heads = config.get("num_key_value_heads") or heads
        return 2 * config["num_hidden_layers"] * kv_heads * head_dim * DTYPE_BYTES[dtype]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cpu_kv_cache_bytes(engine: EngineConfig, model_dir: str, dtype: str) -> int | None:
    """An explicit KV cache for a CPU engine: room for a batch of full-length rows (or
    cpu_kv_cache_tokens), at most CPU_RAM_SHARE of RAM. None: let vLLM take CPU_RAM_SHARE."""
    per_token = kv_bytes_per_token(model_dir, dtype)
    if per_token is None:
        return None
    tokens = max(engine.cpu_kv_cache_tokens or engine.batch_size * engine.max_model_len, engine.max_model_len)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(min((tokens + KV_HEADROOM_TOKENS) * per_token, CPU_RAM_SHARE * ram))


def engine_kwargs(engine: EngineConfig, model_dir: str, seed: int, offline: bool = False) -> dict[str, Any]:
    """Arguments for `vllm.LLM` (`offline`: the Ray Data stage and the bare-vLLM benchmark) or AsyncLLM."""
    on_gpu = engine.num_gpus > 0
    extra: dict[str, Any] = {}
    if offline and engine.in_process and engine.tensor_parallel_size == 1:
        # Engine core and worker in this process: each would otherwise be a new process importing
        # torch and vLLM again (measured ~15 s of a ~50 s stage start on CPU).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        extra["distributed_executor_backend"] = "uni"
    if not on_gpu and engine.cpu_threads_bind != "auto":
        cores = sorted(os.sched_getaffinity(0))
        bind = ",".join(map(str, cores)) if engine.cpu_threads_bind == "all" else engine.cpu_threads_bind
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
        if engine.cpu_threads_bind == "all":
            # Ray sets OMP_NUM_THREADS=num_cpus (1) in actors; the engine's own processes inherit it.
            os.environ["OMP_NUM_THREADS"] = str(len(cores))
    if offline and not on_gpu:
        # Every offline request carries its own seed, and vLLM rewinds a request's generator after a
        # partial prefill, which a CPU generator cannot ("CPU Generator does not use offset": the
        # engine died on a 256-row batch). Without chunked prefill no prompt is split across steps.
        extra["enable_chunked_prefill"] = False
    dtype = choose_dtype(engine, on_gpu)
    if not on_gpu and (engine.cpu_kv_cache_tokens is not None or engine.gpu_memory_utilization is None):
        # A cache the size of the work, not of RAM: it is allocated faster and vLLM skips the warm-up
        # pass it otherwise runs to measure memory (engine start 20.8 s -> 6.4 s here, smollm2-135m).
        # A share of RAM is the engine's whole budget on CPU: 0.1 of an 11 GiB NUMA node less the
        # engine's own 1.15 GiB comes out negative, and the engine fails to start.
        kv_bytes = cpu_kv_cache_bytes(engine, model_dir, dtype)
        if kv_bytes is not None:
            extra["kv_cache_memory_bytes"] = kv_bytes
    return dict(
        model=model_dir,
        dtype=dtype,
        max_model_len=engine.max_model_len,
        gpu_memory_utilization=engine.gpu_memory_utilization or (0.9 if on_gpu else CPU_RAM_SHARE),
        tensor_parallel_size=engine.tensor_parallel_size,
        enforce_eager=engine.enforce_eager,
        trust_remote_code=engine.trust_remote_code,
        seed=seed,
        enable_prefix_caching=engine.prefix_caching,
        **extra,
    )


def sampling_params(sampling: SamplingConfig, regex: str | None = None, json_schema: dict | None = None,
                    seed: int | None = None):
    """One request's sampling; its n samples draw with seeds seed .. seed + n - 1 (vLLM's own
    numbering), and only its final output is reported."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    structured = None
    if sampling.structured and (regex or json_schema):
        structured = StructuredOutputsParams(regex=regex) if regex else StructuredOutputsParams(json=json_schema)
    return SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens,
                          n=sampling.n, seed=seed, structured_outputs=structured,
                          output_kind=RequestOutputKind.FINAL_ONLY)


# Alpaca's preamble and sections: the plain prompt format of models without a chat template (base
# models, as in I-SHEEP's Llama-3 70B base runs).
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. Write a response that appropriately "
                   "completes the request.")


def plain_prompt(messages: list[dict[str, str]]) -> str:
    """`messages` as Alpaca-style text ending where the reply starts: a system message (or Alpaca's
    preamble), then each user turn as an instruction and each assistant turn as a response."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    parts = [system[0] if system else ALPACA_PREAMBLE]
    for message in messages:
        if message["role"] == "user":
            parts.append(f"### Instruction:\n{message['content']}")
        elif message["role"] == "assistant":
            parts.append(f"### Response:\n{message['content']}")
    return "\n\n".join(parts + ["### Response:\n"])


def chat_token_ids(tokenizer, messages: list[dict[str, str]], prompt_format: str = "chat") -> list[int]:
    """`messages` as the prompt's token ids, ending where the assistant's reply starts: through the
    model's chat template ("chat"), or as plain Alpaca-style text with the tokenizer's own special
    tokens ("plain")."""
    if prompt_format == "plain":
        return tokenizer.encode(plain_prompt(messages), add_special_tokens=True)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # The template already holds the special tokens; transformers 5 returns a dict for tokenize=True.
    return tokenizer.encode(text, add_special_tokens=False)


class InFlightBatch:
    """One batch's requests inside a RequestLoop: their outputs (a RequestOutput, or a row error's
    text) fill in as they finish."""

    def __init__(self, requests: list[tuple[Any, Any]]):
        self.requests = requests
        self.outputs: list[Any] = [None] * len(requests)
        self.left = len(requests)
        self.failure: BaseException | None = None
        self.done = threading.Event()
        if not requests:
            self.done.set()

    def finish(self, index: int, output: Any) -> None:
        self.outputs[index] = output
        self.left -= 1
        if self.left == 0:
            self.done.set()

    def fail(self, failure: BaseException) -> None:
        self.failure = failure
        self.done.set()


class RequestLoop:
    """One vLLM engine fed from several batches at once (continuous batching across batches). Each
    caller (an actor thread per batch in flight) queues its batch and waits; one thread adds queued
    requests and steps the engine while any is unfinished, so a new batch's rows join the running
    ones at the next step and the engine never drains at a batch's tail. Only that thread touches
    the engine: vLLM's LLMEngine is not thread-safe. That thread also builds the engine (`make_llm`,
    a `vllm.LLM`): OpenMP's thread count is a setting of each thread, and steps from a thread other
    than the one that loaded the model ran on a team whose count could differ from the one vLLM's
    CPU attention planned with ("thread_num == thread_num (2 vs. 1)", seen in CI).
    If a step fails, every batch in flight fails (the engine, not its rows, failed) and `on_failure`
    runs: in an actor, the process exits and Ray restarts it."""

    def __init__(self, make_llm: Any, on_failure: Any = None):
        self.on_failure = on_failure
        self.wake = threading.Condition()
        self.queued: list[InFlightBatch] = []
        self.running: dict[str, tuple[InFlightBatch, int]] = {}
        self.rows = 0  # rows queued or running
        self.failure: BaseException | None = None
        self.request_ids = itertools.count()
        self.llm: Any = None
        started = threading.Event()
        start_failure: list[BaseException] = []
        threading.Thread(target=self._loop, args=(make_llm, started, start_failure), name="vllm-steps",
                         daemon=True).start()
        started.wait()
        if start_failure:
            raise start_failure[0]

    def generate(self, requests: list[tuple[Any, Any]]) -> list[Any]:
        """The outputs of `requests` ((prompt, sampling params) pairs), in their order; a request
        vLLM refuses on its own comes back as its error's text."""
        batch = InFlightBatch(requests)
        with self.wake:
            if self.failure is not None:
                raise MachineryFailure(f"the engine failed earlier: {self.failure!r}"[:500])
            if requests:
                self.queued.append(batch)
                self.rows += len(requests)
                self.wake.notify()
        batch.done.wait()
        if batch.failure is not None:
            raise MachineryFailure(f"the engine failed with {len(requests)} rows of this batch in flight: "
                                   f"{type(batch.failure).__name__}: {batch.failure}"[:500]) from batch.failure
        return batch.outputs

    def _finish(self, batch: InFlightBatch, index: int, output: Any) -> None:
        with self.wake:
            self.rows -= 1
        batch.finish(index, output)

    def _loop(self, make_llm: Any, started: threading.Event, start_failure: list[BaseException]) -> None:
        try:
            self.llm = make_llm()
        except BaseException as exc:
            start_failure.append(exc)
            return
        finally:
            started.set()
        engine = self.llm.llm_engine
        queued: list[InFlightBatch] = []
        try:
            while True:
                with self.wake:
                    while not self.queued and not self.running:
                        self.wake.wait()
                    queued, self.queued = self.queued, []
                for batch in queued:
                    for index, (prompt, params) in enumerate(batch.requests):
                        request_id = str(next(self.request_ids))
                        try:
                            engine.add_request(request_id, prompt, params)
                        except Exception as exc:  # refused on its own (e.g. a grammar vLLM cannot compile)
                            self._finish(batch, index, f"generation_error: {type(exc).__name__}: {exc}"[:500])
                            continue
                        self.running[request_id] = (batch, index)
                if self.running:
                    for output in engine.step():
                        if output.finished:
                            self._finish(*self.running.pop(output.request_id), output)
        except BaseException as exc:
            log.exception("the engine failed; failing the batches in flight")
            with self.wake:
                self.failure = exc
                batches = {id(b): b for b, _ in self.running.values()} | {id(b): b for b in self.queued + queued}
            for batch in batches.values():
                batch.fail(exc)
            if self.on_failure is not None:
                self.on_failure()


def exit_actor_soon() -> None:
    """In a Ray actor, end the process a moment after its callers got their errors: Ray restarts the
    actor (a fresh engine) within its max_restarts; elsewhere nothing."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
        threading.Timer(1.0, os._exit, (1,)).start()


class VLLMEngine:
    """One loaded model generating for batches of prompt rows, with each batch's sampling given per
    call, so one engine serves consecutive stages (a run's `EnginePool` keeps it alive as a Ray
    actor) as well as one stage (`VLLMStage`). Several batches may be in flight at once (a threaded
    actor, `engine.batches_in_flight`): their rows share the engine's running batch."""

    def __init__(self, engine: EngineConfig, model_dir: str):
        from vllm import LLM

        kwargs = engine_kwargs(engine, model_dir, 0, offline=True)
        self.requests = RequestLoop(lambda: LLM(**kwargs), on_failure=exit_actor_soon)
        self.tokenizer = self.requests.llm.get_tokenizer()
        self.prompt_format = engine.prompt_format
        self.max_prompt_tokens = engine.max_model_len - 1
        # batches_in_flight batches share the engine; a kept engine's actor takes more calls than
        # that, and the others wait here, counted: the pool's measure of work beyond its engines.
        self.slots = threading.Semaphore(engine.batches_in_flight)
        self.counts = threading.Lock()
        self.waiting_rows = self.waiting_batches = 0

    def load(self) -> tuple[int, int]:
        """Rows this engine holds (waiting for a slot, queued or generating), which picks the engine
        for the next batch; and batches waiting for a slot, which grows a kept pool."""
        with self.counts:
            return self.waiting_rows + self.requests.rows, self.waiting_batches

    def _in_a_slot(self, requests: list[tuple[Any, Any]]) -> list[Any]:
        with self.counts:
            self.waiting_rows += len(requests)
            self.waiting_batches += 1
        self.slots.acquire()
        with self.counts:
            self.waiting_rows -= len(requests)
            self.waiting_batches -= 1
        try:
            return self.requests.generate(requests)
        finally:
            self.slots.release()

    def generate(self, batch: pd.DataFrame, sampling: SamplingConfig, regex: str | None = None,
                 json_schema: dict | None = None, seed: int = 0) -> pd.DataFrame:
        """Completions for the `prompt_messages` column. `seed` is the batch's; row i samples with seed
        + i x n (its n samples the next n seeds) on generators of its own, so its draws depend neither
        on what ran before on this engine nor on the other batches in flight (measured on CPU in
        float32: 64 of 64 rows identical alone, among 256, and after other rows). A batch sampled
        again after an interrupted run draws the same."""
        n = len(batch)
        completions: list[list[str]] = [[] for _ in range(n)]
        finish: list[list[str]] = [[] for _ in range(n)]
        tokens_in, tokens_out, errors = [0] * n, [0] * n, [""] * n
        ready: list[int] = []
        requests: list[tuple[Any, Any]] = []
        for i, messages_json in enumerate(batch["prompt_messages"]):
            try:
                ids = chat_token_ids(self.tokenizer, json.loads(messages_json), self.prompt_format)
            except Exception as exc:  # a malformed prompt row: rejected, the batch goes on
                errors[i] = f"prompt_error: {type(exc).__name__}: {exc}"[:500]
                continue
            if len(ids) > self.max_prompt_tokens:
                errors[i] = f"prompt_too_long: {len(ids)} tokens > {self.max_prompt_tokens}"
                continue
            tokens_in[i] = len(ids)
            ready.append(i)
            requests.append((token_prompt(ids), sampling_params(sampling, regex, json_schema, seed + i * sampling.n)))
        for i, out in zip(ready, self._in_a_slot(requests)):
            if isinstance(out, str):  # vLLM refused the request on its own
                errors[i], tokens_in[i] = out, 0
                continue
            completions[i] = [c.text for c in out.outputs]
            finish[i] = [str(c.finish_reason) for c in out.outputs]
            tokens_out[i] = sum(len(c.token_ids) for c in out.outputs)

        result = batch.copy()
        result["completions"] = completions
        result["finish_reasons"] = finish
        result["tokens_in"] = tokens_in
        result["tokens_out"] = tokens_out
        result["engine_error"] = errors
        return result


def batch_seed(seed: int, batch: pd.DataFrame) -> int:
    """A batch's sampling seed: the step's seed and the batch's row ids (its prompts, without ids)."""
    keys = batch["id"] if "id" in batch else batch["prompt_messages"]
    return int(stable_hash([seed, sorted(map(str, keys))], 8), 16)


class VLLMStage:
    """Callable class for `Dataset.map_batches(VLLMStage, compute=ActorPoolStrategy(...))`: an engine
    for one stage, started by Ray Data in each actor of the pool (`engine.keep_alive: false`)."""

    def __init__(self, engine: EngineConfig, model_dir: str, sampling: SamplingConfig,
                 regex: str | None = None, json_schema: dict | None = None):
        self.engine = VLLMEngine(engine, model_dir)
        self.step_args = (sampling, regex, json_schema)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return self.engine.generate(batch, *self.step_args, seed=batch_seed(self.step_args[0].seed, batch))


# --- the online engine, for `raysynth serve` -----------------------------------------------------

def start_async_engine(engine: EngineConfig, model_dir: str, seed: int = 0):
    """A vLLM AsyncLLM for concurrent requests. Blocking (model load): call it off the event loop."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kwargs(engine, model_dir, seed), disable_log_stats=True))


def request_params(temperature: float, top_p: float, max_tokens: int, n: int, stop: list[str] | None,
                   stream: bool, min_tokens: int = 0):
    """Sampling for one API request; a stream gets deltas, a plain request only the final output."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, n=n, stop=stop or None,
                          min_tokens=min_tokens,
                          output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY)


async def smoke_generate(engine, tokenizer) -> None:
    """One greedy token of a fixed prompt: a checkpoint that loads but cannot generate is refused
    before it serves anyone."""
    import uuid

    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(temperature=0, max_tokens=1, output_kind=RequestOutputKind.FINAL_ONLY)
    final = None
    async for final in engine.generate(token_prompt(tokenizer.encode("Hello")), params, f"smoke-{uuid.uuid4().hex}"):
        pass
    if final is None or not final.outputs or not final.outputs[0].token_ids:
        raise RuntimeError("the test generation returned no token")


def token_prompt(ids: list[int]):
    from vllm.inputs import TokensPrompt

    return TokensPrompt(prompt_token_ids=ids)
