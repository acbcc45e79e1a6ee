"""The engine's helpers (prompt formats: the model's chat template, or plain Alpaca-style text for base
models without one; dtype, engine arguments and thread binding, sampling parameters, batch seeds) as
pure functions, and a stage generating in each prompt format."""

import os
from pathlib import Path

import pandas as pd
import pytest

from raysynth.config import EngineConfig, SamplingConfig
from raysynth.engine import (ALPACA_PREAMBLE, actor_runtime_env, batch_seed, chat_token_ids, choose_dtype,
                             cpu_kv_cache_bytes, engine_kwargs, kv_bytes_per_token, plain_prompt,
                             request_params, sampling_params)
from raysynth.models import resolve_model

MESSAGES = [{"role": "user", "content": "Name a fruit."}]


def test_plain_prompt_is_alpaca_style():
    assert plain_prompt(MESSAGES) == f"{ALPACA_PREAMBLE}\n\n### Instruction:\nName a fruit.\n\n### Response:\n"
    turns = [{"role": "system", "content": "Be brief."}, *MESSAGES, {"role": "assistant", "content": "Apple."},
             {"role": "user", "content": "Another?"}]
    assert plain_prompt(turns) == ("Be brief.\n\n### Instruction:\nName a fruit.\n\n### Response:\nApple.\n\n"
                                   "### Instruction:\nAnother?\n\n### Response:\n")


def test_chat_token_ids_in_both_formats():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    chat = tokenizer.decode(chat_token_ids(tokenizer, MESSAGES))
    plain = tokenizer.decode(chat_token_ids(tokenizer, MESSAGES, "plain"))
    assert "<|im_start|>user" in chat and chat.rstrip().endswith("assistant")
    assert "<|im_start|>" not in plain and plain.endswith("### Instruction:\nName a fruit.\n\n### Response:\n")


def test_dtype_is_bf16_on_gpus_and_float32_on_cpus_unless_set():
    assert choose_dtype(EngineConfig(dtype="float16"), on_gpu=False) == "float16"
    assert choose_dtype(EngineConfig(dtype="bfloat16"), on_gpu=False) == "bfloat16"
    assert choose_dtype(EngineConfig(), on_gpu=True) == "bfloat16"
    # Whatever the CPU: emulated bf16 ran 10x slower; native bf16 broke resume equality.
    assert choose_dtype(EngineConfig(), on_gpu=False) == "float32"


def test_engine_arguments_and_the_cpu_thread_binding(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as Ray starts an actor with num_cpus 1
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    kwargs = engine_kwargs(EngineConfig(max_model_len=1024), "/models/x", seed=3)
    cores = sorted(os.sched_getaffinity(0))
    assert (kwargs["model"], kwargs["max_model_len"], kwargs["seed"]) == ("/models/x", 1024, 3)
    assert kwargs["gpu_memory_utilization"] == 0.3 and "distributed_executor_backend" not in kwargs
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(map(str, cores))
    assert os.environ["OMP_NUM_THREADS"] == str(len(cores))
    assert actor_runtime_env(EngineConfig()) == {"runtime_env": {"env_vars": {
        "OMP_NUM_THREADS": str(len(cores)), "GOMP_SPINCOUNT": "10000"}}}
    assert actor_runtime_env(EngineConfig(cpu_threads_bind="0", omp_spin_count=0)) == {
        "runtime_env": {"env_vars": {"GOMP_SPINCOUNT": "0"}}}
    assert actor_runtime_env(EngineConfig(num_gpus=1)) == {}
    gpu = engine_kwargs(EngineConfig(num_gpus=1), "/models/x", seed=0)
    assert gpu["dtype"] == "bfloat16" and gpu["gpu_memory_utilization"] == 0.9
    # Offline CPU engines sample on per-request seeds, which a chunked prefill would crash.
    assert engine_kwargs(EngineConfig(), "/models/x", 0, offline=True)["enable_chunked_prefill"] is False
    assert "enable_chunked_prefill" not in kwargs and "enable_chunked_prefill" not in gpu
    assert kwargs["enable_prefix_caching"] is True
    assert engine_kwargs(EngineConfig(prefix_caching=False), "/models/x", 0)["enable_prefix_caching"] is False


def test_a_cpu_engine_gets_a_kv_cache_the_size_of_its_batch():
    model_dir = resolve_model("smollm2-135m")
    per_token = kv_bytes_per_token(model_dir, "float32")
    assert per_token == 2 * 30 * 3 * 64 * 4  # keys and values: 30 layers, 3 KV heads of 64, float32
    assert kv_bytes_per_token(model_dir, "bfloat16") == per_token // 2
    assert kv_bytes_per_token("org/not-local", "float32") is None
    engine = EngineConfig(batch_size=4, max_model_len=1024, dtype="float32")
    assert cpu_kv_cache_bytes(engine, model_dir, "float32") == (4 * 1024 + 512) * per_token
    # Never less than one full-length request; cpu_kv_cache_tokens when set.
    small = EngineConfig(batch_size=1, max_model_len=1024, cpu_kv_cache_tokens=100)
    assert cpu_kv_cache_bytes(small, model_dir, "float32") == (1024 + 512) * per_token
    set_tokens = EngineConfig(max_model_len=1024, cpu_kv_cache_tokens=8192)
    assert cpu_kv_cache_bytes(set_tokens, model_dir, "float32") == (8192 + 512) * per_token
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    huge = EngineConfig(batch_size=100_000, max_model_len=2048)
    assert cpu_kv_cache_bytes(huge, model_dir, "float32") == int(0.3 * ram)  # at most 0.3 of RAM
    assert engine_kwargs(engine, model_dir, 0)["kv_cache_memory_bytes"] == (4 * 1024 + 512) * per_token
    # A set token count wins over a set share on CPU; the share stays for GPUs.
    served = EngineConfig(gpu_memory_utilization=0.1, cpu_kv_cache_tokens=16384, dtype="float32")
    assert engine_kwargs(served, model_dir, 0)["kv_cache_memory_bytes"] == (16384 + 512) * per_token
    assert "kv_cache_memory_bytes" not in engine_kwargs(served.model_copy(update={"num_gpus": 1}), model_dir, 0)
    # A share set by the user, a GPU, or a model whose config is not at hand: vLLM sizes the cache.
    assert "kv_cache_memory_bytes" not in engine_kwargs(EngineConfig(gpu_memory_utilization=0.2), model_dir, 0)
    assert "kv_cache_memory_bytes" not in engine_kwargs(EngineConfig(num_gpus=1), model_dir, 0)
    assert "kv_cache_memory_bytes" not in engine_kwargs(engine, "/models/x", 0)


def test_sampling_parameters_carry_the_step_and_its_format():
    free = sampling_params(SamplingConfig(temperature=0.3, max_tokens=17, n=2, structured=False), regex="a+")
    assert (free.temperature, free.max_tokens, free.n, free.structured_outputs) == (0.3, 17, 2, None)
    assert free.output_kind.name == "FINAL_ONLY" and sampling_params(SamplingConfig(), seed=7).seed == 7
    guarded = sampling_params(SamplingConfig(), regex="a+")
    assert guarded.structured_outputs.regex == "a+"
    schema = {"type": "object"}
    assert sampling_params(SamplingConfig(), json_schema=schema).structured_outputs.json == schema
    stream = request_params(0.0, 1.0, 8, 1, ["\n"], stream=True)
    assert stream.output_kind.name == "DELTA" and stream.stop == ["\n"]
    assert request_params(0.0, 1.0, 8, 1, None, stream=False).output_kind.name == "FINAL_ONLY"


def test_a_batch_seed_depends_on_its_rows_not_their_order():
    batch = pd.DataFrame({"id": ["a", "b"]})
    assert batch_seed(0, batch) == batch_seed(0, batch.iloc[::-1]) != batch_seed(1, batch)
    assert batch_seed(0, batch) != batch_seed(0, pd.DataFrame({"id": ["a", "c"]}))


@pytest.mark.slow
def test_batches_in_flight_draw_what_each_draws_alone():
    """Three batches on one engine at once (the threads of an engine actor) against each batch alone on
    the same engine: every row's completion is the same, as each row samples on its own seed; rows the
    engine refuses on their own (too long, malformed) come back as row errors, the others generate."""
    import json
    import threading

    from raysynth.engine import VLLMEngine

    engine = VLLMEngine(EngineConfig(max_model_len=256, batch_size=8), resolve_model("smollm2-135m"))
    sampling = SamplingConfig(temperature=1.0, max_tokens=24, structured=False)
    prompts = ["Name a fruit.", "Say hello.", "Count to five.", "Describe the sea.", "Write a haiku.",
               "Give a colour.", "Name a city.", "Tell a joke.", "Spell cat."]
    batches = [pd.DataFrame({"prompt_messages": [json.dumps([{"role": "user", "content": p}])
                                                 for p in prompts[k::3]]}) for k in range(3)]
    batches[2].loc[len(batches[2])] = ["not json"]
    batches[2].loc[len(batches[2])] = [json.dumps([{"role": "user", "content": "word " * 300}])]
    alone = [engine.generate(batch, sampling, seed=11 + k)["completions"].tolist() for k, batch in enumerate(batches)]
    together: list = [None] * 3

    def run(k: int) -> None:
        together[k] = engine.generate(batches[k], sampling, seed=11 + k)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert [t["completions"].tolist() for t in together] == alone
    errors = together[2]["engine_error"].tolist()
    assert errors[-2].startswith("prompt_error") and errors[-1].startswith("prompt_too_long"), errors
    assert all(not e for e in errors[:-2]) and all(len(c) == 1 and c[0] for c in alone[2][:-2])
    assert engine.load() == (0, 0)
    # Another batch seed draws otherwise.
    assert engine.generate(batches[0], sampling, seed=99)["completions"].tolist() != alone[0]


@pytest.mark.slow
def test_a_stage_generates_with_the_plain_format(local_ray, tmp_path: Path):
    """The same step in both formats on the real engine: each stage commits every row, the plain one
    under its own name (the format is part of the stage's identity) and with its own prompt length."""
    from raysynth.config import EngineConfig, SamplingConfig
    from raysynth.pipeline import Lineage, run_llm_stage, write_source_stage
    from raysynth.steps.eval import respond_step
    from raysynth.store import RunDir

    run, lineage = RunDir(tmp_path / "run"), Lineage("test", 1, "smollm2-135m")
    source = write_source_stage(run, 1, "prompts", [{"prompt": "Name a fruit."}, {"prompt": "Say hello."}],
                                {"n": 2}, lineage)
    step, model_dir = respond_step(SamplingConfig(temperature=0, max_tokens=8)), resolve_model("smollm2-135m")
    stages = {fmt: run_llm_stage(run, 1, step, source, EngineConfig(batch_size=2, prompt_format=fmt), model_dir,
                                 lineage) for fmt in ("chat", "plain")}
    run.engines.release()
    assert stages["chat"].name != stages["plain"].name
    lengths = {}
    for fmt, stage in stages.items():
        rows = stage.read(["response", "tokens_in"])
        assert len(rows) == 2 and rows["response"].astype(str).str.len().sum() > 0
        lengths[fmt] = sorted(rows["tokens_in"].tolist())
    assert lengths["chat"] != lengths["plain"]


@pytest.mark.slow
def test_unguarded_patterns_compile_and_generate(local_ray, tmp_path: Path):
    """Condor's marker-only patterns (`small_model_guards: false`: long alternations spelling "any text
    but the end marker") compile in vLLM's structured-output backend and generate: a row may be
    rejected for its own reply, never for the grammar or the engine."""
    from raysynth.config import EngineConfig
    from raysynth.pipeline import Lineage, run_llm_stage, write_source_stage
    from raysynth.recipes.condor.config import CondorConfig
    from raysynth.recipes.condor.steps import condor_steps
    from raysynth.store import RunDir

    short = {"max_tokens": 96, "temperature": 0}
    steps = condor_steps(CondorConfig(small_model_guards=False,
                                      steps={"question": short, "critique": short, "refine": short}))
    row = {"domain": "Mathematics", "tag": "prime numbers", "task_type": "Domain QA", "task_description": "expert QA",
           "examples": ["Explain tides."], "question": "What is a prime number?", "answer": "A number with two divisors.",
           "strength": "short", "weakness": "no example", "suggestion": "give 7 as an example"}
    run, lineage = RunDir(tmp_path / "run"), Lineage("test", 1, "smollm2-135m")
    source = write_source_stage(run, 1, "rows", [row], {"n": 1}, lineage)
    for name in ("question", "critique", "refine"):
        stage = run_llm_stage(run, 1, steps[name], source, EngineConfig(batch_size=1), resolve_model("smollm2-135m"),
                              lineage)
        manifest = stage.manifest()
        assert manifest["rows_in"] == 1 and manifest["tokens_out"] > 0, (name, manifest)
        assert not [r for r in manifest["rejected"] if r.startswith(("generation_error", "engine", "prompt"))], manifest
    run.engines.release()


@pytest.mark.slow
def test_condor_tree_is_built_by_the_model_in_two_languages(local_ray, tmp_path: Path):
    """The paper's LLM-built tree on the real engine: given roots, one level of sub-topics listed by the
    model per node and language; the tree holds each root's topics and each root's language."""
    from raysynth.config import EngineConfig
    from raysynth.pipeline import Lineage
    from raysynth.recipes.condor.config import TagTreeConfig
    from raysynth.recipes.condor.recipe import build_tag_tree, leaf_tags
    from raysynth.store import RunDir

    cfg = TagTreeConfig(roots=["Mathematics"], children=2, depth=1, languages=["English", "Chinese"],
                        sampling={"temperature": 0, "max_tokens": 96})
    run = RunDir(tmp_path / "run")
    tree, languages = build_tag_tree(run, cfg, EngineConfig(batch_size=2), resolve_model("smollm2-135m"),
                                     Lineage("condor", 0, "smollm2-135m"))
    run.engines.release()
    level = next(s for s in run.stages() if s.name.startswith("tree-level-1"))
    assert level.manifest()["rows_in"] == 2  # one request per (root, language)
    paths = leaf_tags(tree)
    assert paths and all(len(p) == 2 and p[0] == "Mathematics" for p in paths) and len(paths) <= 4
    assert set(languages) == {" > ".join(p) for p in paths} and set(languages.values()) <= {"English", "Chinese"}
