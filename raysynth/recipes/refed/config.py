"""REFED's config: reference-level feedback, the instructions and answers it steers, and the
improvement; the paper's values as defaults (Mehri et al. 2025)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from raysynth.config import (EvalConfig, ExistingFile, FilterConfig, RunHeader, SamplingConfig, ScorerConfig, Strict,
                             TrainConfig, student_field)


class RefedSteps(Strict):
    # The paper does not give decoding settings: greedy-ish for feedback, 1.0 for new instructions
    # (diversity across the 10 per feature), 0.7 for answers and improvements.
    instruction_feedback: SamplingConfig = SamplingConfig(temperature=0.0, max_tokens=256)
    response_feedback: SamplingConfig = SamplingConfig(temperature=0.0, max_tokens=384)
    generate: SamplingConfig = SamplingConfig(temperature=1.0, max_tokens=256)
    answer: SamplingConfig = SamplingConfig(temperature=0.7, max_tokens=1024, structured=False)
    improve: SamplingConfig = SamplingConfig(temperature=0.7, max_tokens=1536)


class RefedConfig(Strict):
    """Reference-level feedback (REFED, Mehri et al. 2025). Paper values as defaults: instruction feedback
    (subject areas, skills) and response feedback (strengths, improvements) collected once per reference;
    10 new instructions per reference and instruction feature (20 per reference); one-shot answers with the
    reference pair; improvement with the reference's response feedback (analysis, strategy, improved
    response). Filters are optional and off, as in the released 10k set."""

    references: ExistingFile | None = Field(None, description="curated reference samples, JSONL: instruction/input/"
                                            "output (Alpaca) or prompt/response; None: the Alpaca slice shipped with raysynth")
    reference_limit: int | None = Field(None, ge=1, description="first N references; None: all")
    features: list[Literal["subject_areas", "skills"]] = Field(
        ["subject_areas", "skills"], min_length=1, description="instruction features that each steer new instructions")
    instructions_per_feature: int = Field(10, ge=1, description="new instructions per reference and feature, asked "
                                          "for in one request (paper: 10)")
    training_data: Literal["synthetic", "references"] = Field(
        "synthetic", description="synthetic: the REFED samples; references: the paper's seed-only baseline, SFT on "
        "the curated references alone (no feedback or synthesis)")
    feedback: Literal["reference", "instruction_only", "sample"] = Field(
        "reference", description="reference: the reference's response feedback improves every answer (paper); the "
        "paper's ablations: instruction_only (no improvement step) and sample (feedback written on each answer)")
    max_list_items: int | None = Field(5, ge=1, description="feedback list items kept (subject areas, skills, "
                                       "strengths, improvements) and the improvement record's bounds (points per list, "
                                       "300 characters a point, 600 the rationale): a small-model guard, the paper caps "
                                       "none; None: all, unbounded")
    max_instruction_chars: int | None = Field(1500, ge=10, description="longer generated instructions are dropped "
                                              "(a small-model guard against runaway text; the paper caps none); "
                                              "None: any length")
    diversity_filter: FilterConfig | None = Field(
        None, description="ROUGE-L diversity selection over new instructions, e.g. {rouge_l_max: 0.7}; None: off")
    judge_filter: bool = Field(False, description="keep a sample only when the judge prefers the improved response "
                               "to the original in both orders (position-swapped)")
    judge: ScorerConfig = Field(ScorerConfig(kind="llm_judge"), description="the judge filter's scorer (llm_judge: "
                                "gap 1.0 keeps agreed wins; 0 also keeps ties)")
    judge_model: str | None = Field(None, description="the judge's model; None: the run's model")
    steps: RefedSteps = RefedSteps()


class RefedRun(RunHeader):
    recipe: Literal["refed"]
    run_dir: Path = Path("runs/refed")
    refed: RefedConfig = RefedConfig()
    student_model: str | None = student_field("a smaller student trained on a larger teacher's data")
    train: TrainConfig | None = Field(TrainConfig(method="sft"), description="SFT on (instruction, improved "
                                      "response); None: synthesis only")
    eval: EvalConfig | None = Field(EvalConfig(), description="IFEval (and win rate) of the trained model "
                                    "against the starting one; None: off")

    @field_validator("train")
    @classmethod
    def _sft(cls, value: TrainConfig | None) -> TrainConfig | None:
        if value is not None and value.method != "sft":
            raise ValueError("expected method sft (REFED is an SFT dataset)")
        return value
