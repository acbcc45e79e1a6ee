"""A stage whose source kept no row (every instruction below the threshold, every reply unusable)
commits an empty stage, and the next stages do too: the run goes on, it never crashes on the
missing columns of an empty table. No engine starts: there is nothing to generate."""

import pandas as pd
import pytest

from raysynth.config import EngineConfig, ScorerConfig
from raysynth.pipeline import Lineage, run_decision_stage, run_llm_stage, write_source_stage
from raysynth.recipes.isheep.config import SELF_INSTRUCT_FILTER, ISheepConfig
from raysynth.recipes.isheep.steps import isheep_steps
from raysynth.recipes.refed.recipe import synthesis_requests
from raysynth.recipes.synpo.recipe import best_worst
from raysynth.score.filter_stage import run_filter_stage
from raysynth.score.stage import run_pair_scores
from raysynth.status import stage_rows, stage_state
from raysynth.steps.judge import combine_pairwise
from raysynth.store import NothingKept, RunDir

LINEAGE = Lineage("test", 1, "smollm2-135m")


def empty_source(run: RunDir):
    return write_source_stage(run, 1, "nothing-kept", [], {"rows": "none"}, LINEAGE)


def test_an_empty_source_commits_empty_stages_down_the_chain(tmp_path):
    run = RunDir(tmp_path)
    source = empty_source(run)
    assert source.committed and source.rows_out() == 0 and len(source.read()) == 0

    def decide(frame: pd.DataFrame):
        raise AssertionError("nothing to decide on")

    decided = run_decision_stage(run, 1, "score-filter", {"input": source.name}, source, decide, "response", LINEAGE,
                                 extra_columns=("quality_score",))
    filtered = run_filter_stage(run, 1, "instruction-filter", decided, "instruction", SELF_INSTRUCT_FILTER, LINEAGE,
                                reference=["a seed task"])
    answered = run_llm_stage(run, 1, isheep_steps(ISheepConfig())["answer"], filtered, EngineConfig(),
                             "/no/model/needed", LINEAGE)
    judged = run_pair_scores(run, 1, "judge", answered, ScorerConfig(kind="llm_judge"),
                             ("instruction", "improved", "response"), LINEAGE, EngineConfig(), "/no/model/needed")
    for stage in (decided, filtered, answered, judged):
        manifest = stage.manifest()
        assert stage.committed and (manifest["rows_in"], manifest["rows_out"]) == (0, 0), stage.name


def test_helpers_take_an_empty_stage(tmp_path):
    assert best_worst(pd.DataFrame()) == []
    assert combine_pairwise(pd.DataFrame(columns=["pair_id", "order", "judge_winner"])).empty
    assert synthesis_requests(empty_source(RunDir(tmp_path)), ["subject areas", "skills"]) == []


def test_a_stage_that_keeps_nothing_stops_the_run_unless_told_to_go_on(tmp_path):
    """Every row of a non-empty input dropped: the stage is committed, then the run stops, naming the
    stage, the counts and the reasons; a re-run stops again at once, and on_empty: continue goes on."""
    source = write_source_stage(RunDir(tmp_path), 1, "answers", [{"response": "a"}, {"response": "b"}],
                                {"rows": 2}, LINEAGE)

    def drop_all(frame: pd.DataFrame):
        return ["below_threshold"] * len(frame)

    def score_filter(run: RunDir):
        return run_decision_stage(run, 1, "score-filter", {"input": source.name}, source, drop_all, "response", LINEAGE)

    expected = r"iter-01/score-filter-\w+ kept 0 of 2 rows \(dropped by reason: below_threshold: 2\)"
    with pytest.raises(NothingKept, match=expected):
        score_filter(RunDir(tmp_path, on_empty="stop"))
    with pytest.raises(NothingKept, match=expected):  # committed: the re-run skips it and stops again
        score_filter(RunDir(tmp_path, on_empty="stop"))
    stage = score_filter(RunDir(tmp_path, on_empty="continue"))
    assert stage.committed and stage.rows_out() == 0
    assert [stage_state(row) for row in stage_rows(tmp_path)] == ["committed", "EMPTY"]
