"""Condor's optional tag-growth step on the real engine."""

import pytest

pytestmark = pytest.mark.slow


def test_grow_tags_on_the_embedded_model(local_ray, tmp_path):
    from raysynth.config import EngineConfig
    from raysynth.models import resolve_model
    from raysynth.pipeline import Lineage, run_llm_stage, write_source_stage
    from raysynth.recipes.condor.config import CondorConfig
    from raysynth.recipes.condor.recipe import add_grown_tags, branch_rows, leaf_tags
    from raysynth.recipes.condor.steps import condor_steps
    from raysynth.store import RunDir

    tree = {"Biology": {"Marine biology": ["coral reefs", "plankton"], "Genetics": ["DNA replication"]},
            "Cooking": {"Baking": ["sourdough bread"]}}
    cfg = CondorConfig(grow_tags=3)
    run, lineage = RunDir(tmp_path / "run"), Lineage("condor", 0, "smollm2-135m")
    branches = write_source_stage(run, 0, "branches", branch_rows(tree), {"n": 3}, lineage)
    grown = run_llm_stage(run, 0, condor_steps(cfg)["grow_tags"], branches, EngineConfig(batch_size=8),
                          resolve_model("smollm2-135m"), lineage)
    manifest = grown.manifest()
    rows = grown.read(["path", "new_tags"]).to_dict("records")
    print("grown:", {tuple(r["path"]): list(r["new_tags"]) for r in rows}, "rejected:", manifest["rejected"])
    assert manifest["rows_out"] + sum(manifest["rejected"].values()) == 3
    assert manifest["rows_out"] >= 2  # structured output holds the "- tag" lines
    bigger = add_grown_tags(tree, rows)
    assert len(leaf_tags(bigger)) > len(leaf_tags(tree))
