"""I-SHEEP's config: self-instruct generation, self-assessment and its threshold, the data filters and
the training setting; the paper's values as defaults (arXiv 2408.08072)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from raysynth.config import (EvalConfig, ExistingFile, FilterConfig, RunHeader, SamplingConfig, Strict, TrainConfig,
                             guards_field)

# Self-Instruct's heuristic filters on generated instructions (its bootstrap_instructions.py): 4 to
# 150 words, no task a text model cannot do (these words), no "Write a program" (ambiguous whether
# to write one or give its output), no start with punctuation or a non-English character.
SELF_INSTRUCT_BLOCKLIST = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                           "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram"]
SELF_INSTRUCT_FILTER = FilterConfig(min_words=4, max_words=150, ascii_start=True,
                                    blocked_prefixes=["Write a program"], blocklist=SELF_INSTRUCT_BLOCKLIST,
                                    near_duplicate_jaccard=None, rouge_l_max=0.7)


class AssessmentConfig(Strict):
    """I-SHEEP's metacognitive self-assessment: the model scores its own (instruction, response) pairs
    1-10 (the paper's scale) and pairs below the threshold are dropped."""

    level: Literal["both", "quality", "following", "none"] = Field(
        "both", description="what is scored (paper ablation): response quality, instruction following, both "
        "(paper's choice), or none (no self-assessment: every pair is kept)")
    prompt: Literal["simple", "combined", "icl"] = Field(
        "combined", description="the paper's three assessment prompts: simple standard (poor vs good), combined "
        "standard (several criteria), in-context examples (its appendix B cases, no criteria)")
    threshold: float = Field(8, ge=1, le=10, description="keep pairs scoring at least this (paper: 8)")
    combine: Literal["min", "mean"] = Field(
        "min", description="level both: the score compared with the threshold; min: both must pass (our "
        "reading; the paper does not say), mean: their average")
    max_explanation_chars: int = Field(200, ge=10, description="explanation before the scores: one line of at most this, "
                                       "structured mode with small_model_guards")


class DataFilterConfig(Strict):
    """The paper's filters that use no prompt: perplexity of the response under the model, and density
    (k-means over the model's last-layer representations, sampling from each cluster), or both."""

    kind: Literal["none", "perplexity", "density", "density_perplexity"] = Field(
        "none", description="perplexity: drop above max_perplexity; density: per_cluster random rows from each "
        "of `clusters` clusters; density_perplexity: the lowest-perplexity rows of each cluster")
    max_perplexity: float = Field(50, gt=1, description="paper: 50")
    clusters: int = Field(3000, ge=1, description="k-means clusters (paper: 3000 at 10k pairs); capped at the rows")
    per_cluster: int = Field(1, ge=1, description="rows kept from each cluster (the paper does not say how many)")
    max_length: int = Field(2048, ge=16, description="tokens per (instruction, response) scored")
    batch_size: int = Field(16, ge=1)
    concurrency: tuple[int, int] = Field((1, 1), description="(min, max) actors in the pool")
    num_cpus: float = Field(1, ge=0)
    num_gpus: float = Field(0, ge=0)


class ISheepSteps(Strict):
    # The paper gives no decoding settings: Alpaca's (temperature 1.0) for instructions, 0.7 for
    # answers, greedy for self-assessment.
    generate: SamplingConfig = SamplingConfig(temperature=1.0, max_tokens=256)
    answer: SamplingConfig = SamplingConfig(temperature=0.7, max_tokens=1024, structured=False)
    assess: SamplingConfig = SamplingConfig(temperature=0.0, max_tokens=128)


class ISheepConfig(Strict):
    """I-SHEEP (arXiv 2408.08072). Paper values as defaults: 175 seed tasks, 10k pairs generated per
    iteration, self-assessment of quality and instruction following with threshold 8, the base model
    trained on the last iteration's data (One_base)."""

    seed_tasks: ExistingFile | None = Field(None, description="Self-Instruct seed tasks JSONL (instruction + "
                                            "instances) or instruction/input rows; None: the 175 shipped ones")
    iterations: int = Field(3, ge=1, description="paper: 3 in its setting comparisons; up to 6 for 72B")
    instructions_per_iteration: int = Field(10000, ge=1, description="instructions generated per iteration, "
                                            "before filters (paper: 10k)")
    icl_examples: int = Field(3, ge=1, description="seed tasks shown per generation request (Alpaca's meta-prompt: 3)")
    max_instruction_chars: int = Field(500, ge=20)
    max_input_chars: int = Field(500, ge=1)
    small_model_guards: bool = guards_field()
    instruction_filter: FilterConfig = Field(SELF_INSTRUCT_FILTER, description="Self-Instruct's heuristics and "
                                             "ROUGE-L novelty (< 0.7 against the seed tasks and kept instructions)")
    assessment: AssessmentConfig = AssessmentConfig()
    data_filter: DataFilterConfig = DataFilterConfig()
    training_setting: Literal["one_base", "one_last", "total_base"] = Field(
        "one_base", description="one_base: the base model on the last iteration's data (paper's choice); "
        "one_last: the last model on its own data; total_base: the base model on all data so far")
    steps: ISheepSteps = ISheepSteps()


class ISheepRun(RunHeader):
    recipe: Literal["isheep"]
    run_dir: Path = Path("runs/isheep")
    isheep: ISheepConfig = ISheepConfig()
    train: TrainConfig = Field(TrainConfig(method="sft"), description="SFT on the kept pairs, each iteration "
                               "(paper: LoRA with LLaMA-Factory)")
    eval: EvalConfig | None = Field(EvalConfig(), description="after each iteration, against iteration 0; None: off")

    @field_validator("train")
    @classmethod
    def _sft(cls, value: TrainConfig) -> TrainConfig:
        if value.method != "sft":
            raise ValueError("expected method sft (I-SHEEP trains with SFT)")
        return value
