"""Text filters as a stage: length -> words -> start -> prefixes -> blocklist -> format -> MinHash
near-duplicates -> ROUGE-L novelty.

Novelty and de-duplication are order-dependent (each text is compared with those kept before
it), so this stage runs on the driver over the source's rows in id order rather than in parallel
tasks. It holds one MinHash per kept text (128 integers) and the kept texts of the column, and
runs exact ROUGE-L only on LSH candidates, so it stays near-linear in the number of rows.
"""

from __future__ import annotations

from collections.abc import Iterable

from raysynth.config import FilterConfig
from raysynth.hashing import stable_hash
from raysynth.pipeline import Lineage, run_decision_stage
from raysynth.score.filters import (blocklist_reason, format_reason, length_reason, near_duplicate_reasons,
                                    prefix_reason, rouge_novelty_reasons, start_reason, word_count_reason)
from raysynth.store import RunDir, StageDir


def filter_reasons(texts: list[str], cfg: FilterConfig, reference: Iterable[str] = ()) -> list[str | None]:
    """Each text's first failing filter, or None; later filters see only texts that passed."""
    reasons = [_first_reason(text, cfg) for text in texts]
    for check in _order_dependent(cfg, list(reference)):
        alive = [i for i, r in enumerate(reasons) if r is None]
        for i, reason in zip(alive, check([texts[i] for i in alive])):
            reasons[i] = reason
    return reasons


def _first_reason(text: str, cfg: FilterConfig) -> str | None:
    checks = [lambda: length_reason(text, cfg.min_chars, cfg.max_chars),
              lambda: word_count_reason(text, cfg.min_words, cfg.max_words),
              lambda: start_reason(text) if cfg.ascii_start else None,
              lambda: prefix_reason(text, cfg.blocked_prefixes),
              lambda: blocklist_reason(text, cfg.blocklist),
              lambda: format_reason(text, cfg.pattern) if cfg.pattern is not None else None]
    return next((reason for check in checks if (reason := check()) is not None), None)


def _order_dependent(cfg: FilterConfig, reference: list[str]):
    if cfg.near_duplicate_jaccard is not None:
        yield lambda texts: near_duplicate_reasons(texts, cfg.near_duplicate_jaccard)
    if cfg.rouge_l_max is not None:
        yield lambda texts: rouge_novelty_reasons(texts, cfg.rouge_l_max, kept=reference)


def run_filter_stage(run: RunDir, iteration: int, name: str, source: StageDir, column: str, cfg: FilterConfig,
                     lineage: Lineage, reference: list[str] | None = None) -> StageDir:
    """Filter `column` of `source`'s rows; `reference` texts (e.g. seed tasks) count as kept."""
    reference = reference or []
    identity = {"filters": cfg.model_dump(mode="json"), "column": column, "input": source.name,
                "reference": stable_hash(reference) if reference else 0}
    return run_decision_stage(run, iteration, name, identity, source,
                              lambda frame: filter_reasons([str(t) for t in frame[column]], cfg, reference),
                              column, lineage)
