"""Condor's LLM steps (arXiv 2501.12273): question synthesis per (tag, task type), answer,
self-critique (the paper's bracketed Strength / Weakness / Suggestion sections), refinement. Pure
build/parse functions."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from raysynth.config import SamplingConfig
from raysynth.recipes.condor.config import CondorConfig
from raysynth.steps import LLMStep, Messages, Rejection
from raysynth.steps.json_reply import object_schema, parse_json_reply, string_array, string_list
from raysynth.steps.patterns import text_without

RECIPE = "condor"
PROMPTS = Path(__file__).resolve().parent / "prompts"

_QUESTION_RE = re.compile(
    r"\[\s*(?P<level>[A-Za-z]+)\s*\]\s*\[\s*Question Start\s*\](?P<text>.*?)\[\s*Question End\s*\]",
    re.DOTALL | re.IGNORECASE,
)
_BRACKETED_RE = {name: re.compile(rf"\[\s*{name} Start\s*\](?P<text>.*?)\[\s*{name} End\s*\]", re.DOTALL | re.IGNORECASE)
                 for name in ("Strength", "Weakness", "Suggestion")}
_SECTION_RE = re.compile(
    r"^\W*(?P<name>Strengths?|Weakness(?:es)?|Suggestions?)[*_ ]*:[*_]*\s*",
    re.IGNORECASE | re.MULTILINE,
)
_IMPROVED_RE = re.compile(
    r"\[\s*Improved Answer Start\s*\](?P<text>.*?)(?:\[\s*Improved Answer End\s*\]|$)",
    re.DOTALL | re.IGNORECASE,
)
_PLACEHOLDERS = {"question", "question?", "your question", "your improved answer", "..."}


# --- tag growth (optional): new leaf tags for each branch of the knowledge tree ----------------

def build_grow_tags(row: dict[str, Any], template: str, count: int) -> Messages:
    return [{"role": "user", "content": template.format(
        domain=row["domain"], branch=row["branch"], existing="; ".join(row["existing"]), count=count)}]


def grow_tags_regex(count: int) -> str:
    return "".join(r"- [A-Za-z][^\n]{2,60}\n" for _ in range(count))


def parse_grow_tags(text: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    """New tags from `- tag` lines: trimmed, not already under the branch, no repeats."""
    seen = {t.lower() for t in row["existing"]}
    tags = []
    for line in text.splitlines():
        tag = line.strip().lstrip("-*•0123456789.) ").strip().rstrip(".").strip()
        if line.strip()[:1] in "-*•" and 2 < len(tag) <= 60 and tag.lower() not in seen:
            seen.add(tag.lower())
            tags.append(tag)
    if not tags:
        raise Rejection("unparseable", "no new tag lines")
    return [{"new_tags": tags}]


# --- the knowledge tree built by the model (optional): a list of topics per node ---------------

TOPIC_MAX_CHARS = 80


def build_tree_topics(row: dict[str, Any], template: str, count: int) -> Messages:
    path = [str(p) for p in row["path"]]
    if path:
        place, kind, scope = (f"Path in the tree: {' > '.join(path)}", f'sub-topics of "{path[-1]}"',
                              f', each within "{path[-1]}"')
    else:
        place, kind, scope = "The tree's top level: broad domains of knowledge and activity.", "root domains", ""
    return [{"role": "user", "content": template.format(place=place, count=count, kind=kind, scope=scope,
                                                        language=row["language"])}]


def tree_topics_schema(count: int) -> dict[str, Any]:
    return object_schema({"topics": string_array(2, TOPIC_MAX_CHARS, count, min_items=1)})


def parse_tree_topics(text: str, row: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """A row per distinct topic (at most `count`), its path the node's path and the topic."""
    value, _ = parse_json_reply(text, ("topics",))
    path, seen, rows = [str(p) for p in row["path"]], set(), []
    for topic in string_list(value["topics"]):
        if topic.lower() not in seen and len(topic) <= TOPIC_MAX_CHARS:
            seen.add(topic.lower())
            rows.append({"path": path + [topic], "language": row["language"]})
    if not rows:
        raise Rejection("unusable_json", "no topic")
    return rows[:count]


def tree_step(name: str, count: int, sampling: SamplingConfig) -> LLMStep:
    return LLMStep(name, RECIPE, PROMPTS, "tree_topics", lambda row, template: build_tree_topics(row, template, count),
                   lambda text, row: parse_tree_topics(text, row, count), sampling,
                   json_schema=tree_topics_schema(count), params={"count": count})


# --- question synthesis ----------------------------------------------------------------------

def build_question(row: dict[str, Any], template: str) -> Messages:
    examples = [str(e) for e in row.get("examples", [])]
    block = ("\nHere are some examples of high-quality SFT Questions, from any domain, for inspiration:\n"
             + "".join(f"- {e}\n" for e in examples)) if examples else ""
    return [{"role": "user", "content": template.format(
        domain=row["domain"], theme=row["tag"], task_type=row["task_type"],
        task_description=row.get("task_description", ""), examples=block, language=row.get("language", "English"))}]


def question_regex(difficulties: list[str], max_chars: int, guards: bool = True) -> str:
    if not guards:  # only the markers: any question between them (material, lines, brackets, any script)
        body = text_without("[Question End]")
        return r"\s*".join(rf"\[{re.escape(d)}\]\[Question Start\]{body}\[Question End\]" for d in difficulties)
    # Starts like a sentence and has a space early on. Not with "Q": without a worked example in the
    # prompt (one made every question about its theme), SmolLM2 mostly copied the format's placeholder
    # as "Question 1: ..."; excluding the letter costs the rare real question that starts with Q.
    body = rf"[A-PR-Z][^\[\]\n ]{{0,30}} [^\[\]\n]{{10,{max_chars}}}"
    return r"\n\n".join(rf"\[{re.escape(d)}\]\[Question Start\]{body}\[Question End\]" for d in difficulties)


def parse_questions(text: str, row: dict[str, Any], difficulties: list[str]) -> list[dict[str, Any]]:
    """One row per difficulty; the reply must hold every difficulty exactly as asked."""
    found: dict[str, str] = {}
    for match in _QUESTION_RE.finditer(text):
        level = match.group("level").capitalize()
        question = match.group("text").strip()
        if level in difficulties and level not in found and question.lower() not in _PLACEHOLDERS:
            found[level] = question
    missing = [d for d in difficulties if not found.get(d)]
    if missing:
        raise Rejection("unparseable", f"no question for {', '.join(missing)}")
    return [{"difficulty": d, "question": found[d]} for d in difficulties]


# --- answer ----------------------------------------------------------------------------------

def build_answer(row: dict[str, Any], template: str) -> Messages:
    return [{"role": "user", "content": template.format(question=row["question"])}]


def parse_answer(text: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    answer = text.strip()
    if not answer:
        raise Rejection("empty")
    return [{"answer": answer, "answer_round": 0}]


# --- self-critique ---------------------------------------------------------------------------

def build_critique(row: dict[str, Any], template: str) -> Messages:
    return [{"role": "user", "content": template.format(question=row["question"], answer=row["answer"])}]


def critique_regex(max_chars: int, guards: bool = True) -> str:
    # With the guards, no brackets inside a section (so that a small model's grammar ends it at its
    # marker) and a length cap; without, any text up to the section's end marker.
    def body(name: str) -> str:
        return rf"[^\[\]]{{10,{max_chars}}}" if guards else text_without(f"[{name} End]")

    separator = r"\n" if guards else r"\s*"
    sections = separator.join(rf"\[{name} Start\]{body(name)}\[{name} End\]"
                              for name in ("Strength", "Weakness", "Suggestion"))
    return rf"\[Critique Start\]{separator}{sections}{separator}\[Critique End\]"


def parse_critique(text: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's bracketed sections ([Strength Start]...[Strength End], ...); failing those, headed
    sections ("Strengths:", "**Weakness**:", ...) as models that drop the brackets write them."""
    sections = {name.lower(): m.group("text").strip() for name, pattern in _BRACKETED_RE.items()
                if (m := pattern.search(text))}
    if not all(sections.get(k) for k in ("strength", "weakness", "suggestion")):
        sections = _headed_sections(text)
    missing = [k for k in ("strength", "weakness", "suggestion") if not sections.get(k)]
    if missing:
        raise Rejection("unparseable", f"critique lacks {', '.join(missing)}")
    return [{"strength": sections["strength"], "weakness": sections["weakness"],
             "suggestion": sections["suggestion"]}]


def _headed_sections(text: str) -> dict[str, str]:
    """Headings may vary in case, plural and markdown decoration; a section runs to the next heading."""
    marks = list(_SECTION_RE.finditer(text))
    sections: dict[str, str] = {}
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        key = next(k for k in ("strength", "weakness", "suggestion") if mark.group("name").lower().startswith(k[:6]))
        sections.setdefault(key, re.sub(r"\[\s*Critique End\s*\]\s*$", "", text[mark.end():end].strip()).strip())
    return sections


# --- refinement ------------------------------------------------------------------------------

def build_refine(row: dict[str, Any], template: str) -> Messages:
    return [{"role": "user", "content": template.format(
        question=row["question"], answer=row["answer"], strength=row["strength"],
        weakness=row["weakness"], suggestion=row["suggestion"])}]


def refine_regex(max_chars: int, guards: bool = True) -> str:
    if not guards:
        return rf"\[Improved Answer Start\]{text_without('[Improved Answer End]')}\[Improved Answer End\]"
    return rf"\[Improved Answer Start\][A-Za-z0-9][^\[\] ]{{0,30}} [^\[\]]{{20,{max_chars}}}\[Improved Answer End\]"


def parse_refine(text: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    match = _IMPROVED_RE.search(text)
    if not match or "[improved answer end]" not in text.lower():
        raise Rejection("unparseable", "no [Improved Answer Start]...[Improved Answer End] block")
    improved = match.group("text").strip()
    if not improved or improved.lower() in _PLACEHOLDERS:
        raise Rejection("empty")
    # The refined answer becomes the answer the next round critiques.
    return [{"answer": improved, "answer_round": int(row.get("answer_round", 0)) + 1,
             "original_answer": row.get("original_answer") or row["answer"]}]


def condor_steps(cfg: CondorConfig) -> dict[str, LLMStep]:
    difficulties = list(cfg.difficulties)

    def parse_q(text: str, row: dict[str, Any]) -> list[dict[str, Any]]:
        return parse_questions(text, row, difficulties)

    def build_grow(row: dict[str, Any], template: str) -> Messages:
        return build_grow_tags(row, template, cfg.grow_tags)

    steps = cfg.steps
    return {
        "grow_tags": LLMStep("grow-tags", RECIPE, PROMPTS, "grow_tags", build_grow, parse_grow_tags, steps.grow_tags,
                             regex=grow_tags_regex(max(cfg.grow_tags, 1)), params={"count": cfg.grow_tags}),
        "question": LLMStep("question", RECIPE, PROMPTS, "question", build_question, parse_q, steps.question,
                            regex=question_regex(difficulties, cfg.max_question_chars, cfg.small_model_guards),
                            params={"difficulties": difficulties}),
        "answer": LLMStep("answer", RECIPE, PROMPTS, "answer", build_answer, parse_answer, steps.answer),
        "critique": LLMStep("critique", RECIPE, PROMPTS, "critique", build_critique, parse_critique, steps.critique,
                            regex=critique_regex(cfg.max_section_chars, cfg.small_model_guards)),
        "refine": LLMStep("refine", RECIPE, PROMPTS, "refine", build_refine, parse_refine, steps.refine,
                          regex=refine_regex(cfg.max_answer_chars, cfg.small_model_guards)),
    }
