"""Stage store: atomic batches, leftovers removed on resume, identity hashes (pinned), stats, atomic files."""

from pathlib import Path

import pandas as pd
import pyarrow as pa

from raysynth.hashing import row_id, sha256_hex, stable_hash
from raysynth.steps import text_hash
from raysynth.store import IDENTITY, RUN_CONFIG, RunDir, atomic_write_parquet, file_problem, saved_run_config


def test_commit_resume_and_leftovers(tmp_path):
    run = RunDir(tmp_path)
    stage = run.stage(0, "answer", {"temperature": 0.7})
    stage.prepare({"temperature": 0.7})
    kept = pd.DataFrame([{"id": row_id("p1", "answer", 0), "parent_id": "p1", "text": "a"}])
    rejected = pd.DataFrame([{"id": row_id("p2", "answer", -1), "parent_id": "p2", "reason": "unparseable",
                              "raw": "??"}])
    stage.commit_batch(["p1", "p2"], kept, rejected, {"rows_in": 2, "rows_out": 1,
                                                      "rejected": {"unparseable": 1}, "tokens_in": 5, "tokens_out": 7})
    # An interrupted batch: data written, marker never written.
    pd.DataFrame([{"id": "x"}]).to_parquet(stage.path / "part-deadbeefdeadbeef.parquet")
    (stage.path / ".part-1.parquet.tmp-99").write_bytes(b"partial")
    stage.prepare({"temperature": 0.7})
    assert stage.done_inputs() == {"p1", "p2"}
    assert len(stage.part_files()) == 1 and len(stage.rejected_files()) == 1
    assert not list(stage.path.glob(".*tmp*"))
    stats = stage.stats()
    assert (stats.rows_in, stats.rows_out, dict(stats.rejected)) == (2, 1, {"unparseable": 1})
    assert not stage.committed
    stage.commit({"temperature": 0.7})
    assert stage.committed and stage.manifest()["rows_out"] == 1


def test_identity_changes_directory(tmp_path):
    run = RunDir(tmp_path)
    assert run.stage(0, "s", {"a": 1}).path == run.stage(0, "s", {"a": 1}).path
    assert run.stage(0, "s", {"a": 1}).path != run.stage(0, "s", {"a": 2}).path
    assert row_id("p", "s", 0) == row_id("p", "s", 0) != row_id("p", "s", 1)


def test_resume_filter_drops_exactly_the_committed_inputs(tmp_path):
    import subprocess
    import sys

    import pyarrow as pa

    from raysynth.hashing import id_hashes
    from raysynth.pipeline import NotCommitted

    stage = RunDir(tmp_path).stage(0, "s", {})
    stage.prepare({})
    ids = [row_id(f"p{i}", "src", 0) for i in range(1000)] + ["row-07", "short"]
    for batch in (ids[:300], ids[300:301], ids[700:], []):
        stage.commit_batch(batch, pd.DataFrame(), pd.DataFrame(), {"rows_in": len(batch), "rows_out": 0,
                                                                   "rejected": {}, "tokens_in": 0, "tokens_out": 0})
    done = stage.done_hashes()
    assert len(done) == stage.done_count() == 300 + 1 + 302 and (done[:-1] <= done[1:]).all()
    batch = pa.table({"id": ids, "n": range(len(ids))})
    assert NotCommitted(done)(batch).column("id").to_pylist() == ids[301:700]
    assert NotCommitted(done[:0])(batch).equals(batch)
    # The hashes are the same in another process (the tasks that filter are other processes).
    script = "from raysynth.hashing import id_hashes; print(id_hashes(['a', 'row-07']).tolist())"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert other.strip() == str(id_hashes(["a", "row-07"]).tolist())


def test_markers_record_their_files_and_damage_is_found(tmp_path):
    """Each marker records its files' rows, size and checksum; a truncated file is found by size, a
    same-size change only by the deep check; uncommitting drops exactly the damaged batch."""
    run = RunDir(tmp_path)
    stage = run.stage(0, "answer", {})
    stage.prepare({})
    for parent in ("p1", "p2"):
        stage.commit_batch([parent], pd.DataFrame([{"id": row_id(parent, "answer", 0), "text": parent * 50}]),
                           pd.DataFrame(), {"rows_in": 1, "rows_out": 1, "rejected": {}})
    marker = next(stage.markers())
    (name, recorded), = marker["files"].items()
    assert recorded["rows"] == 1 and recorded["bytes"] == (stage.path / name).stat().st_size
    stage.commit({})
    assert stage.damaged() == {} and stage.damaged(deep=True) == {}
    assert set(stage.manifest()["files"]) == {Path(f).name for f in stage.part_files()}

    first, second = sorted(Path(f) for f in stage.part_files())
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    second.write_bytes(bytes(data))
    first.write_bytes(first.read_bytes()[:-10])
    assert set(stage.damaged()) == {first.stem.removeprefix("part-")}  # sizes only
    deep = stage.damaged(deep=True)
    assert set(deep) == {first.stem.removeprefix("part-"), second.stem.removeprefix("part-")}
    assert "checksum" in deep[second.stem.removeprefix("part-")]
    assert set(stage.uncommit_damaged(deep=True)) == set(deep)
    assert not stage.committed and list(stage.markers()) == []
    stage.prepare({})  # the damaged files are now leftovers, removed
    assert stage.part_files() == []


def test_a_resume_uncommits_a_damaged_batch_of_a_partial_stage(tmp_path):
    """The resume's one pass over the markers (done_hashes) also checks sizes: a batch whose part file
    was cut short loses its marker and files, so it is recomputed; the others stay committed."""
    stage = RunDir(tmp_path).stage(0, "answer", {})
    stage.prepare({})
    for parent in ("p1", "p2"):
        stage.commit_batch([parent], pd.DataFrame([{"id": row_id(parent, "answer", 0), "text": parent * 50}]),
                           pd.DataFrame(), {"rows_in": 1, "rows_out": 1, "rejected": {}})
    damaged = Path(stage.part_files()[0])
    damaged.write_bytes(damaged.read_bytes()[:-10])
    assert len(stage.done_hashes()) == 1
    assert not damaged.exists() and len(stage.part_files()) == 1 and len(list(stage.markers())) == 1


def test_names_and_ids_are_pinned():
    # Every stage directory, row id and template hash of an existing run is derived from these: a
    # change here would make every run recompute from scratch (the values are those of release 0.1).
    assert stable_hash({"step": "answer", "n": [1, 2]}) == "9cbe14b594"
    assert stable_hash({"b": 1, "a": 2}, 16) == stable_hash({"a": 2, "b": 1}, 16) == "21501dbaf73f5223"
    assert row_id("p0", "answer", 3) == "37fc0e9502d2afcc"
    assert text_hash("Answer: {q}") == "c7aff7c612b8"
    assert sha256_hex(b"x", 8) == sha256_hex("x", 8)


def test_atomic_parquet_takes_frames_and_tables_and_leaves_no_temporary(tmp_path: Path):
    frame = pd.DataFrame({"id": ["a", "b"], "messages": [[{"role": "user", "content": "hi"}]] * 2})
    record = atomic_write_parquet(tmp_path / "f.parquet", frame)
    table_record = atomic_write_parquet(tmp_path / "t.parquet", pa.Table.from_pandas(frame, preserve_index=False))
    assert record == table_record and record["rows"] == 2
    assert file_problem(tmp_path / "f.parquet", record, deep=True) is None
    assert pd.read_parquet(tmp_path / "t.parquet")["id"].tolist() == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.parquet", "t.parquet"]


def test_saved_run_config_is_empty_without_one(tmp_path: Path):
    assert saved_run_config(tmp_path) == {}
    (tmp_path / RUN_CONFIG).write_text("recipe: condor\nengine: {batch_size: 8}\n")
    assert saved_run_config(tmp_path) == {"recipe": "condor", "engine": {"batch_size": 8}}


def test_stages_are_listed_by_iteration_then_creation(tmp_path: Path):
    run = RunDir(tmp_path)
    made = [run.stage(1, "answer", {"a": 1}), run.stage(0, "prompts", {"a": 1}), run.stage(0, "answer", {"a": 2})]
    for stage in made:
        stage.prepare({"a": 1})
    (tmp_path / "iter-00" / "not-a-stage").mkdir()  # no identity file: not listed
    assert [s.path for s in run.stages()] == [made[1].path, made[2].path, made[0].path]
    assert all((s.path / IDENTITY).is_file() for s in made)
