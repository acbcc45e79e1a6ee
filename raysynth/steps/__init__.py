"""LLM steps as data: a template file, pure `build`/`parse` functions, sampling, output format.

`build(row, template) -> messages` and `parse(text, row) -> list of new columns` are pure and
unit-tested on fixed strings; the engine and the stage runner do the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from raysynth.config import SamplingConfig
from raysynth.hashing import sha256_hex

# The shared steps' prompts (judge, eval); each paper's are in its folder, raysynth/recipes/<paper>/prompts.
SHARED_PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
Messages = list[dict[str, str]]


class Rejection(Exception):
    """A model reply that cannot be used; `reason` is a short, countable label."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def load_template(prompts_dir: Path, name: str) -> str:
    return (prompts_dir / f"{name}.txt").read_text()


def text_hash(text: str) -> str:
    return sha256_hex(text, 12)


@dataclass(frozen=True)
class LLMStep:
    name: str
    recipe: str  # with template_name, the `template` lineage column (e.g. condor/question)
    prompts_dir: Path
    template_name: str
    build: Callable[[dict[str, Any], str], Messages]
    parse: Callable[[str, dict[str, Any]], list[dict[str, Any]]]
    sampling: SamplingConfig
    # vLLM structured output for format-bound steps (used when sampling.structured is on).
    regex: str | None = None
    json_schema: dict[str, Any] | None = None
    # Extra knobs that change build/parse (e.g. char limits); part of the stage identity.
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def template(self) -> str:
        return load_template(self.prompts_dir, self.template_name)

    @property
    def template_hash(self) -> str:
        return text_hash(self.template)

    def identity(self) -> dict[str, Any]:
        """What makes this step's output what it is (hashed into the stage directory name)."""
        return {
            "step": self.name,
            "template": self.template_name,
            "template_hash": self.template_hash,
            "sampling": self.sampling.model_dump(),
            "regex": self.regex if self.sampling.structured else None,
            "json_schema": self.json_schema if self.sampling.structured else None,
            "params": self.params,
        }
