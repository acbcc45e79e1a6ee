"""SynPO's config: keyword lists, the self-prompt generator, the response improver, pairs and SimPO;
the paper's values as defaults (arXiv 2410.06961)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from raysynth.config import (EvalConfig, ExistingFile, FilterConfig, RunHeader, SamplingConfig, ScorerConfig, Strict,
                             TrainConfig)


class KeywordConfig(Strict):
    """SynPO's keyword lists (appendix C.1; raysynth/recipes/synpo/keywords.py says what the paper leaves open)."""

    per_list: int = Field(3, ge=1, description="keywords per list, all from one paragraph (paper: 3)")
    candidates: int = Field(10, ge=1, description="YAKE keywords per paragraph that a list is drawn from")
    max_ngram: int = Field(2, ge=1, le=3, description="words per keyword at most")
    max_words: int = Field(300, ge=10, description="words of a paragraph YAKE reads (its cost grows with length)")
    oversample: float = Field(1.2, ge=1, description="keyword lists drawn per wanted prompt, for the lists "
                              "and prompts filtered out (paper: 36k-72k lists for 50k prompts)")
    batch_size: int = Field(256, ge=1, description="paragraphs per block of the pool stage (the unit of commit)")
    sample_batch_size: int = Field(8192, ge=1, description="pool lists per block of the sampling stage")


class SynpoSteps(Strict):
    # Paper: prompts sampled at temperature 0.7 (C.1); its decoding temperature for answers and
    # improvements is not legible in our copy, so 0.7 there too (its AlpacaEval decoding value).
    generate_prompt: SamplingConfig = SamplingConfig(temperature=0.7, max_tokens=256, structured=False)
    answer: SamplingConfig = SamplingConfig(temperature=0.7, max_tokens=1024, structured=False)
    improve: SamplingConfig = SamplingConfig(temperature=0.7, max_tokens=1024, structured=False)


class SynpoConfig(Strict):
    """SynPO (arXiv 2410.06961). Paper values as defaults: 4 iterations, 50k synthetic prompts and up
    to 10,000 new pairs per iteration, PairRM gap 0.20 (ArmoRM 0.02), > 50% repetition dropped."""

    seed_data: ExistingFile | None = Field(None, description="seed SFT JSONL: instruction/input/output (Alpaca) or "
                                   "prompt/response rows; None: the Alpaca slice shipped with raysynth")
    seed_limit: int | None = Field(None, ge=1, description="first N seed rows; None: all")
    corpus: list[str] | None = Field(None, description="paragraph files or directories (JSONL / Parquet / text, "
                                     "local or s3:// gs:// paths); None: the paragraphs shipped with raysynth")
    text_column: str = Field("text", description="the paragraph column of JSONL/Parquet corpus files")
    keywords: KeywordConfig = KeywordConfig()
    iterations: int = Field(4, ge=1, description="paper: 4")
    prompts_per_iteration: int = Field(50000, ge=1, description="synthetic prompts wanted per iteration "
                                       "(paper: 50k); about this many come out after filtering")
    max_prompt_chars: int = Field(2000, ge=10, description="longer generated prompts are dropped")
    prompt_filter: FilterConfig = Field(FilterConfig(rouge_l_max=None), description="filters over generated "
                                        "prompts; default: MinHash near-duplicates only")
    pair_builder: Literal["synpo", "sampling_ranking", "seed_po"] = Field(
        "synpo", description="synpo: (improved, original) on synthetic prompts; the paper's baselines: "
        "sampling_ranking (best vs worst of steps.answer.n samples by the scorer; paper n=5) and "
        "seed_po (seed gold as chosen, the policy's answer as rejected)")
    pairs_per_iteration: int = Field(10000, ge=1, description="new pairs added to the accumulated set per "
                                     "iteration, drawn at random from those kept (paper: 10,000)")
    scorer: ScorerConfig = ScorerConfig()
    judge_model: str | None = Field(None, description="llm_judge scorer's model; None: the initial model")
    steps: SynpoSteps = SynpoSteps()
    generator_train: TrainConfig = Field(TrainConfig(method="sft"), description="self-prompt generator SFT")
    improver_train: TrainConfig = Field(TrainConfig(method="sft"), description="response improver SFT, each iteration")
    beta_search: list[Annotated[float, Field(gt=0)]] = Field(
        [], description="SimPO betas to train each iteration, keeping the model that ranks held-out seed pairs "
        "(gold over the current policy's answer) best by SimPO's implicit reward (paper: beta searched in 2-12, "
        "seed data for validation); empty: one run with train.simpo_beta (each beta is a full training run: "
        "off by default, too slow on CPU)")
    beta_search_holdout: float = Field(0.1, gt=0, lt=1, description="with beta_search, the share of the seed rows "
                                       "set aside as its validation pairs and kept out of all training (the "
                                       "paper does not say how much)")

    @field_validator("corpus")
    @classmethod
    def _corpus_exists(cls, value: list[str] | None) -> list[str] | None:
        for item in value or []:
            if "://" not in item and not Path(item).exists():
                raise ValueError(f"not found: {item}")
        if value is not None and not value:
            raise ValueError("expected at least one path")
        return value

    @model_validator(mode="after")
    def _ranking_needs_samples(self) -> "SynpoConfig":
        if self.pair_builder == "sampling_ranking" and self.steps.answer.n < 2:
            raise ValueError("pair_builder sampling_ranking needs steps.answer.n >= 2 (paper: 5)")
        for name in ("generator_train", "improver_train"):
            if getattr(self, name).method != "sft":
                raise ValueError(f"{name}.method: expected sft")
        return self


class SynpoRun(RunHeader):
    recipe: Literal["synpo"]
    run_dir: Path = Path("runs/synpo")
    synpo: SynpoConfig = SynpoConfig()
    train: TrainConfig = Field(TrainConfig(method="simpo"), description="preference optimisation of the "
                               "initial model on the accumulated pairs, each iteration (paper: SimPO)")
    eval: EvalConfig | None = Field(EvalConfig(), description="after each iteration, against iteration 0; None: off")

    @field_validator("train")
    @classmethod
    def _preference_method(cls, value: TrainConfig) -> TrainConfig:
        if value.method == "sft":
            raise ValueError("expected a preference method: simpo (paper) or dpo")
        return value

    @model_validator(mode="after")
    def _beta_search_is_simpo(self) -> "SynpoRun":
        if self.synpo.beta_search and self.train.method != "simpo":
            raise ValueError("synpo.beta_search: expected train.method simpo (the betas are SimPO's)")
        return self
