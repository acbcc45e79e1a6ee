"""SynPO's keyword-list sampling stage at 100,000 and then 1,000,000 lists, in one run.

Builds a keyword pool from real YAKE keyword lists of the shipped corpus (the pool stage itself),
tiles it to each size with distinct ids, then streams every list through the sampling stage
(`run_keyword_sample` with a sample fraction of 1: sampling, name and stopword exclusion, commit).
Prints lists/s and the peak resident memory of the driver plus every Ray process for each size
(after a 20,000-list warm-up that starts Ray's workers); streaming means memory should grow less
than 20% from the first size to the second.

    .venv/bin/python bench/keywords.py [--sizes 100000 1000000] [--out bench/results-keywords.txt]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

from raysynth.config import KeywordConfig
from raysynth.keywords import run_keyword_pool, run_keyword_sample
from raysynth.pipeline import Lineage, init_ray
from raysynth.recipes.synpo import SHIPPED_CORPUS
from raysynth.store import RunDir, StageDir, row_id

CHUNK = 50_000


class PeakMemory:
    """Samples the summed RSS of this process and every Ray process on the machine."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.peak, self.stop = interval, 0, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    @staticmethod
    def current() -> int:
        total = psutil.Process().memory_info().rss
        for proc in psutil.process_iter(["cmdline", "memory_info"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.pid != os.getpid() and ("ray::" in cmd or "/ray/" in cmd or "raylet" in cmd or "gcs_server" in cmd):
                total += proc.info["memory_info"].rss if proc.info["memory_info"] else 0
        return total

    def _watch(self) -> None:
        while not self.stop.wait(self.interval):
            self.peak = max(self.peak, self.current())

    def __enter__(self):
        self.peak = self.current()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def tiled_pool(run: RunDir, name: str, lists: list[list[str]], size: int, lineage: Lineage) -> StageDir:
    """A committed pool stage of `size` lists cycling through `lists`, written chunk by chunk."""
    stage = run.stage(0, name, {"size": size})
    stage.prepare({"size": size})
    base = lineage.columns(name)
    for start in range(0, size, CHUNK):
        ids = [f"p{i:09d}" for i in range(start, min(size, start + CHUNK))]
        frame = pd.DataFrame({"keywords": [lists[i % len(lists)] for i in range(start, start + len(ids))],
                              "parent_id": ids, **base})
        frame["id"] = [row_id(i, name, 0) for i in ids]
        stage.commit_batch(ids, frame, pd.DataFrame(), {"rows_in": len(ids), "rows_out": len(ids), "rejected": {},
                                                       "tokens_in": 0, "tokens_out": 0})
    stage.commit({"size": size})
    return stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results-keywords.txt"))
    args = parser.parse_args()
    os.environ["RAYSYNTH_NO_PROGRESS"] = "1"
    cfg = KeywordConfig()
    init_ray()
    lines = [f"# bench/keywords.py  {time.strftime('%Y-%m-%d %H:%M')}  cpus={os.cpu_count()}"]
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp) / "run")
        lineage = Lineage("bench", 0, "-")
        started = time.time()
        pool = run_keyword_pool(run, [str(SHIPPED_CORPUS)], "text", cfg, 0, lineage)
        real = [[str(k) for k in ks] for ks in pool.read(["keywords"])["keywords"]]
        lines.append(f"pool stage: {len(real)} real keyword lists from {SHIPPED_CORPUS.name} in "
                     f"{time.time() - started:.1f} s (YAKE)")
        # A small warm-up pass first, so that both measured sizes find Ray's worker processes started.
        warm = run_keyword_sample(run, 1, tiled_pool(run, "pool-warmup", real, 20_000, lineage), 20_000,
                                  cfg.model_copy(update={"oversample": 1.0}), 0, Lineage("bench", 1, "-"), name="warmup")
        lines.append(f"warm-up: {warm.manifest()['rows_in']:,} lists")
        peaks = []
        for size in args.sizes:
            source = tiled_pool(run, f"pool-{size}", real, size, lineage)
            with PeakMemory() as memory:
                started = time.time()
                out = run_keyword_sample(run, 1, source, size, cfg.model_copy(update={"oversample": 1.0}), 0,
                                         Lineage("bench", 1, "-"), name=f"sample-{size}")
                seconds = time.time() - started
            manifest = out.manifest()
            peaks.append(memory.peak)
            lines.append(f"{size:>9,} lists: {size / seconds:,.0f} lists/s ({seconds:.1f} s), kept {manifest['rows_out']:,}, "
                         f"excluded {manifest['rejected']}, peak memory {memory.peak / 2**30:.2f} GiB")
        if len(peaks) > 1:
            lines.append(f"peak memory growth {args.sizes[0]:,} -> {args.sizes[-1]:,} lists: "
                         f"{100 * (peaks[-1] / peaks[0] - 1):+.1f}% (target < 20%)")
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
