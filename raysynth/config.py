"""Configuration every recipe shares: YAML validated by pydantic models that forbid unknown keys.

Each paper's own sections are in its folder (raysynth/recipes/<paper>/config.py) and
`raysynth.recipes.load_config` reads a run config; every error names the file, the field path and what
was expected (`ConfigError`), before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator,
                      model_serializer, model_validator)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _over_field_defaults(cls, data: Any) -> Any:
        """A partial section overrides its field's default, key by key: `eval.generation.max_tokens=48`
        keeps eval's greedy temperature instead of falling back to SamplingConfig's class defaults."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, info in cls.model_fields.items():
            if isinstance(info.default, BaseModel) and isinstance(merged.get(name), dict):
                merged[name] = {**info.default.model_dump(exclude_unset=False), **merged[name]}
        return merged


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


# An input file named in a config; a missing one is a config error, reported before anything runs.
ExistingFile = Annotated[Path, AfterValidator(_existing_file)]


def _custom_resources(value: dict[str, float]) -> dict[str, float]:
    if set(value) & {"CPU", "GPU", "memory", "object_store_memory"}:
        raise ValueError("expected custom resources only (CPUs and GPUs have their own fields)")
    if any(amount < 0 for amount in value.values()):
        raise ValueError("expected amounts >= 0")
    return value


CustomResources = Annotated[dict[str, float], AfterValidator(_custom_resources)]


class ConfigError(ValueError):
    """A config problem, already phrased for the user: file, field, expectation."""


class SamplingConfig(Strict):
    """Per-step sampling. `seed` and a batch's row ids seed that batch, and each row samples on a seed
    of its own (raysynth/engine.py), so a batch redone after an interrupted run draws the same
    samples."""

    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1)
    n: int = Field(1, ge=1)
    seed: int = 0
    structured: bool = Field(True, description="constrain format-bound steps with vLLM structured outputs")


class EndpointConfig(Strict):
    """An OpenAI-compatible chat endpoint used instead of vLLM actors (e.g. a hosted judge)."""

    base_url: str = Field(description="e.g. http://127.0.0.1:8000/v1")
    model: str = Field(description="the model id the endpoint serves")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the key")
    parallel_requests: int = Field(8, ge=1, description="requests in flight per actor")
    timeout_s: float = Field(120, gt=0)
    max_retries: int = Field(2, ge=0)
    num_cpus: float = Field(0.25, ge=0, description="per actor: it only waits on the network")
    structured_outputs: bool = Field(False, description="send vLLM's structured_outputs (regex/json) in "
                                     "the request body; only vLLM-based servers accept it")


class EngineConfig(Strict):
    """The vLLM actor pool behind every LLM step (or an OpenAI-compatible endpoint, when set)."""

    model: str = "smollm2-135m"
    dtype: str = Field("auto", description="auto: bf16 on GPUs, float32 on CPUs (on a CPU with native bf16 "
                       "its draws changed with what the engine ran before, breaking resume equality; set "
                       "bfloat16 for speed)")
    max_model_len: int = Field(2048, ge=128)
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="GPU: vLLM's share of its memory (None: 0.9). CPU: vLLM's share of RAM, "
        "its own memory included, used only when set and cpu_kv_cache_tokens is not; None: see "
        "cpu_kv_cache_tokens"
    )
    cpu_kv_cache_tokens: int | None = Field(
        None, ge=1, description="CPU: tokens the KV cache holds (at most 0.3 of RAM); None, with "
        "gpu_memory_utilization unset: batch_size x max_model_len, every row of a batch at full length. An "
        "explicit cache starts in a third of the time (vLLM skips its warm-up pass) and cannot come out "
        "negative, as a small share of RAM can once the engine's own memory is taken from it")
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = True
    in_process: bool = Field(True, description="run vLLM's engine core and model worker inside the stage's "
                             "actor (V1 multiprocessing off, 'uni' executor): saves two process starts, about "
                             "15 s per stage on CPU; only with tensor_parallel_size 1")
    trust_remote_code: bool = False
    prompt_format: Literal["chat", "plain"] = Field(
        "chat", description="chat: the model's chat template; plain: Alpaca-style text (preamble, '### "
        "Instruction:', '### Response:') for base models without one. Local engines; an endpoint always "
        "gets chat messages")
    batch_size: int = Field(64, ge=1, description="rows per engine call; larger keeps the engine fed")
    batches_in_flight: int = Field(8, ge=1, description="batches an engine works on at once: their rows share "
                                   "its running batch, so the engine never drains at a batch's tail (Ray Data's "
                                   "LLM stage default, max_concurrent_batches: 8); each row samples on its own "
                                   "seed, so what runs beside it does not change its draws")
    prefix_caching: bool = Field(True, description="vLLM's automatic prefix caching: prompts that share a "
                                 "template's opening reuse its KV cache")
    concurrency: tuple[int, int] = Field((1, 1), description="(min, max) actors in the pool; with keep_alive, "
                                         "min engines start, another starts while every engine has batches "
                                         "waiting for a slot, and one idle for idle_timeout_s stops")
    idle_timeout_s: float = Field(60, gt=0, description="a kept engine beyond concurrency's min that held no "
                                  "rows this long is stopped (its CPUs, GPUs and, on an autoscaling cluster, "
                                  "its node go back)")
    keep_alive: bool = Field(True, description="keep a model's engine actors alive from one LLM stage to the next "
                             "while the model stays the same (saves the ~25 s engine start per stage on CPU); "
                             "false: each stage starts a Ray Data actor pool that scales between concurrency "
                             "(min, max) and ends with the stage")
    num_cpus: float = Field(1, ge=0)
    num_gpus: float = Field(0, ge=0)
    resources: CustomResources = Field({}, description="custom Ray resources per engine actor (e.g. a "
                                        "node-type or accelerator resource of your cluster), held while it lives")
    endpoint: EndpointConfig | None = Field(None, description="call this endpoint instead of starting "
                                            "vLLM actors; `model` is then unused")
    max_restarts: int = Field(3, ge=0, description="times Ray restarts an engine actor whose process died (out "
                              "of memory, a crash, a lost node); its batch is redone on the restarted engine")
    batch_retries: int = Field(3, ge=0, description="times a batch is redone after a machinery failure (engine "
                               "died or hung, endpoint unreachable or answering 5xx/429) before the run stops "
                               "with an error; such rows are never committed as rejected")
    batch_timeout_s: float = Field(600, gt=0, description="a batch's deadline on its engine is this plus "
                                   "batch_timeout_s_per_token x rows x n x max_tokens; past it the engine counts "
                                   "as hung: it is restarted and the batch redone (the base covers a model load)")
    batch_timeout_s_per_token: float = Field(0.2, gt=0)
    cpu_threads_bind: str = Field(
        "all",
        description="VLLM_CPU_OMP_THREADS_BIND for CPU actors: 'all' binds every core the actor "
        "may use (vLLM's 'auto' reserves one core, halving speed on small machines), "
        "'auto', or an explicit list such as '0-3'",
    )
    omp_spin_count: int = Field(10_000, ge=0, description="GOMP_SPINCOUNT for CPU engine actors: how long "
                                "OpenMP's idle threads spin before they sleep. Measured on 2 cores, one batch: "
                                "one engine 7.3 s at 10,000 (as at libgomp's 300,000), 8.5 s at 1,000; two "
                                "engines sharing the cores 15.8 s at 10,000, 13.0 s at 1,000, 39-48 s at "
                                "300,000 (each spins on the core the other needs). Lower it where engines "
                                "share cores")

    @field_validator("concurrency")
    @classmethod
    def _min_le_max(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if low < 1 or high < low:
            raise ValueError("expected (min, max) with 1 <= min <= max")
        return value


def guards_field() -> Any:
    """The switch between structured outputs that also constrain content and ones that fix only the
    markers a parser needs."""
    return Field(True, description="structured outputs also hold content to what a 135M model keeps "
                 "parseable (one line, a capital first letter, no brackets, length caps); false: they fix only "
                 "the markers the parser needs and any text goes between them (multi-line, brackets, code, "
                 "any script), as a 7B model writes (jobs/*.yaml)")


class JudgeConfig(Strict):
    """LLM-as-judge steps on the vLLM stage (raysynth/steps/judge.py)."""

    pointwise: SamplingConfig = SamplingConfig(temperature=0.0, max_tokens=96)
    pairwise: SamplingConfig = SamplingConfig(temperature=0.0, max_tokens=96)
    max_explanation_chars: int = Field(200, ge=10, description="explanation before the verdict: one line of at "
                                       "most this, structured mode with small_model_guards")
    small_model_guards: bool = guards_field()

    @model_serializer(mode="wrap")
    def _guards_only_when_off(self, handler: Any) -> dict[str, Any]:
        """The field is left out of a dump while on (its default): stage identities hold this config
        (through a scorer's), and runs from before the field keep their stages' names."""
        data = handler(self)
        if self.small_model_guards:
            data.pop("small_model_guards", None)
        return data


# SynPO's gap thresholds (appendix C.3): 0.20 for PairRM scores, 0.02 for ArmoRM scores.
# The LLM judge's gap is +2 (A wins in both orders), 0 (tie) or -2: 1.0 keeps only agreed wins.
DEFAULT_GAP = {"pairrm": 0.20, "reward_model": 0.02, "llm_judge": 1.0}


class ScorerConfig(Strict):
    """A reward-model actor pool that scores (prompt, response A, response B) rows.

    pairrm: a PairRM checkpoint (hub id or dir); score_a = position-swapped preference of A over
    B, score_b = its negative, so score_gap = l(A,B) - l(B,A): exactly the logit llm-blender's
    `Blender.compare(..., return_logits=True)` returns in its default mode "[A,B]+[B,A]" (the score
    difference of `rank(..., return_scores=True)` over [A, B] is the same number), the scale of
    SynPO's 0.20 threshold. reward_model: any sequence-classification reward model (ArmoRM
    with trust_remote_code); score_a and score_b are its scalar scores. llm_judge: the pairwise
    judge on the vLLM stage (the run's engine and model, `judge` sampling), both orders; score_a
    is +1 / 0 / -1 for win / tie / loss. score_gap = a - b. `model` is unused for llm_judge.
    """

    kind: Literal["pairrm", "reward_model", "llm_judge"] = "pairrm"
    model: str = "llm-blender/PairRM-hf"
    trust_remote_code: bool = False
    judge: JudgeConfig = JudgeConfig()
    gap_threshold: float | None = Field(None, description="keep rows with score_gap >= this; None: the "
                                        "paper's value for the kind (PairRM 0.20, ArmoRM 0.02; judge: agreed wins)")
    max_repetition: float | None = Field(0.5, ge=0, le=1, description="drop when either response's repeated "
                                         "4-gram share exceeds this (SynPO: 50%); None: off")
    max_length: int = Field(2048, ge=16, description="tokens per scored input")
    batch_size: int = Field(16, ge=1)
    concurrency: tuple[int, int] = Field((1, 1), description="(min, max) actors in the pool")
    num_cpus: float = Field(1, ge=0)
    num_gpus: float = Field(0, ge=0)

    @property
    def threshold(self) -> float:
        return DEFAULT_GAP[self.kind] if self.gap_threshold is None else self.gap_threshold


class FilterConfig(Strict):
    """Text filters over one column of a stage, applied in this order; None (or empty) turns one off."""

    min_chars: int = Field(1, ge=0)
    max_chars: int | None = Field(None, ge=1)
    min_words: int | None = Field(None, ge=1, description="fewer whitespace-separated words: dropped")
    max_words: int | None = Field(None, ge=1, description="more words: dropped")
    ascii_start: bool = Field(False, description="drop a text that starts with punctuation or a non-ASCII character")
    blocked_prefixes: list[str] = Field(default_factory=list, description="drop a text that starts with one of these")
    blocklist: list[str] = Field(default_factory=list, description="drop a text containing one of these words or "
                                 "phrases (whole words, any case)")
    pattern: str | None = Field(None, description="a regex the text must contain (format filter)")
    near_duplicate_jaccard: float | None = Field(0.8, gt=0, le=1, description="MinHash word-3-shingle Jaccard")
    rouge_l_max: float | None = Field(0.7, gt=0, le=1, description="Self-Instruct novelty: keep if ROUGE-L "
                                      "F1 against every kept text is below this (paper: 0.7)")


class EvalConfig(Strict):
    """Evaluation of a model after an iteration (raysynth/eval): IFEval, judged win rate against
    iteration 0, diversity of the iteration's synthetic data; every rate with a bootstrap 95% interval.

    IFEval with greedy decoding took 44 min for all 541 prompts at 1024 tokens on a 2-core CPU, so
    the defaults take the first 100 prompts at 512 tokens; set `limit: null` for the full benchmark.
    """

    ifeval: ExistingFile | None = Field(None, description="IFEval input_data.jsonl; None: the copy shipped with raysynth")
    limit: int | None = Field(100, ge=1, description="first N IFEval prompts; None: all 541")
    generation: SamplingConfig = SamplingConfig(temperature=0.0, max_tokens=512, structured=False)
    winrate: bool = Field(True, description="judge iteration k against iteration 0, both orders")
    winrate_prompts: ExistingFile | None = Field(None, description="JSONL with a `prompt` (or `instruction`) "
                                         "field; None: the IFEval prompts, answers reused (held out from training)")
    judge: JudgeConfig = JudgeConfig()
    judge_model: str | None = Field(None, description="local judge model (name, dir or hub id); None: a "
                                    "model frozen for the whole run (a recipe's initial model; `raysynth "
                                    "eval`: the baseline), never the model being evaluated")
    judge_endpoint: EndpointConfig | None = Field(None, description="judge through an OpenAI-compatible "
                                                  "endpoint instead of a local model")
    judge_scorer: ScorerConfig | None = Field(
        None, description="judge with a reward model instead (kind pairrm or reward_model, frozen for the run): "
        "a pair is a win or a loss when its score gap reaches the scorer's gap_threshold (PairRM 0.20, ArmoRM "
        "0.02) either way, else a tie; None: the LLM judge")
    diversity_group: int = Field(20, ge=2, description="texts per group for distinct-n")
    embedding_model: str | None = Field(None, description="for embedding spread; None: skipped")
    seed: int = 0

    @field_validator("judge_scorer")
    @classmethod
    def _reward_model(cls, value: ScorerConfig | None) -> ScorerConfig | None:
        if value is not None and value.kind == "llm_judge":
            raise ValueError("expected kind pairrm or reward_model (an LLM judge: judge_model or judge_endpoint)")
        return value

    @model_validator(mode="after")
    def _one_judge(self) -> "EvalConfig":
        if self.judge_scorer is not None and (self.judge_model or self.judge_endpoint):
            raise ValueError("judge_scorer: expected one judge (judge_scorer, judge_model or judge_endpoint)")
        return self


class LoraConfig(Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class TrainConfig(Strict):
    """One Ray Train run of TRL's SFT, SimPO (CPO with loss_type=simpo, cpo_alpha=0) or DPO.

    Defaults are sized for the embedded 135M model on CPU (LoRA, a few hundred rows). The papers'
    values, where their text gives them: SynPO searches SimPO's beta in 2-12 (we default to 2, the
    low end, and gamma/beta = 0.5 as in SimPO's Llama-3 recipe); SynPO and Condor train 3 epochs
    with warm-up 0.1; Condor's full fine-tuning uses 2e-5 (jobs/condor.yaml). The other papers'
    learning rates are not legible in our copies.
    """

    method: Literal["sft", "simpo", "dpo"] = "sft"
    lora: LoraConfig | None = Field(LoraConfig(), description="None: full fine-tuning")
    learning_rate: float = Field(2e-4, gt=0, description="2e-4 suits LoRA; use ~1e-5 for full fine-tuning")
    epochs: float = Field(3, gt=0, description="paper: 3")
    max_steps: int = Field(-1, description="> 0 overrides epochs")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="paper: 0.1")
    per_device_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=16, description="tokens per example (prompt + response)")
    simpo_beta: float = Field(2.0, gt=0, description="SynPO searches 2-12")
    simpo_gamma: float = Field(1.0, ge=0, description="target reward margin (TRL simpo_gamma)")
    dpo_beta: float = Field(0.1, gt=0)
    save_steps: int = Field(20, ge=1, description="checkpoint every N optimizer steps (resume point)")
    logging_steps: int = Field(1, ge=1)
    seed: int = 0
    num_workers: int = Field(2, ge=1)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="where Ray places the workers (Ray Train's default PACK: as few nodes as "
        "possible; SPREAD: across nodes, so losing one node loses one worker)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(1, ge=0, description="used when use_gpu")
    resources_per_worker: CustomResources = Field({}, description="custom Ray resources per training worker "
                                                   "(e.g. a node-type or accelerator resource of your cluster)")
    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="ddp: a model copy per worker; fsdp/deepspeed (ZeRO-3) shard models that "
        "do not fit one GPU (deepspeed must be installed on the workers)")
    max_failures: int = Field(2, ge=-1, description="worker-group restarts from the last checkpoint; -1: no limit")


class ServeConfig(Strict):
    """`raysynth serve`: an OpenAI-compatible Ray Serve app following a run's current model.

    Each replica holds its model in vLLM and polls the run's registry (`<run_dir>/models.json`); when
    its current model changes the replica loads it beside the old one, checks it with one generation,
    sends new requests to it, and retires the old engine once its in-flight requests finish, so no
    request fails during a switch.
    """

    run_dir: Path = Field(Path("runs/serve"), description="run whose model registry (models.json) is followed")
    model: str | None = Field(None, description="serve this model (name, dir, hub id): registered in the run and "
                              "made current at start; None: the run's current model, else the embedded one")
    model_name: str | None = Field(None, description="model id for `model`; None: its directory name")
    current_alias: str = Field("current", description="a model id that always means the current model")
    keep_previous: int = Field(0, ge=0, description="earlier models kept loaded and addressable by name")
    poll_s: float = Field(2.0, gt=0, description="how often replicas check the registry's current model")
    host: str = Field("127.0.0.1", description="bind address; any non-loopback address needs an API key")
    port: int = Field(8000, ge=1, le=65535)
    # Keys come from the replica's own environment (set where `ray start` runs on each node) or a file
    # on every node, never from the job's runtime_env, which the Ray dashboard shows.
    api_key_env: str | None = Field("RAYSYNTH_API_KEY", description="variable holding the inference key; when "
                                    "a key is set, requests need `Authorization: Bearer <key>`")
    api_key_file: Path | None = Field(None, description="file holding the inference key (read when the variable "
                                      "is unset), e.g. ~/.raysynth/api_key on every node")
    admin_key_env: str | None = Field("RAYSYNTH_ADMIN_KEY", description="variable holding the key for /admin/*; "
                                      "with no admin key anywhere the admin routes are off")
    admin_key_file: Path | None = Field(None, description="file holding the admin key, read at each admin request "
                                        "(so it can be rotated or removed without a restart)")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get 413")
    health_check_period_s: float = Field(10, gt=0, description="how often Serve checks each replica's engine; "
                                         "3 failed checks in a row replace the replica")
    health_check_timeout_s: float = Field(30, gt=0)
    max_tokens_limit: int = Field(1024, ge=1, description="requests asking for more get 400")
    max_n: int = Field(4, ge=1)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8, gt=0, description="autoscaling target per replica")
    upscale_delay_s: float = Field(30, ge=0, description="load above target this long adds replicas (Serve's default)")
    downscale_delay_s: float = Field(600, ge=0, description="load below target this long removes replicas "
                                     "(Serve's default)")
    max_ongoing_requests: int = Field(32, ge=1, description="concurrent requests a replica takes")
    max_queued_requests: int = Field(64, ge=1, description="waiting requests beyond which the server "
                                     "answers 503 instead of queueing more")
    num_cpus: float = Field(1, ge=0)
    num_gpus: float = Field(0, ge=0)
    engine: EngineConfig = Field(EngineConfig(gpu_memory_utilization=0.1), description="vLLM settings; "
                                 "two engines coexist during a switch, so keep gpu_memory_utilization <= 0.45")


class PromotionConfig(Strict):
    """The champion/challenger gate (raysynth/promotion.py). Iteration 0's model is the first champion;
    each trained model is evaluated against the current champion (same prompts, paired) and promoted
    (made the run's current model, which `raysynth serve` follows) only when every rule holds:

    - the judged win rate's 95% interval lies above `min_winrate` (lower bound > it), and
    - for each of `ifeval_metrics`, the paired difference's lower bound is >= -`max_ifeval_drop`.

    A metric the evaluation lacks (e.g. `eval.winrate: false`) fails its rule. Without an `eval:`
    section there is nothing to gate on, and every trained model is promoted, as in the papers' loops.
    """

    gate: bool = Field(True, description="False: promote every trained model (the papers' loops)")
    min_winrate: float = Field(0.5, ge=0, lt=1, description="the win rate's lower bound must exceed this")
    ifeval_metrics: list[Literal["prompt_strict", "prompt_loose"]] = Field(
        ["prompt_strict", "prompt_loose"], description="IFEval metrics that must not drop")
    max_ifeval_drop: float = Field(0.05, ge=0, le=1, description="tolerated drop at the paired "
                                   "difference's lower bound (0.05: five points)")
    next_policy: Literal["paper", "champion"] = Field("paper", description="which model the next iteration "
                                                      "synthesizes with: the recipe's own chain (paper: the last "
                                                      "trained model) or the champion")
    patience: int | None = Field(None, ge=1, description="stop after this many iterations in a row "
                                 "without a promotion; None: run every iteration")
    max_minutes: float | None = Field(None, gt=0, description="stop before an iteration that would start "
                                      "after this many minutes of the run's process; None: no limit")
    max_tokens: int | None = Field(None, ge=1, description="stop before an iteration once the run's stages have "
                                   "generated this many tokens in all (every iteration's, evaluation included, "
                                   "counted from the committed batches, so a resumed run counts what it resumed); "
                                   "None: no limit")


class RunHeader(Strict):
    """What every recipe's run config starts with; each recipe narrows `recipe` and sets its `run_dir`."""

    recipe: str
    run_dir: Path
    seed: int = 0
    engine: EngineConfig = EngineConfig()
    stop_after: str | None = Field(None, pattern=r"^iter-\d{2}/[a-z0-9-]+$", description="stop once this stage "
                                   "(iter-NN/name, e.g. iter-01/answer) is committed, before the next one opens: "
                                   "to look at a stage, or to recompute one and compare it with another run")
    on_empty: Literal["stop", "continue"] = Field("stop", description="when a stage keeps no row of a non-empty "
                                                  "input, or an iteration has nothing to train on: stop with a "
                                                  "non-zero exit naming it (stop), or note it and go on (continue)")
    promotion: PromotionConfig = PromotionConfig()


def student_field(paper: str) -> Any:
    """The field naming the model a recipe trains when its paper separates it from the synthesizer."""
    return Field(None, description=f"the model trained on the synthetic data (name, dir or hub id; the paper: "
                                   f"{paper}); None: the synthesizing model, engine.model (or its endpoint's)")


class TrainJob(Strict):
    """`raysynth train CONFIG`: one training run on a stage's output or any Parquet/JSONL file."""

    data: Path = Field(description="Parquet or JSONL file, or a directory of Parquet parts: `messages` "
                                   "rows for sft, `prompt`/`chosen`/`rejected` rows for simpo and dpo")
    model: str = "smollm2-135m"
    out_dir: Path = Path("runs/train")
    trust_remote_code: bool = False
    prompt_format: Literal["chat", "plain"] = Field("chat", description="chat: the model's chat template; "
                                                    "plain: Alpaca-style text, for a model without one")
    train: TrainConfig = TrainConfig()

    @field_validator("data")
    @classmethod
    def _data_exists(cls, value: Path) -> Path:
        if not value.exists():
            raise ValueError(f"not found: {value}")
        return value


def _describe(error: dict[str, Any], tags: tuple[str, ...]) -> str:
    loc = list(error["loc"])
    if loc and loc[0] in tags:  # a discriminated union puts the tag (the recipe's name) first
        loc = loc[1:]
    field = ".".join(str(part) for part in loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"field '{field}': unknown key (not a setting of this section)"
    if kind == "missing":
        return f"field '{field}': required but missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return f"field 'recipe': expected one of the recipes: {', '.join(tags)}"
    got = error.get("input")
    got_text = f" (got {got!r})" if not isinstance(got, dict) else ""
    return f"field '{field}': {error['msg'].removeprefix('Value error, ')}{got_text}"


def _set_dotted(data: dict[str, Any], dotted: str, raw: str) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def read_yaml(path: Path, overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The config file as a dict with `a.b=value` overrides (YAML values) applied."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return _apply_overrides(data, overrides)


def _apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. engine.batch_size=32")
        _set_dotted(data, key.strip(), raw)
    return data


def validate(path: Path, adapter: TypeAdapter[Any], data: dict[str, Any], tags: tuple[str, ...] = ()) -> Any:
    """`data` validated, or a ConfigError naming `path`, each field and what it expects; `tags`: the
    discriminator values of a union (left out of the field paths)."""
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        lines = [_describe(e, tags) for e in exc.errors()]
        raise ConfigError(f"{path}: " + "; ".join(lines)) from None


def relative_to_config(path: Path, data: dict[str, Any], input_files: list[tuple[str, str]]) -> dict[str, Any]:
    """`data` with the relative input-file paths at (section, key) made relative to the config file."""
    def near_config(value: Any) -> Any:
        if isinstance(value, list):
            return [near_config(v) for v in value]
        if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
            return str(path.parent / value)
        return value

    for section, key in input_files:
        if isinstance(data.get(section), dict) and data[section].get(key) is not None:
            data[section][key] = near_config(data[section][key])
    return data


def load_serve_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ServeConfig:
    """`raysynth serve` settings: a YAML file (optional) plus `a.b=value` overrides."""
    if path is None:
        return load_section(ServeConfig, {}, overrides, "raysynth serve")
    path = Path(path)
    return validate(path, TypeAdapter(ServeConfig), read_yaml(path, overrides))


def load_train_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainJob:
    """A `raysynth train` config; like run_dir, `data` and `out_dir` are relative to the working dir."""
    path = Path(path)
    return validate(path, TypeAdapter(TrainJob), read_yaml(path, overrides))


def load_section(model: type[BaseModel], data: dict[str, Any], overrides: list[str] | tuple[str, ...],
                 source: str) -> Any:
    """One config section from a dict plus `a.b=value` overrides (e.g. `raysynth eval --set`)."""
    return validate(Path(source), TypeAdapter(model), _apply_overrides(dict(data), overrides))
