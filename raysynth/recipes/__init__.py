"""The recipes, by the name a config's `recipe:` gives. Each paper's folder holds its algorithm
(`recipe.py`, top to bottom as the paper's figure), its pure build/parse steps (`steps.py`), its config
(`config.py`, the paper's values as defaults) and its prompts; this registry is the one place that
lists them. The config loader, the CLI and the report read it: a fifth paper is one folder and one line.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from raysynth.config import RunHeader, read_yaml, relative_to_config, validate
from raysynth.recipes.condor.config import CondorRun
from raysynth.recipes.isheep.config import ISheepRun
from raysynth.recipes.refed.config import RefedRun
from raysynth.recipes.synpo.config import SynpoRun


@dataclass(frozen=True)
class SideBySide:
    """The rows the report shows side by side: each row of the last stage whose name starts with
    `after_prefix` next to the row of stage `before_stage` it was made from (traced by parent ids)."""

    before_stage: str
    after_prefix: str
    prompt_column: str
    before_column: str
    after_column: str


@dataclass(frozen=True)
class Recipe:
    config: type[RunHeader]
    module: str  # its `run(cfg)`; imported only to run (it brings Ray, vLLM and the trainers)
    input_files: tuple[str, ...] = ()  # fields of the recipe's section that name files, relative to the config
    side_by_side: SideBySide | None = None

    def run(self, cfg: Any) -> dict[str, Any]:
        return importlib.import_module(self.module).run(cfg)


RECIPES = {
    "condor": Recipe(CondorRun, "raysynth.recipes.condor.recipe", ("tag_tree", "example_questions"),
                     SideBySide("answer", "refine-", "question", "answer", "answer")),
    "synpo": Recipe(SynpoRun, "raysynth.recipes.synpo.recipe", ("seed_data", "corpus"),
                    SideBySide("answer", "improve", "prompt", "response", "improved")),
    "isheep": Recipe(ISheepRun, "raysynth.recipes.isheep.recipe", ("seed_tasks",)),
    "refed": Recipe(RefedRun, "raysynth.recipes.refed.recipe", ("references",),
                    SideBySide("answer", "improve", "instruction", "response", "improved")),
}

# A run config is one recipe's, told apart by its `recipe:` field.
RecipeConfig = Annotated[Union[tuple(r.config for r in RECIPES.values())], Field(discriminator="recipe")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(RecipeConfig)
SHARED_INPUT_FILES = [("eval", "ifeval"), ("eval", "winrate_prompts")]


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunHeader:
    """Parse and validate a run config; `overrides` are `a.b=value` strings (YAML values). Input
    files named in it are relative to the config file."""
    path = Path(path)
    data = read_yaml(path, overrides)
    recipe = RECIPES.get(data["recipe"]) if isinstance(data.get("recipe"), str) else None
    inputs = SHARED_INPUT_FILES + [(data["recipe"], key) for key in (recipe.input_files if recipe else ())]
    return validate(path, _ADAPTER, relative_to_config(path, data, inputs), tags=tuple(RECIPES))
