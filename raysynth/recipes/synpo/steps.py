"""SynPO's LLM steps (arXiv 2410.06961): the self-prompt generator (keywords -> a user prompt), the
policy's answer, and the response improver (prompt + answer -> improved answer). Pure functions.

The generator and the improver are the initial model fine-tuned on these same templates (their SFT
rows are built with `generator_message` / `improver_message`), so a template edit changes both the
training data and the inference prompt. The paper's templates (its figures 3 and 7) are not in our
copy of the text; ours are in raysynth/recipes/synpo/prompts/.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from raysynth.recipes.synpo.config import SynpoConfig
from raysynth.steps import LLMStep, Messages, Rejection, load_template
from raysynth.steps.eval import respond_step

RECIPE = "synpo"
PROMPTS = Path(__file__).resolve().parent / "prompts"

_LEAD_IN = re.compile(r"^\s*(?:\*\*|#+\s*)?(?:request|prompt|instruction|user|improved response)\s*(?::\s*\**|\**\s*:)\s*",
                      re.IGNORECASE)


def generator_message(keywords: list[str], template: str) -> str:
    return template.format(keywords=", ".join(keywords))


def improver_message(prompt: str, response: str, template: str) -> str:
    return template.format(prompt=prompt, response=response)


def generator_keywords(prompt_words: list[str], noise_words: list[str], rng: random.Random) -> list[str] | None:
    """The generator's training input for one seed prompt (paper 2.1): two keywords of the prompt and
    one noise keyword of another prompt, shuffled; None when either side has too few."""
    if len(prompt_words) < 2 or not noise_words:
        return None
    chosen = rng.sample(prompt_words, 2) + [rng.choice(noise_words)]
    rng.shuffle(chosen)
    return chosen


def clean_reply(text: str) -> str:
    """The reply without a lead-in label ("Request: ...") or wrapping quotes."""
    text = _LEAD_IN.sub("", text.strip()).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def build_generate_prompt(row: dict[str, Any], template: str) -> Messages:
    return [{"role": "user", "content": generator_message([str(k) for k in row["keywords"]], template)}]


def parse_generated_prompt(text: str, row: dict[str, Any], max_chars: int) -> list[dict[str, Any]]:
    prompt = clean_reply(text)
    if not prompt:
        raise Rejection("empty")
    if len(prompt) > max_chars:
        raise Rejection("too_long", f"{len(prompt)} chars")
    return [{"prompt": prompt}]


def build_improve(row: dict[str, Any], template: str) -> Messages:
    return [{"role": "user", "content": improver_message(str(row["prompt"]), str(row["response"]), template)}]


def parse_improved(text: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    improved = clean_reply(text)
    if not improved:
        raise Rejection("empty")
    return [{"improved": improved}]


def synpo_steps(cfg: SynpoConfig) -> dict[str, LLMStep]:
    return {
        "generate_prompt": LLMStep(
            "prompts", RECIPE, PROMPTS, "generate_prompt", build_generate_prompt,
            lambda text, row: parse_generated_prompt(text, row, cfg.max_prompt_chars),
            cfg.steps.generate_prompt, params={"max_prompt_chars": cfg.max_prompt_chars}),
        # The policy answers a prompt as a user sent it: the evaluation's step under another name.
        "answer": replace(respond_step(cfg.steps.answer), name="answer"),
        "improve": LLMStep("improve", RECIPE, PROMPTS, "improve", build_improve, parse_improved, cfg.steps.improve),
    }


def templates() -> dict[str, str]:
    return {name: load_template(PROMPTS, name) for name in ("generate_prompt", "improve")}
