"""One driver per run directory.

`RUN_DIR/_lock.json` names the driver that holds the run: host, pid, the process's start time, the
Ray job id once known, when it started and its last heartbeat (rewritten every HEARTBEAT_S seconds).
A second `raysynth run` on the same directory fails at once and names the holder. The lock of a
killed driver is taken over: on the same host when its process is gone (pid and start time, so a
reused pid does not count), from another host when its heartbeat is older than STALE_AFTER_S.
Creating the lock is atomic (a hard link that fails if the file exists), so two drivers starting
together cannot both win; taking over a stale lock moves it aside first, for the same reason.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

LOCK_FILE = "_lock.json"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0


class RunLocked(Exception):
    """The run directory is held by another live driver."""


def _process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def holder_alive(holder: dict[str, Any], now: float | None = None) -> bool:
    """Whether the driver a lock names may still be running."""
    if holder.get("host") == socket.gethostname():
        started = _process_started(int(holder["pid"]))
        return started is not None and abs(started - float(holder["process_started"])) < 1.0
    return (now or time.time()) - float(holder["heartbeat"]) < STALE_AFTER_S


def describe(holder: dict[str, Any]) -> str:
    job = f", Ray job {holder['ray_job']}" if holder.get("ray_job") else ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder["started"])))
    return f"pid {holder['pid']} on {holder['host']}{job}, running since {since}"


class RunLock:
    def __init__(self, run_dir: Path, heartbeat_s: float = HEARTBEAT_S):
        self.path = Path(run_dir) / LOCK_FILE
        self.heartbeat_s = heartbeat_s
        pid = os.getpid()
        self.me = {"host": socket.gethostname(), "pid": pid, "process_started": _process_started(pid),
                   "token": uuid.uuid4().hex, "started": time.time(), "heartbeat": time.time(), "ray_job": None}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _written_aside(self) -> Path:
        """`self.me` in a file of its own beside the lock, ready to be linked or moved into place."""
        tmp = self.path.with_name(f".{LOCK_FILE}.{self.me['token']}")
        tmp.write_text(json.dumps(self.me))
        return tmp

    def _write_new(self) -> bool:
        """Create the lock file holding `self.me`; False if one exists."""
        tmp = self._written_aside()
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> "RunLock":
        """Hold the run directory, or raise RunLocked naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._write_new():
                self._thread = threading.Thread(target=self._beat, daemon=True, name="run-lock-heartbeat")
                self._thread.start()
                return self
            holder = self.read()
            if holder is not None and holder_alive(holder):
                raise RunLocked(f"{self.path.parent} is in use by another raysynth run ({describe(holder)}); "
                                f"wait for it to finish or stop it. A killed run's lock is taken over "
                                f"(its process gone on this host, or no heartbeat for {STALE_AFTER_S:.0f} s).")
            # Stale (or unreadable mid-write): move it aside; of two drivers doing so, one rename fails.
            aside = self.path.with_name(f".{LOCK_FILE}.stale-{self.me['token']}")
            try:
                os.rename(self.path, aside)
                aside.unlink()
            except FileNotFoundError:
                pass
            if holder is not None:
                print(f"[lock] taking over {self.path.parent} from a run that is gone ({describe(holder)})")
        raise RunLocked(f"{self.path}: could not take the lock (another driver keeps taking it)")

    def note_ray_job(self, job_id: str) -> None:
        self.me["ray_job"] = job_id
        self._refresh()

    def _refresh(self) -> None:
        holder = self.read()
        if holder is None or holder.get("token") != self.me["token"]:
            return  # not ours any more (taken over as stale): leave it to its new holder
        self.me["heartbeat"] = time.time()
        os.replace(self._written_aside(), self.path)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._refresh()
            except OSError:
                pass  # storage hiccup: the next beat tries again

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = self.read()
        if holder is not None and holder.get("token") == self.me["token"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
