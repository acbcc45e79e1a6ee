"""The evaluation's one LLM step: answer a benchmark prompt as a user would send it."""

from __future__ import annotations

from typing import Any

from raysynth.config import SamplingConfig
from raysynth.steps import SHARED_PROMPTS, LLMStep, Messages

RECIPE = "eval"
PROMPTS = SHARED_PROMPTS / RECIPE


def build_respond(row: dict[str, Any], template: str) -> Messages:
    return [{"role": "user", "content": template.format(prompt=row["prompt"])}]


def parse_respond(text: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    # Never a rejection: an empty or rambling reply is the model's answer, and the checkers judge it.
    return [{"response": text.strip()}]


def respond_step(sampling: SamplingConfig) -> LLMStep:
    return LLMStep("eval-respond", RECIPE, PROMPTS, "respond", build_respond, parse_respond, sampling)
