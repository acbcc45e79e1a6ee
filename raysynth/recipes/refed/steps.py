"""Reference-level feedback's LLM steps (REFED, Mehri et al. 2025): feedback on a reference's
instruction (subject areas, skills) and response (strengths, improvements, judged on the paper's
criteria: content, communication, fit to the instruction), ten new instructions in one request per
reference and instruction feature, one-shot answers with the reference pair, and improvement with
response feedback (the paper's nested record: analysis, implementation strategy, improved response).
Pure functions.

Every reply but the answer is JSON (vLLM structured output by default); a malformed or truncated
reply is repaired with json-repair, and the row records `json_repaired`; a reply that is still
unusable is counted and dropped. Our prompts (raysynth/recipes/refed/prompts/) follow the structure of the
authors' (repository Shuhaibm/refed, prompts.py), in our words.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raysynth.recipes.refed.config import RefedConfig
from raysynth.shipped import read_jsonl
from raysynth.steps import LLMStep, Messages, Rejection
from raysynth.steps.json_reply import list_schema, object_schema, parse_json_reply, string_array, string_list

RECIPE = "refed"
PROMPTS = Path(__file__).resolve().parent / "prompts"
FEATURES = {row["feature"]: row for row in read_jsonl(PROMPTS / "features.jsonl")}


def improve_schema(max_items: int | None) -> dict[str, Any]:
    """The authors' improvement record. With `max_list_items` set (the small-model guard) its lists
    hold at most that many points of at most 300 characters and the rationale at most 600, so a small
    model's reply leaves room for the improved response; without it only the record's shape is fixed."""
    points = string_array(1, 300 if max_items is not None else None, max_items=max_items)
    rationale = {"type": "string", **({"maxLength": 600} if max_items is not None else {})}
    return object_schema({
        "analysis": object_schema({"original_strengths": points, "improvement_opportunities": points,
                                   "relevant_feedback": points}),
        "implementation_strategy": object_schema({"planned_changes": points, "rationale": rationale}),
        "improved_response": {"type": "string", "minLength": 1}})


def bullets(items: Any) -> str:
    return "\n".join(f"- {item}" for item in items)


# --- feedback, once per reference (and per answer in the sample-level ablation) --------------

def build_instruction_feedback(row: dict[str, Any], template: str) -> Messages:
    return [{"role": "user", "content": template.format(prompt=row["ref_prompt"])}]


def parse_instruction_feedback(text: str, row: dict[str, Any], max_items: int | None) -> list[dict[str, Any]]:
    value, repaired = parse_json_reply(text, ("subject_areas", "skills"))
    areas, skills = string_list(value["subject_areas"], max_items), string_list(value["skills"], max_items)
    if not areas or not skills:
        raise Rejection("unusable_json", "no subject area or no skill")
    return [{"subject_areas": areas, "skills": skills, "json_repaired": repaired}]


def build_response_feedback(row: dict[str, Any], template: str, prompt_column: str, response_column: str) -> Messages:
    return [{"role": "user", "content": template.format(prompt=row[prompt_column], response=row[response_column])}]


def parse_response_feedback(text: str, row: dict[str, Any], max_items: int | None) -> list[dict[str, Any]]:
    value, repaired = parse_json_reply(text, ("strengths", "improvements"))
    strengths, improvements = string_list(value["strengths"], max_items), string_list(value["improvements"], max_items)
    if not strengths or not improvements:
        raise Rejection("unusable_json", "no strength or no improvement")
    return [{"strengths": strengths, "improvements": improvements, "json_repaired": repaired}]


# --- synthesis -------------------------------------------------------------------------------

def build_generate(row: dict[str, Any], template: str, count: int) -> Messages:
    feature = FEATURES[row["feature"]]
    return [{"role": "user", "content": template.format(
        prompt=row["ref_prompt"], feature_description=feature["description"], feature_text=bullets(row[row["feature"]]),
        feature_request=feature["request"], count=count)}]


def generate_schema(count: int, max_chars: int | None) -> dict[str, Any]:
    return object_schema({"instructions": string_array(10, max_chars, count, min_items=1)})


def parse_generated_instructions(text: str, row: dict[str, Any], max_chars: int | None) -> list[dict[str, Any]]:
    """The reply's distinct new instructions, a row each: empty ones, over-long ones, copies of the
    reference and repeats (ignoring case and spacing) left out, and the last one of a reply cut short
    (it is cut too); none left is a rejection."""
    value, repaired = parse_json_reply(text, ("instructions",))
    items = string_list(value["instructions"])
    if repaired and not text.rstrip().endswith(("]", "}")):
        items = items[:-1]
    seen = {" ".join(str(row["ref_prompt"]).lower().split())}
    rows = []
    for item in items:
        key = " ".join(item.lower().split())
        if (max_chars is None or len(item) <= max_chars) and key not in seen:
            seen.add(key)
            rows.append({"instruction": item, "json_repaired": repaired})
    if not rows:
        raise Rejection("unusable_json", "no new, distinct instruction")
    return rows


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
    """The improved response, with the analysis and the strategy kept as JSON text."""
    value, repaired = parse_json_reply(text, ("improved_response",))
    improved = str(value["improved_response"]).strip()
    if not improved:
        raise Rejection("unusable_json", "empty improved_response")
    return [{"analysis": json.dumps(value.get("analysis", {}), ensure_ascii=False),
             "strategy": json.dumps(value.get("implementation_strategy", {}), ensure_ascii=False),
             "improved": improved, "json_repaired": repaired}]


def refed_steps(cfg: RefedConfig) -> dict[str, LLMStep]:
    items, s = cfg.max_list_items, cfg.steps

    def response_feedback(name: str, columns: tuple[str, str]) -> LLMStep:
        return LLMStep(name, RECIPE, PROMPTS, "response_feedback",
                       lambda row, template: build_response_feedback(row, template, *columns),
                       lambda text, row: parse_response_feedback(text, row, items), s.response_feedback,
                       json_schema=list_schema("strengths", "improvements", max_items=items),
                       params={"columns": list(columns), "items": items})

    return {
        "instruction_feedback": LLMStep(
            "instruction-feedback", RECIPE, PROMPTS, "instruction_feedback", build_instruction_feedback,
            lambda text, row: parse_instruction_feedback(text, row, items), s.instruction_feedback,
            json_schema=list_schema("subject_areas", "skills", max_items=items), params={"items": items}),
        "reference_feedback": response_feedback("response-feedback", ("ref_prompt", "ref_output")),
        "sample_feedback": response_feedback("sample-feedback", ("instruction", "response")),
        # One request per reference and feature for all its instructions, as the paper asks: the model
        # sees the list it writes, so the instructions differ from each other.
        "generate": LLMStep("instructions", RECIPE, PROMPTS, "generate_instruction",
                            lambda row, template: build_generate(row, template, cfg.instructions_per_feature),
                            lambda text, row: parse_generated_instructions(text, row, cfg.max_instruction_chars),
                            s.generate, json_schema=generate_schema(cfg.instructions_per_feature, cfg.max_instruction_chars),
                            params={"count": cfg.instructions_per_feature, "max_chars": cfg.max_instruction_chars}),
        "answer": LLMStep("answer", RECIPE, PROMPTS, "answer", build_answer, parse_answer, s.answer),
        "improve": LLMStep("improve", RECIPE, PROMPTS, "improve_sample" if cfg.feedback == "sample" else "improve",
                           build_improve, parse_improve, s.improve, json_schema=improve_schema(items)),
    }
