"""Stage store: atomic batches, leftovers removed on resume, identity hashes, stats."""

from pathlib import Path

import pandas as pd

from raysynth.store import RunDir, row_id


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

    from raysynth.pipeline import NotCommitted
    from raysynth.store import id_hashes

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
    script = "from raysynth.store import id_hashes; print(id_hashes(['a', 'row-07']).tolist())"
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
