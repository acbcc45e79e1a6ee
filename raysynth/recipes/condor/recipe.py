"""Condor (arXiv 2501.12273), Condor Void then Condor Refine:

  world knowledge tree (a file, or built by the model: roots, then sub-topic lists level by level,
  a tree per language) [--(optional: new leaf tags per branch)-->] --(leaf tag x 7 task types)-->
  one call per (tag, task):
  Easy / Medium / Hard questions --> answers --> [critique (Strength / Weakness / Suggestion)
  --> refined answer] x refine_rounds --> SFT dataset (chat messages)
  --> [SFT of the student (`student_model`, default the synthesizer) with Ray Train when `train` is
  set --> the run's current model: condor-iter-01]
  --> [evaluation when `eval` is set: IFEval, win rate of iteration 1 against 0, diversity]
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from raysynth.config import EngineConfig
from raysynth.eval import evaluate
from raysynth.export import export_sft
from raysynth.hashing import stable_hash
from raysynth.models import resolve_model
from raysynth.pipeline import Lineage, run_llm_stage, write_source_stage
from raysynth.promotion import Ladder, first_champion
from raysynth.recipes.condor.config import CondorRun, TagTreeConfig
from raysynth.recipes.condor.steps import condor_steps, tree_step
from raysynth.shipped import CONDOR_TAG_TREE, seed_tasks
from raysynth.store import RunDir
from raysynth.train import train_model

RECIPE = "condor"


def load_tag_tree(path: Path | None) -> dict[str, Any]:
    return json.loads(Path(path or CONDOR_TAG_TREE).read_text())


def leaf_tags(tree: dict[str, Any], trail: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every root-to-leaf path; nodes are dicts, leaf lists hold tag strings."""
    paths: list[tuple[str, ...]] = []
    for name, child in tree.items():
        if isinstance(child, dict):
            paths += leaf_tags(child, trail + (name,))
        else:
            paths += [trail + (name, str(tag)) for tag in child]
    return paths


def branch_rows(tree: dict[str, Any], trail: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One row per branch that holds leaf tags: the unit the tag-growth step extends."""
    rows: list[dict[str, Any]] = []
    for name, child in tree.items():
        if isinstance(child, dict):
            rows += branch_rows(child, trail + (name,))
        else:
            path = trail + (name,)
            rows.append({"domain": path[0], "branch": name, "path": list(path), "existing": [str(t) for t in child]})
    return rows


def add_grown_tags(tree: dict[str, Any], grown: list[dict[str, Any]]) -> dict[str, Any]:
    """A copy of `tree` with each grown row's new tags appended under its branch."""
    tree = copy.deepcopy(tree)
    for row in grown:
        path = [str(p) for p in row["path"]]  # Parquet gives numpy arrays of numpy strings
        node = tree
        for part in path[:-1]:
            node = node[part]
        leaves = node[path[-1]]
        leaves += [str(t) for t in row["new_tags"] if str(t) not in leaves]
    return tree


def example_questions(path: Path | None) -> list[str]:
    """The pool the question prompt's examples are drawn from: `instruction` of each JSONL line (None:
    the 175 Self-Instruct seed tasks, a general pool of any domain)."""
    return [task["instruction"] for task in seed_tasks(path)]


def build_tag_tree(run_dir: RunDir, cfg: TagTreeConfig, engine: EngineConfig, model_dir: str,
                   lineage: Lineage) -> tuple[dict[str, Any], dict[str, str]]:
    """The paper's LLM-built tree: root domains (given, or listed by the model per language), then each
    node's sub-topics as a list, `depth` levels down. Returns the tree (leaf lists hold the deepest
    topics) and each leaf's language by tag path."""
    if cfg.roots:
        rows = [{"path": [root], "language": language} for language in cfg.languages for root in cfg.roots]
        nodes = write_source_stage(run_dir, 0, "tree-roots", rows, {"rows": stable_hash(rows)}, lineage)
    else:
        rows = [{"path": [], "language": language} for language in cfg.languages]
        requests = write_source_stage(run_dir, 0, "tree-requests", rows, {"rows": stable_hash(rows)}, lineage)
        nodes = run_llm_stage(run_dir, 0, tree_step("tree-roots", cfg.root_count, cfg.sampling), requests, engine,
                              model_dir, lineage)
    for level in range(1, cfg.depth + 1):
        nodes = run_llm_stage(run_dir, 0, tree_step(f"tree-level-{level}", cfg.children, cfg.sampling), nodes,
                              engine, model_dir, lineage)
    return tree_from_leaves(nodes.read(["path", "language"]).to_dict("records") if nodes.rows_out() else [])


def tree_from_leaves(leaves: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    """Root-to-leaf paths (at least two parts each) as the tree `leaf_tags` reads, and each leaf's
    language by tag path (the same root asked in two languages holds both languages' topics)."""
    tree: dict[str, Any] = {}
    languages: dict[str, str] = {}
    for leaf in sorted(leaves, key=lambda r: [str(p) for p in r["path"]]):
        path = [str(p) for p in leaf["path"]]
        node = tree
        for part in path[:-2]:
            node = node.setdefault(part, {})
        node.setdefault(path[-2], []).append(path[-1])
        languages[" > ".join(path)] = str(leaf["language"])
    return tree, languages


def tag_task_rows(tree: dict[str, Any], task_types: dict[str, str], max_tags: int | None, seed: int,
                  examples: list[str] = (), per_prompt: int = 0,
                  languages: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per (leaf tag, task type), with `per_prompt` example questions drawn for that row
    (seeded by it): the paper shows examples per domain; a fresh draw per row from a general pool keeps
    any one example's theme from leaking into every question. `languages`: each tag path's language
    (the questions are asked for in it; default English)."""
    tags = leaf_tags(tree)
    if max_tags is not None and max_tags < len(tags):
        tags = sorted(random.Random(seed).sample(tags, max_tags))
    rows = []
    for path in tags:
        for task, description in task_types.items():
            tag_path = " > ".join(path)
            drawn = random.Random(f"{seed}:{tag_path}:{task}").sample(list(examples), min(per_prompt, len(examples)))
            rows.append({"domain": path[0], "tag_path": tag_path, "tag": path[-1], "task_type": task,
                         "task_description": description, "examples": drawn,
                         "language": (languages or {}).get(tag_path, "English")})
    return rows


def run(cfg: CondorRun) -> dict[str, Any]:
    run_dir = RunDir(cfg.run_dir, cfg.stop_after, cfg.on_empty)
    model_dir = resolve_model(cfg.engine.model)
    lineage = Lineage(RECIPE, 0, cfg.engine.model)
    steps = condor_steps(cfg.condor)

    if cfg.condor.build_tree is not None:
        tree, languages = build_tag_tree(run_dir, cfg.condor.build_tree, cfg.engine, model_dir, lineage)
    else:
        tree, languages = load_tag_tree(cfg.condor.tag_tree), {}
    if cfg.condor.grow_tags:
        branches = write_source_stage(run_dir, 0, "branches", branch_rows(tree), {"tree": stable_hash(tree)},
                                      lineage)
        grown = run_llm_stage(run_dir, 0, steps["grow_tags"], branches, cfg.engine, model_dir, lineage)
        tree = add_grown_tags(tree, grown.read(["path", "new_tags"]).to_dict("records"))
    examples = example_questions(cfg.condor.example_questions) if cfg.condor.examples_per_prompt else []
    rows = tag_task_rows(tree, cfg.condor.task_types, cfg.condor.max_tags, cfg.seed, examples,
                         cfg.condor.examples_per_prompt, languages)
    tags = write_source_stage(run_dir, 0, "tags", rows, {"rows": stable_hash(rows)}, lineage)

    questions = run_llm_stage(run_dir, 0, steps["question"], tags, cfg.engine, model_dir, lineage)
    answers = run_llm_stage(run_dir, 0, steps["answer"], questions, cfg.engine, model_dir, lineage)
    current = answers
    for round_ in range(1, cfg.condor.refine_rounds + 1):
        critique = replace(steps["critique"], name=f"critique-{round_}")
        refine = replace(steps["refine"], name=f"refine-{round_}")
        critiques = run_llm_stage(run_dir, 0, critique, current, cfg.engine, model_dir, lineage)
        current = run_llm_stage(run_dir, 0, refine, critiques, cfg.engine, model_dir, lineage)

    export = export_sft(current, run_dir.iteration_dir(0) / "sft", "question", "answer",
                        extra_columns=("tag_path", "task_type", "difficulty"))
    student = cfg.student_model or cfg.engine.model  # the paper trains a base model on an instruct model's data
    if cfg.train is not None and not export["rows"]:
        run_dir.nothing_kept(f"iteration 0: no sample was kept to train on; the model stays {cfg.engine.model}")
    if cfg.eval is not None:
        # Iteration 0: the student before training, and the diversity of the synthesised questions.
        questions = [str(q) for q in current.read(["question"])["question"]]
        evaluate(run_dir, 0, student, cfg.engine, cfg.eval, texts=questions)
    if cfg.train is not None and export["rows"]:
        data, student_dir = Path(str(export["parquet"])), resolve_model(student)
        trained = train_model(cfg.train, data, student, student_dir, run_dir.iteration_dir(0),
                              cfg.engine.trust_remote_code, cfg.engine.prompt_format, run_dir.engines.release)
        # Iteration 1: the student trained on them, against itself before (the first champion).
        ladder = Ladder(run_dir, cfg, first_champion(run_dir, RECIPE, student, student_dir), student)
        export |= ladder.climb(1, trained, student, data)[1]
    return export
