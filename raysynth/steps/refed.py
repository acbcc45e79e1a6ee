"""Reference-level feedback's LLM steps (REFED, Mehri et al. 2025): feedback on a reference's
instruction (subject areas, skills) and response (strengths, improvements), new instructions steered
by one instruction feature, one-shot answers with the reference pair, and improvement with response
feedback (analysis, strategy, improved response). Pure functions.

Feedback and improvement replies are JSON (vLLM structured output by default); a malformed or
truncated reply is repaired with json-repair, and the row records `json_repaired`; a reply that
is still unusable is counted and dropped. The paper's prompts are not in our copy of it (only its
abstract and figure captions): ours are in raysynth/prompts/refed/.
"""

from __future__ import annotations

import json
from typing import Any

from raysynth.config import RefedConfig
from raysynth.steps import PACKAGE_DIR, LLMStep, Messages, Rejection
from raysynth.steps.json_reply import list_schema, parse_json_reply, string_list
from raysynth.steps.synpo import clean_reply

RECIPE = "refed"
FEATURES = {row["feature"]: row for row in map(json.loads, (PACKAGE_DIR / "prompts" / RECIPE / "features.jsonl")
                                                .read_text().splitlines()) if row}
IMPROVE_SCHEMA = {"type": "object", "required": ["analysis", "strategy", "improved_response"],
                  "additionalProperties": False,
                  "properties": {"analysis": {"type": "string", "maxLength": 600},
                                 "strategy": {"type": "string", "maxLength": 600},
                                 "improved_response": {"type": "string", "minLength": 1}}}


def bullets(items: Any) -> str:
    return "\n".join(f"- {item}" for item in items)


# --- feedback, once per reference (and per answer in the sample-level ablation) --------------

def build_instruction_feedback(row: dict[str, Any], template: str) -> Messages:
    return [{"role": "user", "content": template.format(prompt=row["ref_prompt"])}]


def parse_instruction_feedback(text: str, row: dict[str, Any], max_items: int) -> list[dict[str, Any]]:
    value, repaired = parse_json_reply(text, ("subject_areas", "skills"))
    areas, skills = string_list(value["subject_areas"], max_items), string_list(value["skills"], max_items)
    if not areas or not skills:
        raise Rejection("unusable_json", "no subject area or no skill")
    return [{"subject_areas": areas, "skills": skills, "json_repaired": repaired}]


def build_response_feedback(row: dict[str, Any], template: str, prompt_column: str, response_column: str) -> Messages:
    return [{"role": "user", "content": template.format(prompt=row[prompt_column], response=row[response_column])}]


def parse_response_feedback(text: str, row: dict[str, Any], max_items: int) -> list[dict[str, Any]]:
    value, repaired = parse_json_reply(text, ("strengths", "improvements"))
    strengths, improvements = string_list(value["strengths"], max_items), string_list(value["improvements"], max_items)
    if not strengths or not improvements:
        raise Rejection("unusable_json", "no strength or no improvement")
    return [{"strengths": strengths, "improvements": improvements, "json_repaired": repaired}]


# --- synthesis -------------------------------------------------------------------------------

def build_generate(row: dict[str, Any], template: str) -> Messages:
    feature = FEATURES[row["feature"]]
    return [{"role": "user", "content": template.format(
        prompt=row["ref_prompt"], feature_description=feature["description"], feature_text=bullets(row[row["feature"]]),
        feature_request=feature["request"])}]


def generate_regex(max_chars: int) -> str:
    """Structured mode: one instruction on one line, without the chatter small models put around it."""
    return rf"Instruction: [A-Z][^\n]{{9,{max_chars - 1}}}"


def parse_generated_instruction(text: str, row: dict[str, Any], max_chars: int) -> list[dict[str, Any]]:
    instruction = clean_reply(text)
    if not instruction:
        raise Rejection("empty")
    if len(instruction) > max_chars:
        raise Rejection("too_long", f"{len(instruction)} chars")
    if instruction.strip().lower() == str(row["ref_prompt"]).strip().lower():
        raise Rejection("copied_reference")
    return [{"instruction": instruction}]


def build_answer(row: dict[str, Any], template: str) -> Messages:
    """One-shot: the reference pair as an earlier turn, then the new instruction."""
    return [{"role": "user", "content": row["ref_prompt"]}, {"role": "assistant", "content": row["ref_output"]},
            {"role": "user", "content": template.format(instruction=row["instruction"])}]


def parse_answer(text: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    if not text.strip():
        raise Rejection("empty")
    return [{"response": text.strip()}]


def build_improve(row: dict[str, Any], template: str) -> Messages:
    return [{"role": "user", "content": template.format(
        strengths=bullets(row["strengths"]), improvements=bullets(row["improvements"]),
        instruction=row["instruction"], response=row["response"])}]


def parse_improve(text: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    value, repaired = parse_json_reply(text, ("improved_response",))
    improved = str(value["improved_response"]).strip()
    if not improved:
        raise Rejection("unusable_json", "empty improved_response")
    return [{"analysis": str(value.get("analysis", "")), "strategy": str(value.get("strategy", "")),
             "improved": improved, "json_repaired": repaired}]


def refed_steps(cfg: RefedConfig) -> dict[str, LLMStep]:
    items, s = cfg.max_list_items, cfg.steps

    def response_feedback(name: str, columns: tuple[str, str]) -> LLMStep:
        return LLMStep(name, RECIPE, "response_feedback",
                       lambda row, template: build_response_feedback(row, template, *columns),
                       lambda text, row: parse_response_feedback(text, row, items), s.response_feedback,
                       json_schema=list_schema("strengths", "improvements", max_items=items),
                       params={"columns": list(columns), "items": items})

    return {
        "instruction_feedback": LLMStep(
            "instruction-feedback", RECIPE, "instruction_feedback", build_instruction_feedback,
            lambda text, row: parse_instruction_feedback(text, row, items), s.instruction_feedback,
            json_schema=list_schema("subject_areas", "skills", max_items=items), params={"items": items}),
        "reference_feedback": response_feedback("response-feedback", ("ref_prompt", "ref_output")),
        "sample_feedback": response_feedback("sample-feedback", ("instruction", "response")),
        "generate": LLMStep("instructions", RECIPE, "generate_instruction", build_generate,
                            lambda text, row: parse_generated_instruction(text, row, cfg.max_instruction_chars),
                            s.generate.model_copy(update={"n": cfg.instructions_per_feature}),
                            regex=generate_regex(cfg.max_instruction_chars), params={"max_chars": cfg.max_instruction_chars}),
        "answer": LLMStep("answer", RECIPE, "answer", build_answer, parse_answer, s.answer),
        "improve": LLMStep("improve", RECIPE, "improve_sample" if cfg.feedback == "sample" else "improve",
                           build_improve, parse_improve, s.improve, json_schema=IMPROVE_SCHEMA),
    }
