"""SynPO's keyword-list sampling stage at 100,000 and then 1,000,000 lists, in one run.

Builds a keyword pool from real YAKE keyword lists of the shipped corpus (the pool stage itself),
tiles it to each size with distinct ids, then streams every list through the sampling stage
(`run_keyword_sample` with a sample fraction of 1: sampling, name and stopword exclusion, commit).
Prints lists/s and the driver's own memory growth (its peak resident memory during the stage minus
its memory when the stage began; Ray's processes excluded, as their fixed footprint of ~3.5 GiB
would hide the driver's) for each size, after a 20,000-list warm-up that starts Ray's workers. The
sizes are measured `--repeats` times, in alternating order; median (min-max). Streaming means the
driver's growth at the larger size stays within 20% of (or 50 MiB above) its growth at the smaller one.

    .venv/bin/python bench/keywords.py [--sizes 100000 1000000] [--repeats 3] [--out bench/results-keywords.txt]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

from raysynth.hashing import row_id
from raysynth.pipeline import Lineage, init_ray
from raysynth.recipes.synpo.config import KeywordConfig
from raysynth.recipes.synpo.keywords import run_keyword_pool, run_keyword_sample
from raysynth.shipped import CORPUS
from raysynth.store import RunDir, StageDir

CHUNK = 50_000


class PeakMemory:
    """Samples this process's resident memory; `growth` is its peak minus its memory at the start."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.start, self.peak, self.stop = interval, 0, 0, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    @staticmethod
    def current() -> int:
        return psutil.Process().memory_info().rss

    @property
    def growth(self) -> int:
        return self.peak - self.start

    def _watch(self) -> None:
        while not self.stop.wait(self.interval):
            self.peak = max(self.peak, self.current())

    def __enter__(self):
        self.start = self.peak = self.current()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.current())


def shipped_keyword_lists(run: RunDir, lineage: Lineage) -> list[list[str]]:
    """Real keyword lists to tile: the pool stage (YAKE) over the corpus shipped with raysynth."""
    pool = run_keyword_pool(run, [str(CORPUS)], "text", KeywordConfig(), 0, lineage)
    return [[str(k) for k in ks] for ks in pool.read(["keywords"])["keywords"]]


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
    from common import spread, write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results-keywords.txt"))
    args = parser.parse_args()
    os.environ["RAYSYNTH_NO_PROGRESS"] = "1"
    cfg = KeywordConfig().model_copy(update={"oversample": 1.0})
    init_ray()
    lines = []
    rates: dict[int, list[float]] = {size: [] for size in args.sizes}
    growth: dict[int, list[float]] = {size: [] for size in args.sizes}
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp) / "run")
        lineage = Lineage("bench", 0, "-")
        started = time.time()
        real = shipped_keyword_lists(run, lineage)
        lines.append(f"pool stage: {len(real)} real keyword lists from {CORPUS.name} in "
                     f"{time.time() - started:.1f} s (YAKE)")
        # A small warm-up pass first, so that every measured run finds Ray's worker processes started.
        run_keyword_sample(run, 1, tiled_pool(run, "pool-warmup", real, 20_000, lineage), 20_000, cfg, 0,
                           Lineage("bench", 1, "-"), name="warmup")
        sources = {size: tiled_pool(run, f"pool-{size}", real, size, lineage) for size in args.sizes}
        for round_ in range(args.repeats):
            for size in (args.sizes if round_ % 2 == 0 else args.sizes[::-1]):
                with PeakMemory() as memory:
                    started = time.time()
                    out = run_keyword_sample(run, 1, sources[size], size, cfg, 0, Lineage("bench", 1, "-"),
                                             name=f"sample-{size}-{round_}")
                    seconds = time.time() - started
                rates[size].append(size / seconds)
                growth[size].append(memory.growth / 2**20)
                print(f"round {round_ + 1}: {size:,} lists in {seconds:.1f} s, driver +{memory.growth / 2**20:.0f} MiB, "
                      f"kept {out.manifest()['rows_out']:,}", flush=True)
    for size in args.sizes:
        lines.append(f"{size:>9,} lists: {spread(rates[size], '{:,.0f}')} lists/s; driver memory growth "
                     f"{spread(growth[size], '{:.0f}')} MiB")
    small, large = (statistics.median(growth[s]) for s in (args.sizes[0], args.sizes[-1]))
    lines.append(f"driver growth {args.sizes[0]:,} -> {args.sizes[-1]:,} lists: {small:.0f} -> {large:.0f} MiB "
                 f"(target: within 20% or 50 MiB: {'met' if large <= max(1.2 * small, small + 50) else 'MISSED'})")
    write_results(args.out, f"python bench/keywords.py --sizes {' '.join(map(str, args.sizes))} --repeats {args.repeats}",
                  lines, ["driver memory growth: the driver process's peak RSS during the stage minus its RSS when "
                          "the stage began (Ray's processes excluded)"])


if __name__ == "__main__":
    main()
