import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent


def unexpected_skips(terminal) -> list:
    """Skipped tests that were not marked for hardware this machine lacks (`gpu`)."""
    return [r for r in terminal.stats.get("skipped", []) if "gpu" not in r.keywords]


def pytest_terminal_summary(terminalreporter):
    """Print the skip count, and why a skip fails the suite: a test that silently does not run on a
    user's fresh clone tells nobody anything."""
    skipped = terminalreporter.stats.get("skipped", [])
    unexpected = unexpected_skips(terminalreporter)
    terminalreporter.write_line(f"skipped tests: {len(skipped)} ({len(skipped) - len(unexpected)} marked gpu)")
    for report in unexpected:
        terminalreporter.write_line(f"FAIL (skipped without a gpu marker): {report.nodeid}", red=True)


def pytest_sessionfinish(session, exitstatus):
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    if exitstatus == 0 and terminal is not None and unexpected_skips(terminal):
        session.exitstatus = 1


# A chain small enough for CI, greedy unless a test asks for sampled answers, batch_size 2 so that
# every stage has several batches to resume between.
TINY_CONDOR = """\
recipe: condor
run_dir: {run_dir}
seed: 0
engine:
  model: smollm2-135m
  batch_size: 2
  keep_alive: {keep_alive}
condor:
  max_tags: 1
  task_types: [Domain QA, Creation]
  refine_rounds: {rounds}
  max_question_chars: 200
  max_section_chars: 100
  max_answer_chars: 400
  steps:
    question: {{temperature: 0, max_tokens: 200}}
    answer: {{temperature: {answer_temperature}, max_tokens: 48, structured: false}}
    critique: {{temperature: 0, max_tokens: 160}}
    refine: {{temperature: 0, max_tokens: 160}}
"""


def free_port() -> int:
    """A loopback port nothing listens on now (for a test cluster's GCS or dashboard)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_tiny_config(directory: Path, run_dir: Path, rounds: int = 1, keep_alive: bool = True,
                      answer_temperature: float = 0) -> Path:
    path = directory / "tiny-condor.yaml"
    path.write_text(TINY_CONDOR.format(run_dir=run_dir, rounds=rounds, keep_alive=str(keep_alive).lower(),
                                       answer_temperature=answer_temperature))
    return path


def raysynth_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "raysynth.cli", *args]


def run_raysynth(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "RAYSYNTH_NO_PROGRESS": "1", **(env or {})}
    if "RAY_ADDRESS" not in (env or {}):
        full_env.pop("RAY_ADDRESS", None)
    result = subprocess.run(raysynth_cmd(*args), capture_output=True, text=True, timeout=timeout, env=full_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def kill_driver_when(config: Path, pick: Callable[[], object], timeout: float) -> object:
    """Start `raysynth run CONFIG` and kill it as `kill_when` does."""
    return kill_when(raysynth_cmd("run", str(config)), pick, timeout)


def kill_when(command: list[str], pick: Callable[[], object], timeout: float) -> object:
    """Start a driver (`command`, its own local Ray), SIGKILL the driver alone (as a crash would) as
    soon as `pick()` returns something, then Ray's processes it left behind; returns what `pick`
    returned (None when the run ended or timed out first)."""
    env = {**os.environ, "RAYSYNTH_NO_PROGRESS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(command, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    picked = None
    deadline = time.time() + timeout
    try:
        while picked is None and time.time() < deadline and proc.poll() is None:
            picked = pick()
            if picked is not None:
                os.kill(proc.pid, signal.SIGKILL)
            else:
                time.sleep(0.2)
    finally:
        try:
            proc.wait(timeout=60)
        finally:
            time.sleep(2)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return picked


def sampled_at(stage_dir: Path) -> float | None:
    """The temperature an LLM stage samples at (None for other stages)."""
    import json

    identity = json.loads((stage_dir / "_identity.json").read_text())["identity"]
    step = identity.get("step")
    return step["sampling"]["temperature"] if isinstance(step, dict) and "sampling" in step else None


def partly_committed(run_dir: Path, iteration: int, prefix: str = "", sampled: bool = True):
    """A stage of the iteration (named `prefix`...) with some batches committed and not all of them;
    with `sampled`, only an LLM stage sampling at temperature > 0 (where a resume that redraws
    differently would show)."""
    from raysynth.store import StageDir

    for d in sorted((Path(run_dir) / f"iter-{iteration:02d}").glob(f"{prefix}*-*")):
        stage = StageDir(d)
        if (d / "_done").is_dir() and not stage.committed and any((d / "_done").glob("*.json")):
            if not sampled or (sampled_at(d) or 0) > 0:
                return stage
    return None


def kept_and_rejected(stage_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A stage's kept and rejected rows, in id order."""
    from raysynth.store import StageDir

    stage = StageDir(stage_dir)
    rejected = [pd.read_parquet(f) for f in stage.rejected_files()]
    kept = stage.read() if stage.part_files() else pd.DataFrame(columns=["id"])
    frames = (kept, pd.concat(rejected, ignore_index=True) if rejected else pd.DataFrame(columns=["id"]))
    return tuple(f.sort_values("id", kind="stable").reset_index(drop=True) for f in frames)


def assert_resume_matches_uninterrupted(run_dir: Path, config: Path, killed, scratch: Path) -> None:
    """The stage the driver was killed in, recomputed uninterrupted with the same seed (moved out of
    the finished run, which is then re-run with `--stop-after` that stage), holds exactly the rows
    the resumed run committed: the same kept and rejected ids, every column equal. In place, not on
    a copy: stages of trained models are keyed by the model's path inside the run."""
    import shutil

    relative = killed.path.relative_to(run_dir)
    kept, rejected = kept_and_rejected(killed.path)
    assert len(kept), f"{relative} kept nothing to compare"
    shutil.move(killed.path, scratch / "resumed-stage")
    stop = f"{relative.parent}/{killed.name.rsplit('-', 1)[0]}"
    run_raysynth("run", str(config), "--stop-after", stop, timeout=1200)
    assert (killed.path / "_stage.json").exists(), f"{stop} was not recomputed"
    kept_again, rejected_again = kept_and_rejected(killed.path)
    for resumed, uninterrupted in ((kept, kept_again), (rejected, rejected_again)):
        assert list(resumed["id"]) == list(uninterrupted["id"]), stop
        assert set(resumed.columns) == set(uninterrupted.columns), stop
        pd.testing.assert_frame_equal(resumed, uninterrupted[resumed.columns], check_dtype=False)


def check_verdicts(run_dir: Path, recipe: str, iterations: int, initial: str = "smollm2-135m"):
    """Every trained iteration carries the promotion gate's verdict; each was evaluated against the
    champion of its time (iteration 0's model first), judged by the frozen initial model, never by
    itself; the run's current model is the last one promoted. Returns the registry."""
    import json

    from raysynth.registry import read_registry

    registry = read_registry(run_dir)
    champion, champion_model = f"{recipe}-iter-00", initial
    assert registry.models[champion].iteration == 0
    for t in range(1, iterations + 1):
        entry = registry.models[f"{recipe}-iter-{t:02d}"]
        assert Path(entry.path, "config.json").is_file() and entry.parent and entry.config_hash
        assert entry.reason.startswith(("promoted", "rejected")), entry.reason
        result = json.loads((run_dir / "eval" / f"iter-{t:02d}.json").read_text())
        assert result["model"] == entry.path and result["paired"]["baseline"] == champion_model
        for difference in result["paired"]["ifeval"].values():
            assert difference["n"] == result["ifeval_prompts"] and -1 <= difference["low"] <= difference["high"] <= 1
        if "winrate" in result:
            assert result["winrate"]["baseline"] == champion_model and result["winrate"]["judge"] == initial
            assert entry.versus["champion"] == champion
        if entry.reason.startswith("promoted"):
            champion, champion_model = entry.name, entry.path
        else:
            assert entry.status == "rejected"
    assert registry.current == champion and registry.models[champion].status == "champion"
    return registry


@pytest.fixture(scope="session")
def baseline_run(tmp_path_factory) -> Path:
    """One uninterrupted tiny Condor run on the real engine, shared by the end-to-end tests."""
    directory = tmp_path_factory.mktemp("baseline")
    run_dir = directory / "run"
    run_raysynth("run", str(write_tiny_config(directory, run_dir)))
    return run_dir


@pytest.fixture(scope="module")
def local_ray():
    """An in-process local Ray for tests that drive stages directly; shut down after the module."""
    import ray

    from raysynth.pipeline import init_ray

    os.environ["RAYSYNTH_NO_PROGRESS"] = "1"
    os.environ.pop("RAY_ADDRESS", None)
    init_ray()
    yield
    ray.shutdown()
