"""Condor's config: the knowledge tree, task types, difficulties, critique-refine rounds; the paper's values
as defaults (arXiv 2501.12273)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from raysynth.config import (EvalConfig, ExistingFile, RunHeader, SamplingConfig, Strict, TrainConfig, guards_field,
                             student_field)


class CondorSteps(Strict):
    grow_tags: SamplingConfig = SamplingConfig(temperature=0.7, max_tokens=256)
    question: SamplingConfig = SamplingConfig(max_tokens=512)
    answer: SamplingConfig = SamplingConfig(max_tokens=1024, structured=False)
    critique: SamplingConfig = SamplingConfig(max_tokens=512)
    refine: SamplingConfig = SamplingConfig(max_tokens=1024)


# The paper's seven task types (arXiv 2501.12273, appendix "Detailed explanation of total 7 chat
# tasks"), each with a one-line description in our words; the question prompt names both.
CONDOR_TASK_TYPES = {
    "Role Playing": "take on a role and hold a conversation or act as that role would, to explore a "
                    "perspective or a scenario",
    "Daily Chat": "casual conversation: greetings, small talk, sharing everyday experiences",
    "Domain QA": "an expert, accurate answer to a question within a specific field",
    "Given Material Processing": "analyse, transform or summarise a text, data or other material that "
                                 "the question itself provides",
    "Response Format Control": "answer under explicit requirements on format, style or wording",
    "View": "give an opinion, an insight or a perspective on a topic",
    "Creation": "write new content: an article, a story, a poem, a design",
}


def _task_types(value: Any) -> Any:
    """A list names some of the paper's task types (their descriptions are ours); a mapping gives
    name -> description for any task type."""
    if isinstance(value, list):
        unknown = [v for v in value if v not in CONDOR_TASK_TYPES]
        if unknown:
            raise ValueError(f"unknown task types {unknown}: a list names the paper's "
                             f"({', '.join(CONDOR_TASK_TYPES)}); give a mapping name: description for others")
        return {name: CONDOR_TASK_TYPES[name] for name in value}
    return value


class TagTreeConfig(Strict):
    """Condor's knowledge tree built by the model, as the paper does: root domains first, then each
    node's sub-topics returned as a list, level by level; the last level's topics are the leaf tags.
    The paper's tree is bilingual (4,249 Chinese and 4,296 English tags): one tree per language."""

    roots: list[str] | None = Field(None, description="the root domains; None: the model lists `root_count` "
                                    "per language")
    root_count: int = Field(10, ge=1, description="root domains asked for per language, when `roots` is None")
    children: int = Field(8, ge=1, description="sub-topics asked for per node")
    depth: int = Field(2, ge=1, description="levels below the roots; the deepest level's topics are the tags")
    languages: list[str] = Field(default_factory=lambda: ["English"], min_length=1,
                                 description="a tree per language, its questions asked for in that language "
                                 "(the paper: [Chinese, English])")
    sampling: SamplingConfig = SamplingConfig(temperature=0.7, max_tokens=512)


class CondorConfig(Strict):
    tag_tree: ExistingFile | None = Field(None, description="JSON tag tree; None: the tree shipped with raysynth")
    build_tree: TagTreeConfig | None = Field(None, description="build the tree with the model instead of reading "
                                             "`tag_tree` (the paper's way); None: read it")
    grow_tags: int = Field(0, ge=0, description="optional tree growth: ask the model for this many new "
                           "leaf tags per branch before synthesis; 0: off (use the tree as given)")
    max_tags: int | None = Field(None, ge=1, description="sample this many leaf tags (seeded, after "
                                 "growth); None: all")
    task_types: Annotated[dict[str, str], BeforeValidator(_task_types)] = Field(
        default_factory=lambda: dict(CONDOR_TASK_TYPES), min_length=1,
        description="task type -> one-line description, each tag is asked for questions of every one (paper: "
        "its seven); a list picks some of the paper's")
    difficulties: list[str] = Field(default_factory=lambda: ["Easy", "Medium", "Hard"], min_length=1)
    examples_per_prompt: int = Field(3, ge=0, description="example questions in each question prompt, drawn "
                                     "per (tag, task type) from `example_questions`, with the paper's 'for "
                                     "inspiration, do not copy' instruction; 0: none (the paper does not say how many)")
    example_questions: ExistingFile | None = Field(None, description="JSONL, an `instruction` per line; None: the "
                                                   "175 self-instruct seed tasks shipped with raysynth")
    refine_rounds: int = Field(1, ge=0, description="critique-refine rounds (paper: 1)")
    small_model_guards: bool = guards_field()
    max_question_chars: int = Field(600, ge=20, description="per question, with small_model_guards")
    max_section_chars: int = Field(500, ge=20, description="per critique section, with small_model_guards")
    max_answer_chars: int = Field(4000, ge=20, description="refined answer, with small_model_guards")
    steps: CondorSteps = CondorSteps()


class CondorRun(RunHeader):
    recipe: Literal["condor"]
    run_dir: Path = Path("runs/condor")
    condor: CondorConfig = CondorConfig()
    student_model: str | None = student_field("a base model, while an instruct model synthesizes")
    train: TrainConfig | None = Field(
        None, description="SFT on the refined data after synthesis (Condor's last step); None: synthesis only")
    eval: EvalConfig | None = Field(None, description="evaluate the base model (and the trained one, "
                                    "against it) and the data's diversity; None: no evaluation")
