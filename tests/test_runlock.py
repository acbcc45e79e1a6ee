"""One driver per run directory: a second run fails at once naming the first; a dead driver's lock is
taken over (its pid gone or reused on this host, its heartbeat stale from another host)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_tiny_config
from raysynth.runlock import LOCK_FILE, STALE_AFTER_S, RunLock, RunLocked, holder_alive


def test_a_second_driver_is_refused_naming_the_holder(tmp_path: Path):
    with RunLock(tmp_path) as first:
        with pytest.raises(RunLocked, match=f"pid {os.getpid()} on "):
            RunLock(tmp_path).acquire()
        assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == first.me["token"]
    assert not (tmp_path / LOCK_FILE).exists()  # released
    RunLock(tmp_path).acquire().release()


def write_holder(run_dir: Path, **changes) -> None:
    holder = {**RunLock(run_dir).me, **changes}
    (run_dir / LOCK_FILE).write_text(json.dumps(holder))


def test_a_dead_or_reused_pid_on_this_host_is_taken_over(tmp_path: Path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_holder(tmp_path, pid=gone.pid, process_started=time.time() - 5)
    lock = RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == lock.me["token"]
    lock.release()
    # This very pid, but another process start: the pid was reused, the holder is gone.
    write_holder(tmp_path, process_started=RunLock(tmp_path).me["process_started"] - 100)
    RunLock(tmp_path).acquire().release()


def test_another_hosts_lock_holds_while_its_heartbeat_is_fresh(tmp_path: Path):
    now = time.time()
    assert holder_alive({"host": "elsewhere", "pid": 1, "heartbeat": now - 5}, now)
    assert not holder_alive({"host": "elsewhere", "pid": 1, "heartbeat": now - STALE_AFTER_S - 1}, now)
    write_holder(tmp_path, host="elsewhere", heartbeat=now)
    with pytest.raises(RunLocked, match="on elsewhere"):
        RunLock(tmp_path).acquire()
    write_holder(tmp_path, host="elsewhere", heartbeat=now - STALE_AFTER_S - 1)
    RunLock(tmp_path).acquire().release()


def test_the_holder_beats(tmp_path: Path):
    lock = RunLock(tmp_path, heartbeat_s=0.05).acquire()
    first = json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"]
    time.sleep(0.3)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"] > first
    lock.release()


def test_raysynth_run_on_a_held_run_dir_exits_at_once(tmp_path: Path):
    run_dir = tmp_path / "run"
    config = write_tiny_config(tmp_path, run_dir)
    env = {**os.environ, "RAYSYNTH_NO_PROGRESS": "1"}
    env.pop("RAY_ADDRESS", None)
    with RunLock(run_dir):
        started = time.time()
        result = subprocess.run([sys.executable, "-m", "raysynth.cli", "run", str(config)], capture_output=True,
                                text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"pid {os.getpid()}" in result.stderr and "in use by another raysynth run" in result.stderr
    assert time.time() - started < 60 and not (run_dir / "config.yaml").exists()  # nothing started or written
