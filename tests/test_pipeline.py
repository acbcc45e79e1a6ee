"""The stage runner's pure parts on fixed batches (no Ray, no engine): prompts built per row, replies
parsed and committed with lineage, rejections counted by reason, the resume filter, duplicate ids."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raysynth.config import SamplingConfig
from raysynth.hashing import id_hashes, row_id
from raysynth.pipeline import Lineage, NotCommitted, build_prompts, one_row_per_id, parse_and_commit
from raysynth.steps import LLMStep, Rejection
from raysynth.store import RunDir

TEMPLATE = "Say {word}."


def build(row, template):
    if not row["word"]:
        raise ValueError("no word")
    return [{"role": "user", "content": template.format(word=row["word"])}]


def parse(text, row):
    if text == "bug":
        raise KeyError("oops")
    if not text.startswith("OK"):
        raise Rejection("unparseable", text)
    return [{"said": part} for part in text[2:].split(",")]


STEP = LLMStep("echo", "test", Path("."), "echo", build, parse, SamplingConfig())
LINEAGE = Lineage("test", 0, "some-model")


def test_prompts_are_built_per_row_and_a_bad_row_carries_its_error():
    batch = pd.DataFrame({"id": ["a", "b"], "word": ["hi", ""]})
    built = build_prompts(batch, STEP, TEMPLATE)
    assert json.loads(built["prompt_messages"][0]) == [{"role": "user", "content": "Say hi."}]
    assert json.loads(built["prompt_messages"][1]) == {"build_error": "ValueError: no word"}
    assert "prompt_messages" not in batch  # the input batch is left as it was


def test_replies_are_parsed_committed_with_lineage_and_rejections_counted(tmp_path: Path):
    stage = RunDir(tmp_path).stage(0, "echo", {"v": 1})
    stage.prepare({"v": 1})
    batch = pd.DataFrame([
        {"id": "p1", "word": "x", "completions": ["OKa,b", "no"], "finish_reasons": ["stop", "length"],
         "tokens_in": 3, "tokens_out": 5, "engine_error": "", "prompt_messages": "[]"},
        {"id": "p2", "word": "y", "completions": [], "finish_reasons": [], "tokens_in": 0, "tokens_out": 0,
         "engine_error": "prompt_too_long: 4000 tokens", "prompt_messages": "[]"},
        {"id": "p3", "word": "z", "completions": ["bug"], "finish_reasons": ["stop"], "tokens_in": 2,
         "tokens_out": 1, "engine_error": "", "prompt_messages": "[]"},
    ])
    summary = parse_and_commit(batch, STEP, str(stage.path), LINEAGE, "abc")
    assert summary.to_dict("records") == [{"rows_in": 3, "rows_out": 2, "tokens_out": 6}]
    kept = stage.read()
    assert kept["said"].tolist() == ["a", "b"]
    assert kept["id"].tolist() == [row_id("p1", "echo", 0), row_id("p1", "echo", 1)]
    first = kept.iloc[0]
    assert (first["parent_id"], first["word"], first["template"], first["template_hash"], first["model"]) == \
        ("p1", "x", "test/echo", "abc", "some-model")
    assert "prompt_messages" not in kept and "completions" not in kept  # engine columns are not carried
    rejected = pd.concat(pd.read_parquet(f) for f in stage.rejected_files())
    assert sorted(rejected["reason"]) == ["parse_error", "prompt_too_long", "unparseable_truncated"]
    assert stage.stats().rejected == {"unparseable_truncated": 1, "prompt_too_long": 1, "parse_error": 1}
    assert sorted(stage.done_hashes().tolist()) == sorted(id_hashes(["p1", "p2", "p3"]).tolist())


def test_the_resume_filter_keeps_exactly_the_uncommitted_rows():
    batch = pa.table({"id": ["a", "b", "c", "d"], "x": [1, 2, 3, 4]})
    done = np.sort(id_hashes(["b", "d", "zz"]))
    assert NotCommitted(done)(batch).column("id").to_pylist() == ["a", "c"]
    assert NotCommitted(np.array([], dtype=np.uint64))(batch).num_rows == 4


def test_one_row_per_id_counts_its_copies():
    batch = pd.DataFrame({"id": ["a", "b", "a", "a"], "x": [1, 2, 3, 4]})
    one = one_row_per_id(batch)
    assert one[["id", "x", "copies"]].to_dict("records") == [{"id": "a", "x": 1, "copies": 3},
                                                             {"id": "b", "x": 2, "copies": 1}]


def test_a_batch_goes_to_the_engine_with_the_fewest_rows_in_flight(local_ray):
    """Routing among kept engines (stand-in actors that report a load, as VLLMEngine does): the least
    loaded is picked, a dead one counts as full, and the question uses the load group, so it is
    answered while every generate slot is taken."""
    import threading

    import ray

    from raysynth.engine_pool import LOAD_GROUP
    from raysynth.pipeline import least_loaded

    @ray.remote(concurrency_groups={LOAD_GROUP: 1})
    class Engine:
        def __init__(self, rows: int):
            self.rows, self.release = rows, threading.Event()

        def busy(self) -> None:  # holds the actor's only generate slot
            self.release.wait(60)

        def load(self) -> tuple[int, int]:
            return self.rows, 0

    engines = [Engine.options(max_concurrency=1).remote(rows) for rows in (64, 8, 32)]
    busy = [engine.busy.remote() for engine in engines]
    assert least_loaded(engines) == engines[1]
    ray.kill(engines[1])
    with pytest.raises(ray.exceptions.RayActorError):  # once its death is known (a kill is asynchronous)
        ray.get(engines[1].__ray_ready__.remote(), timeout=60)
    assert least_loaded(engines) == engines[2]
    ray.kill(engines[0])
    ray.kill(engines[2])
    del busy
