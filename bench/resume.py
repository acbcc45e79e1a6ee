"""Resume at scale: a light stage of 1,000,000 rows (SynPO's keyword sampling, no LLM), run fresh, then
interrupted at about half and resumed, in one run.

The interruption is what a killed driver leaves: the stage uncommitted, every other batch's marker and
part gone (half the rows to redo, spread over the whole input). For each side: seconds to the first new
committed batch (the resume's start-up: reading the markers, hashing the committed ids, the filter),
total seconds, and the driver's own memory: its peak RSS and its growth (that peak minus RSS at the
stage's start; Ray's processes excluded from both). Rounds alternate the order of the sides, after a
warm-up; median (min-max). Targets (issue 18): driver memory on resume < 2x fresh, shown for the peak
and for the growth (a few MiB either side, so mostly noise); the resume's start-up < 10% of the fresh
stage's time.

    .venv/bin/python bench/resume.py [--rows 1000000] [--repeats 3] [--out bench/results-resume.txt]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from keywords import PeakMemory, shipped_keyword_lists, tiled_pool

from raysynth.pipeline import Lineage, init_ray
from raysynth.recipes.synpo.config import KeywordConfig
from raysynth.recipes.synpo.keywords import run_keyword_sample
from raysynth.store import MANIFEST, RunDir, StageDir


class FirstNewMarker:
    """When the first marker not present at the start appears in a stage's _done directory."""

    def __init__(self, done_dir: Path):
        self.done_dir, self.at, self.stop = done_dir, None, threading.Event()
        self.before = set(done_dir.glob("*.json")) if done_dir.exists() else set()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while self.at is None and not self.stop.wait(0.02):
            if self.done_dir.exists() and set(self.done_dir.glob("*.json")) - self.before:
                self.at = time.time()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def timed(run: RunDir, source: StageDir, rows: int, cfg: KeywordConfig, name: str, stage_dir: Path) -> dict[str, float]:
    with PeakMemory() as memory, FirstNewMarker(stage_dir / "_done") as first:
        started = time.time()
        run_keyword_sample(run, 1, source, rows, cfg, 0, Lineage("bench", 1, "-"), name=name)
        ended = time.time()
    return {"first_s": (first.at or ended) - started, "total_s": ended - started, "growth_mib": memory.growth / 2**20,
            "peak_mib": memory.peak / 2**20}


def main() -> None:
    from common import spread, write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results-resume.txt"))
    args = parser.parse_args()
    os.environ["RAYSYNTH_NO_PROGRESS"] = "1"
    cfg = KeywordConfig().model_copy(update={"oversample": 1.0})
    init_ray()
    results: dict[str, list[dict[str, float]]] = {"fresh": [], "resume": []}
    with tempfile.TemporaryDirectory() as tmp:
        run, lineage = RunDir(Path(tmp) / "run"), Lineage("bench", 0, "-")
        real = shipped_keyword_lists(run, lineage)
        source = tiled_pool(run, "pool-big", real, args.rows, lineage)
        warm = tiled_pool(run, "pool-warmup", real, 20_000, lineage)
        run_keyword_sample(run, 1, warm, 20_000, cfg, 0, Lineage("bench", 1, "-"), name="warmup")

        def fresh(k: int) -> Path:
            name = f"fresh-{k}"
            stage_dir = run.stage(1, name, {"input": source.name, "fraction": 1.0, "seed": 0, "iteration": 1}).path
            results["fresh"].append(timed(run, source, args.rows, cfg, name, stage_dir))
            assert (stage_dir / MANIFEST).exists(), stage_dir  # the stage the recipe code committed
            return stage_dir

        def resume(k: int, finished: Path) -> None:
            # A copy of a finished stage, made as a kill leaves one: uncommitted, every other batch gone.
            name = f"resume-{k}"
            stage_dir = run.stage(1, name, {"input": source.name, "fraction": 1.0, "seed": 0, "iteration": 1}).path
            shutil.copytree(finished, stage_dir)
            (stage_dir / MANIFEST).unlink()
            for marker in sorted((stage_dir / "_done").glob("*.json"))[1::2]:
                marker.unlink()
            results["resume"].append(timed(run, source, args.rows, cfg, name, stage_dir))
            assert (stage_dir / MANIFEST).exists(), stage_dir

        finished = None  # the first fresh stage: every resume starts from a copy of it
        for k in range(args.repeats):
            for side in (("fresh", "resume") if k % 2 == 0 else ("resume", "fresh")):
                if side == "fresh":
                    stage_dir = fresh(k)
                    finished = finished or stage_dir
                else:
                    resume(k, finished)
        for side, entries in results.items():
            print(side, entries)

    lines = [f"rows={args.rows:,} stage=keyword sampling (no LLM), resume redoes every other batch "
             f"(sample_batch_size {cfg.sample_batch_size}); repeats={args.repeats}"]
    for side in ("fresh", "resume"):
        r = results[side]
        lines.append(f"  {side:7}: first new batch {spread([x['first_s'] for x in r], '{:.1f}')} s, total "
                     f"{spread([x['total_s'] for x in r], '{:.1f}')} s, driver memory growth "
                     f"{spread([x['growth_mib'] for x in r], '{:.0f}')} MiB, driver peak "
                     f"{spread([x['peak_mib'] for x in r], '{:.0f}')} MiB")
    fresh_total = statistics.median(x["total_s"] for x in results["fresh"])
    resume_first = statistics.median(x["first_s"] for x in results["resume"])
    fresh_first = statistics.median(x["first_s"] for x in results["fresh"])
    growth = [statistics.median(x["growth_mib"] for x in results[side]) for side in ("fresh", "resume")]
    lines.append(f"  resume start-up / fresh stage time: {resume_first / fresh_total:.1%} (target < 10%)")
    lines.append(f"  of which the resume's own (its first new batch minus a fresh stage's first batch: reading the "
                 f"markers, the hashes, the filter): {(resume_first - fresh_first) / fresh_total:.1%}")
    peak = [statistics.median(x["peak_mib"] for x in results[side]) for side in ("fresh", "resume")]
    lines.append(f"  driver growth resume / fresh: {growth[1] / max(growth[0], 1):.2f}x (target < 2x)")
    lines.append(f"  driver peak memory resume / fresh: {peak[1] / peak[0]:.2f}x (target < 2x)")
    write_results(args.out, f"python bench/resume.py --rows {args.rows} --repeats {args.repeats}", lines,
                  ["driver memory growth: the driver process's peak RSS during the stage minus its RSS at the start; "
                   "driver peak: that peak RSS itself (Ray's processes excluded from both)"])


if __name__ == "__main__":
    main()
