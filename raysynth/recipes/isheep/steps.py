"""I-SHEEP's LLM steps (arXiv 2408.08072): self-driven instruction generation from seed examples
(Alpaca's meta-prompt, in context), the model's zero-shot answer, and its metacognitive
self-assessment. Pure functions.

Choices where the paper is open (its appendix A prompts are not in our copy of the text):
- The model writes one task per request (`Instruction: ...` / `Input: ...`), not Alpaca's 20-task
  list: small models lose a long numbered format, one task per call keeps every reply usable and the
  ICL examples differ per request.
- Assessment scores use the paper's 1-10 scale, one line per assessed aspect (`Quality: N`,
  `Following: N`) after a one-sentence explanation; the guidance text per prompt style is in
  raysynth/recipes/isheep/prompts/guidance/ (the ICL examples are the paper's appendix B cases, shortened).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from raysynth.recipes.isheep.config import AssessmentConfig, ISheepConfig
from raysynth.shipped import read_jsonl
from raysynth.steps import LLMStep, Messages, Rejection, text_hash
from raysynth.steps.eval import respond_step
from raysynth.steps.patterns import explanation_before, text_without

RECIPE = "isheep"
PROMPTS = Path(__file__).resolve().parent / "prompts"
GUIDANCE_DIR = PROMPTS / "guidance"
ASPECTS = {"both": ("quality", "following"), "quality": ("quality",), "following": ("following",), "none": ()}
_NO_INPUT = {"", "<noinput>", "noinput", "<no input>", "none", "n/a", "na", "-", "no input", "(none)"}
_INSTRUCTION_RE = re.compile(r"instruction\s*\d*\s*[:：][ \t]*(?P<text>.*)", re.IGNORECASE | re.DOTALL)
_INPUT_RE = re.compile(r"\n\s*(?:\d+\.\s*)?input\s*[:：]", re.IGNORECASE)
_PLACEHOLDER_RE = re.compile(r"^<.*>$", re.DOTALL)  # the template's "<the new instruction>" copied back
_NEXT_TASK_RE = re.compile(r"\n\s*(?:\d+\.\s*)?(?:instruction|output)\s*\d*\s*[:：]|\n\s*###", re.IGNORECASE)


# --- instruction generation ------------------------------------------------------------------

def task_prompt(instruction: str, task_input: str) -> str:
    """What the user sends: the instruction, then its input when there is one (Alpaca's format)."""
    return instruction.strip() + (f"\n\n{task_input.strip()}" if task_input.strip() else "")


def format_examples(tasks: list[dict[str, str]]) -> str:
    return "\n\n".join(f"Instruction: {t['instruction'].strip()}\nInput: {t['input'].strip() or '<noinput>'}"
                       for t in tasks)


def generation_requests(seed_tasks: list[dict[str, str]], count: int, per_request: int, seed: int,
                        iteration: int) -> list[dict[str, Any]]:
    """`count` requests, each with its own seeded sample of seed tasks as in-context examples."""
    rng = random.Random(f"{seed}-{iteration}")
    k = min(per_request, len(seed_tasks))
    return [{"request": i, "examples": json.dumps(rng.sample(seed_tasks, k), ensure_ascii=False)}
            for i in range(count)]


def build_generate(row: dict[str, Any], template: str) -> Messages:
    return [{"role": "user", "content": template.format(examples=format_examples(json.loads(row["examples"])))}]


def generate_regex(max_instruction_chars: int, max_input_chars: int, guards: bool = True) -> str:
    if not guards:  # the two labels only: an instruction of any lines, then any input
        return rf"Instruction: {text_without(chr(10) + 'Input:')}\nInput: (?:[^\n]|\n)+"
    return rf"Instruction: [A-Za-z0-9][^\n]{{9,{max_instruction_chars - 1}}}\nInput: [^\n]{{1,{max_input_chars}}}"


def parse_generated(text: str, row: dict[str, Any], max_instruction_chars: int, max_input_chars: int
                    ) -> list[dict[str, Any]]:
    """The first task of the reply: its instruction, its input ('' for <noinput>), and the prompt."""
    match = _INSTRUCTION_RE.search(text)
    if match is None:
        raise Rejection("unparseable", "no 'Instruction:' line")
    body = _NEXT_TASK_RE.split(match.group("text"), maxsplit=1)[0]
    parts = _INPUT_RE.split(body, maxsplit=1)
    instruction = parts[0].strip().strip('"').strip()
    task_input = parts[1].strip() if len(parts) > 1 else ""
    if task_input.lower() in _NO_INPUT or _PLACEHOLDER_RE.match(task_input):
        task_input = ""
    if not instruction:
        raise Rejection("empty")
    if _PLACEHOLDER_RE.match(instruction):
        raise Rejection("placeholder", instruction)
    if len(instruction) > max_instruction_chars or len(task_input) > max_input_chars:
        raise Rejection("too_long", f"{len(instruction)} + {len(task_input)} chars")
    return [{"instruction": instruction, "input": task_input, "prompt": task_prompt(instruction, task_input)}]


# --- self-assessment -------------------------------------------------------------------------

def guidance(cfg: AssessmentConfig) -> str:
    """The assessment's standards for the configured prompt style and level."""
    aspects = ASPECTS[cfg.level]
    if cfg.prompt != "icl":
        return "\n".join((GUIDANCE_DIR / f"{cfg.prompt}_{aspect}.txt").read_text().strip() for aspect in aspects)
    examples = read_jsonl(GUIDANCE_DIR / "icl_examples.jsonl")
    shown = [f"[Instruction]\n{task_prompt(e['instruction'], e['input'])}\n\n[Response]\n{e['output']}\n\n"
             + "\n".join(f"{aspect.capitalize()}: {e[f'{aspect}_score']}" for aspect in aspects) for e in examples]
    return (GUIDANCE_DIR / "icl_intro.txt").read_text().strip() + "\n\n" + "\n\n".join(shown)


def answer_format(level: str) -> str:
    return "Explanation: <one sentence>\n" + "\n".join(f"{a.capitalize()}: <1-10>" for a in ASPECTS[level])


def assess_regex(level: str, max_explanation_chars: int, guards: bool = True) -> str:
    """The explanation, then one score line per assessed aspect. With the small-model guards the
    explanation is one line of at most `max_explanation_chars`; without them any text that does not
    start the first score line (several lines, any length: what the parser needs is the scores)."""
    scores = [rf"\n{a.capitalize()}: (10|[1-9])" for a in ASPECTS[level]]
    first = f"\n{ASPECTS[level][0].capitalize()}:" if scores else ""
    return "Explanation: " + explanation_before(first, max_explanation_chars, guards or not scores) + "".join(scores)


def build_assess(row: dict[str, Any], template: str, guidance_text: str, level: str) -> Messages:
    return [{"role": "user", "content": template.format(
        guidance=guidance_text, prompt=row["prompt"], response=row["response"], answer_format=answer_format(level))}]


def parse_assessment(text: str, row: dict[str, Any], level: str) -> list[dict[str, Any]]:
    """`quality_score` / `following_score` (NaN when not assessed at this level); a reply that lacks
    an assessed score, or gives one outside 1-10, is a rejection."""
    scores = {"quality_score": float("nan"), "following_score": float("nan")}
    for aspect in ASPECTS[level]:
        found = re.findall(rf"{aspect}(?:\s+score)?\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)", text, re.IGNORECASE)
        if not found:
            raise Rejection("unparseable", f"no {aspect} score")
        value = float(found[-1])
        if not 1 <= value <= 10:
            raise Rejection("score_out_of_range", f"{aspect} {value}")
        scores[f"{aspect}_score"] = value
    return [{**scores, "assessment": text.strip()}]


def assessment_score(row: dict[str, Any], cfg: AssessmentConfig) -> float:
    values = [float(row[f"{aspect}_score"]) for aspect in ASPECTS[cfg.level]]
    return min(values) if cfg.combine == "min" else sum(values) / len(values)


def threshold_reason(row: dict[str, Any], cfg: AssessmentConfig) -> str | None:
    """Keep a pair whose self-assessed score reaches the threshold; level none keeps every pair."""
    if cfg.level == "none":
        return None
    return None if assessment_score(row, cfg) >= cfg.threshold else "score_below_threshold"


# --- the steps -------------------------------------------------------------------------------

def isheep_steps(cfg: ISheepConfig) -> dict[str, LLMStep]:
    chars = (cfg.max_instruction_chars, cfg.max_input_chars)
    assessment, text = cfg.assessment, guidance(cfg.assessment)
    return {
        "generate": LLMStep("instructions", RECIPE, PROMPTS, "generate_instruction", build_generate,
                            lambda reply, row: parse_generated(reply, row, *chars), cfg.steps.generate,
                            regex=generate_regex(*chars, cfg.small_model_guards), params={"chars": list(chars)}),
        # The model answers zero-shot, as a user would ask: the evaluation's step under another name.
        "answer": replace(respond_step(cfg.steps.answer), name="answer"),
        "assess": LLMStep("assess", RECIPE, PROMPTS, "assess",
                          lambda row, template: build_assess(row, template, text, assessment.level),
                          lambda reply, row: parse_assessment(reply, row, assessment.level), cfg.steps.assess,
                          regex=assess_regex(assessment.level, assessment.max_explanation_chars,
                                             cfg.small_model_guards),
                          params={"level": assessment.level, "prompt": assessment.prompt,
                                  "guidance_hash": text_hash(text), "chars": assessment.max_explanation_chars}),
    }
