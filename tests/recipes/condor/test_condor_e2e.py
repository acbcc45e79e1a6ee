"""Condor on the real engine (vLLM in Ray Data actor pools), end to end."""

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import (assert_resume_matches_uninterrupted, check_verdicts, kill_driver_when, partly_committed,
                      run_raysynth, write_tiny_config)
from raysynth.registry import read_registry
from raysynth.store import RunDir

pytestmark = pytest.mark.slow


def sft_rows(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "iter-00" / "sft" / "sft.parquet")


def test_every_step_runs_on_the_engine(baseline_run: Path):
    stages = {s.name.rsplit("-", 1)[0]: s for s in RunDir(baseline_run).stages()}
    assert set(stages) == {"tags", "question", "answer", "critique-1", "refine-1"}
    assert all(s.committed for s in stages.values())
    assert stages["tags"].manifest()["rows_out"] == 2
    # Structured outputs hold the question format on the small model.
    assert stages["question"].manifest()["rows_out"] == 6
    for name in ("question", "answer", "critique-1", "refine-1"):
        manifest = stages[name].manifest()
        assert manifest["tokens_out"] > 0 and manifest["rows_in"] > 0
        accounted = manifest["rows_out"] + sum(manifest["rejected"].values())
        assert accounted >= manifest["rows_in"], manifest  # nothing silently lost
    rows = sft_rows(baseline_run)
    assert len(rows) >= 3 and rows["id"].is_unique
    first = rows.iloc[0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"] and all(m["content"] for m in first)
    lines = (baseline_run / "iter-00" / "sft" / "sft.jsonl").read_text().splitlines()
    assert len(lines) == len(rows) and json.loads(lines[0])["messages"]
    refined = stages["refine-1"].read()
    for column in ("id", "parent_id", "recipe", "iteration", "stage", "model", "template", "template_hash",
                   "tag_path", "question", "answer", "original_answer", "tokens_in", "tokens_out"):
        assert column in refined.columns


def test_rerun_skips_committed_and_status_reports(baseline_run: Path, tmp_path: Path):
    before = {s.name: s.manifest()["committed_at"] for s in RunDir(baseline_run).stages()}
    config = write_tiny_config(tmp_path, baseline_run)
    result = run_raysynth("run", str(config))
    assert result.stdout.count("[skip]") == 4
    assert before == {s.name: s.manifest()["committed_at"] for s in RunDir(baseline_run).stages()}
    status = run_raysynth("status", str(baseline_run)).stdout
    for word in ("question", "refine-1", "committed", "tokens/s"):
        assert word in status


def test_changed_setting_recomputes_that_stage_and_after(baseline_run: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(baseline_run, copy)
    config = write_tiny_config(tmp_path, copy)
    result = run_raysynth("run", str(config), "--set", "condor.steps.refine.max_tokens=150")
    assert result.stdout.count("[skip]") == 3  # tags is silent; question, answer, critique skipped
    names = [s.name.rsplit("-", 1)[0] for s in RunDir(copy).stages()]
    assert names.count("refine-1") == 2 and names.count("critique-1") == 1 and names.count("answer") == 1


def test_a_damaged_part_file_is_found_and_its_batch_redone(baseline_run: Path, tmp_path: Path):
    """A committed part file cut short (as a disk or a copy might leave it): `status --verify` names the
    batch and exits 1; a re-run recomputes only that batch; every stage's counts equal the undamaged run's."""
    import shutil

    from conftest import raysynth_cmd
    from raysynth.store import batch_key

    copy = tmp_path / "run"
    shutil.copytree(baseline_run, copy)
    counts = {s.name: {k: v for k, v in s.stats().as_dict().items() if k != "seconds"} for s in RunDir(copy).stages()}
    answer = next(s for s in RunDir(copy).stages() if s.name.startswith("answer"))
    markers = {m.name for m in (answer.path / "_done").glob("*.json")}
    assert len(markers) >= 2, "the answer stage should have several batches"
    part = Path(answer.part_files()[0])
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])

    verify = subprocess.run(raysynth_cmd("status", str(copy), "--verify"), capture_output=True, text=True, timeout=300)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert f"batch {batch_key(part.name)}" in verify.stdout and "bytes where" in verify.stdout
    assert "1 damaged batch" in verify.stdout

    result = run_raysynth("run", str(write_tiny_config(tmp_path, copy)))
    assert f"[redo] {answer.path}: 1 committed batch(es) damaged" in result.stdout
    assert {m.name for m in (answer.path / "_done").glob("*.json")} == markers  # the same batches
    assert counts == {s.name: {k: v for k, v in s.stats().as_dict().items() if k != "seconds"}
                      for s in RunDir(copy).stages()}
    assert subprocess.run(raysynth_cmd("status", str(copy), "--verify"), capture_output=True, timeout=300).returncode == 0


def test_kill_driver_mid_stage_then_resume(tmp_path: Path):
    """Killed in the answer stage, sampled at temperature 0.8; the resumed run's answers are the ones
    an uninterrupted run of the same seed draws."""
    run_dir = tmp_path / "run"
    config = write_tiny_config(tmp_path, run_dir, answer_temperature=0.8)
    killed_in = kill_driver_when(config, lambda: partly_committed(run_dir, 0, "answer"), 600)
    assert killed_in is not None, "the run ended before the answer stage was half done"
    assert not killed_in.committed
    kept_markers = {m.name for m in (killed_in.path / "_done").glob("*.json")}
    question_commit = [s for s in RunDir(run_dir).stages() if s.name.startswith("question")][0].manifest()

    resumed_output = run_raysynth("run", str(config)).stdout
    assert "[lock] taking over" in resumed_output  # the killed driver's lock
    assert kept_markers <= {m.name for m in (killed_in.path / "_done").glob("*.json")}  # not recomputed
    assert [s for s in RunDir(run_dir).stages() if s.name.startswith("question")][0].manifest() == question_commit
    resumed = sft_rows(run_dir)
    assert resumed["id"].is_unique and len(resumed) >= 3
    for stage in RunDir(run_dir).stages():
        ids = stage.read(["id"])["id"]
        assert ids.is_unique, stage.name
    assert_resume_matches_uninterrupted(run_dir, config, killed_in, tmp_path)


def test_sft_step_trains_and_registers_the_model(baseline_run: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(baseline_run, copy)
    config = write_tiny_config(tmp_path, copy)
    result = run_raysynth("run", str(config), "--set", "train.method=sft", "--set", "train.max_steps=4",
                          "--set", "train.max_length=256", "--set", "train.save_steps=2", "--set", "train.per_device_batch_size=1",
                          *EVAL_SETTINGS)
    skipped = [line for line in result.stdout.splitlines() if line.startswith("[skip]")]
    assert sum("/eval-" not in line for line in skipped) == 4  # synthesis is reused; training and eval run
    candidate = check_verdicts(copy, "condor", 1).models["condor-iter-01"]
    model_dir = Path(candidate.path)
    assert (model_dir / "config.json").is_file() and (model_dir / "tokenizer_config.json").is_file()
    done = json.loads((model_dir.parent / "_done.json").read_text())
    assert done["steps"] == 4 and done["last_loss"] is not None
    assert "fine-tuned model" in result.stdout and "[condor-iter-01] " in result.stdout
    check_evaluation(copy, candidate.path)


def test_a_student_other_than_the_synthesizer_is_trained(baseline_run: Path, tmp_path: Path):
    """The paper trains a base model on an instruct model's data: with `student_model` set, SFT starts
    from the student (a second, tiny model here), and the registered model has the student's shape."""
    import shutil

    from transformers import AutoConfig

    from raysynth.models import resolve_model
    from tiny_models import build_tiny_causal_lm

    copy = tmp_path / "run"
    shutil.copytree(baseline_run, copy)
    student = build_tiny_causal_lm(tmp_path / "student", resolve_model("smollm2-135m"))
    result = run_raysynth("run", str(write_tiny_config(tmp_path, copy)), "--set", f"student_model={student}",
                          "--set", "train.method=sft", "--set", "train.max_steps=2", "--set", "train.max_length=128",
                          "--set", "train.save_steps=2")
    assert result.stdout.count("[skip]") == 4  # synthesis by the synthesizer is reused as it is
    current = read_registry(copy).current_entry()
    trained = AutoConfig.from_pretrained(current.path)
    assert (trained.num_hidden_layers, trained.hidden_size) == (2, 64)  # the student's, not SmolLM2's
    identity = json.loads((Path(current.path).parent / "_train.json").read_text())
    assert identity["model"] == str(student)


# Small enough for CI: 6 IFEval prompts, short greedy answers; the student before training judges.
EVAL_SETTINGS = ("--set", "eval.limit=6", "--set", "eval.generation.max_tokens=48")


def check_evaluation(run_dir: Path, trained: str) -> None:
    base = json.loads((run_dir / "eval" / "iter-00.json").read_text())
    after = json.loads((run_dir / "eval" / "iter-01.json").read_text())
    assert base["model"] == "smollm2-135m" and after["model"] == trained
    for result in (base, after):
        assert set(result["ifeval"]) == {"prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"}
        for m in result["ifeval"].values():
            assert m["n"] == 6 and m["low"] <= m["value"] <= m["high"]
    winrate = after["winrate"]
    assert winrate["judge"] == "smollm2-135m"  # the frozen student before training, not the candidate
    assert winrate["baseline"] == "smollm2-135m" and winrate["wins"] + winrate["ties"] + winrate["losses"] \
        + winrate["incomplete"] == 6 and winrate["win_rate"]["n"] == 6 - winrate["incomplete"]
    assert base["diversity"]["texts"] > 0 and 0 < base["diversity"]["distinct_1"]["value"] <= 1

    # The CLI re-evaluates the base model from the answers already committed, and prints the table.
    result = run_raysynth("eval", "smollm2-135m", "--run-dir", str(run_dir), "--limit", "6", "--max-tokens", "48")
    assert "[skip]" in result.stdout and "IFEval prompt strict" in result.stdout and "IFEval instruction loose" in result.stdout

    # The report: one self-contained page that a headless browser renders as more than a blank page.
    result = run_raysynth("report", str(run_dir))
    page = (run_dir / "report.html").read_text()
    assert page.count("<img") >= 3 and "win rate vs champion" in page and "before" in page
    assert "Champion timeline" in page and ">condor-iter-01<" in page
    assert "IFEval prompt strict" in (run_dir / "summary.md").read_text()
    assert_renders_not_blank(run_dir / "report.html", run_dir / "report.png")


def assert_renders_not_blank(html: Path, png: Path) -> None:
    import shutil

    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "the report test needs Chromium (make test installs Debian's chromium package)"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                    f"--user-data-dir={png.parent / 'chromium-profile'}", "--window-size=1280,2400",
                    f"--screenshot={png}", html.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    image = Image.open(png).convert("L")
    histogram = image.histogram()
    non_white = sum(histogram[:240]) / (image.width * image.height)
    assert image.width == 1280 and non_white > 0.03, f"the rendered report looks blank ({non_white:.1%} ink)"
