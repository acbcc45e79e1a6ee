"""Self-Instruct's ROUGE-L novelty filter at scale: raysynth's screened filter against the naive one.

The naive filter is Self-Instruct's: each instruction is scored with `rouge-score` against every
instruction kept before it and kept when all scores are below 0.7 (quadratic). raysynth's
(`rouge_novelty_reasons`) screens candidates with a MinHash LSH index over word sets first and runs
the same exact ROUGE-L only on those. On `--rows` instructions both must keep exactly the same set;
the script prints both times, the speed-up, and then the screened filter's time on `--large` rows.

The instructions: the 1,516 shipped prompts and instructions (Alpaca, self-instruct seeds, IFEval,
corpus first sentences) and seeded variants of them, a third near-copies (a word dropped, two words
swapped, a phrase added: what an LLM's repeats look like), the rest recombinations of two sources'
halves (new instructions with shared phrasing). The screened filter's figures are the median of
`--repeats` runs (min-max); the naive filter runs `--naive-repeats` times (default 1: one naive run
of 5,000 takes about half an hour on the 2-core machine; its kept set does not vary), first.

    .venv/bin/python bench/filters.py [--rows 5000] [--large 100000] [--repeats 3] [--naive-repeats 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from rouge_score import rouge_scorer

from raysynth.score.filters import rouge_novelty_reasons, words
from raysynth.shipped import ALPACA_SEED, CORPUS, IFEVAL, SEED_TASKS, read_jsonl

THRESHOLD = 0.7


def shipped_texts() -> list[str]:
    rows = [row for path in (ALPACA_SEED, SEED_TASKS, IFEVAL) for row in read_jsonl(path)]
    texts = [str(r.get("instruction") or r.get("prompt")) for r in rows]
    texts += [str(row["text"]).split(". ")[0] for row in read_jsonl(CORPUS)]
    return [t for t in texts if len(words(t)) >= 4]


def instructions(count: int, seed: int = 0) -> list[str]:
    """`count` instructions: the shipped ones, then seeded near-copies and recombinations of them."""
    rng, base = random.Random(seed), shipped_texts()
    out = list(base[:count])
    while len(out) < count:
        tokens = rng.choice(base).split()
        kind = rng.random()
        if kind < 1 / 3:  # a near-copy
            i = rng.randrange(len(tokens))
            if rng.random() < 0.5 and len(tokens) > 4:
                del tokens[i]
            else:
                j = rng.randrange(len(tokens))
                tokens[i], tokens[j] = tokens[j], tokens[i]
            if rng.random() < 0.3:
                tokens += rng.choice(["Be brief.", "Use simple words.", "Answer in one paragraph."]).split()
        else:  # a recombination: this one's first half, another's second half
            other = rng.choice(base).split()
            tokens = tokens[: max(2, len(tokens) // 2)] + other[len(other) // 2:]
        out.append(" ".join(tokens))
    return out


def naive_kept(texts: list[str]) -> list[int]:
    """Self-Instruct's filter: every candidate against every kept instruction, with rouge-score."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept: list[str] = []
    indexes = []
    for i, text in enumerate(texts):
        if not words(text):
            continue
        if all(scorer.score(other, text)["rougeL"].fmeasure < THRESHOLD for other in kept):
            kept.append(text)
            indexes.append(i)
    return indexes


def screened_kept(texts: list[str]) -> list[int]:
    return [i for i, reason in enumerate(rouge_novelty_reasons(texts, THRESHOLD)) if reason is None]


def timed(fn, texts: list[str]) -> tuple[float, list[int]]:
    started = time.perf_counter()
    kept = fn(texts)
    return time.perf_counter() - started, kept


def main() -> None:
    from common import spread, write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results-filters.txt"))
    args = parser.parse_args()

    texts = instructions(args.rows)
    times: dict[str, list[float]] = {"naive": [], "screened": []}
    kept: dict[str, list[int]] = {}
    for k in range(max(args.repeats, args.naive_repeats)):
        sides = ("naive", "screened") if k % 2 == 0 else ("screened", "naive")
        for side in sides:
            if k >= (args.naive_repeats if side == "naive" else args.repeats):
                continue
            seconds, kept[side] = timed(naive_kept if side == "naive" else screened_kept, texts)
            times[side].append(seconds)
            print(f"  round {k + 1} {side}: {seconds:.1f} s, kept {len(kept[side])}", flush=True)
    same = kept["naive"] == kept["screened"]
    large = instructions(args.large)
    large_times = []
    for k in range(args.repeats):
        seconds, large_kept = timed(screened_kept, large)
        large_times.append(seconds)
        print(f"  large round {k + 1}: {seconds:.1f} s, kept {len(large_kept)}", flush=True)

    speedup = statistics.median(times["naive"]) / statistics.median(times["screened"])
    lines = [f"ROUGE-L novelty filter (keep when F1 < {THRESHOLD} against every kept instruction), {args.rows:,} "
             f"instructions; repeats={args.repeats} (naive: {args.naive_repeats})",
             f"  naive (rouge-score, all pairs): {spread(times['naive'], '{:.1f}')} s",
             f"  screened (MinHash LSH, shared-word bound, rouge-score's LCS): {spread(times['screened'], '{:.1f}')} s",
             f"  speed-up: {speedup:.1f}x; kept {len(kept['screened'])} of {args.rows:,}; same kept set as the naive "
             f"filter: {'yes' if same else 'NO'}",
             f"  screened, {args.large:,} instructions: {spread(large_times, '{:.1f}')} s "
             f"({statistics.median(large_times) / 60:.1f} min), kept {len(large_kept):,}"]
    write_results(args.out, f"python bench/filters.py --rows {args.rows} --large {args.large} --repeats "
                            f"{args.repeats} --naive-repeats {args.naive_repeats}", lines,
                  ["instructions: the shipped prompts, then seeded near-copies and recombinations (bench/filters.py)",
                   "target (issue 22): the same kept set; 100,000 in minutes"])
    if not same:
        raise SystemExit("the screened filter kept another set than the naive one")


if __name__ == "__main__":
    main()
