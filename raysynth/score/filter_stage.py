"""Text filters as a stage: length -> format -> MinHash near-duplicates -> ROUGE-L novelty.

Novelty and de-duplication are order-dependent (each text is compared with those kept before
it), so this stage runs on the driver over the source's rows in id order rather than in parallel
tasks. It holds one MinHash per kept text (128 integers) and the kept texts of the column, and
runs exact ROUGE-L only on LSH candidates, so it stays near-linear in the number of rows.
"""

from __future__ import annotations

from collections.abc import Iterable

from raysynth.config import FilterConfig
from raysynth.pipeline import Lineage, commit_decisions, finish_stage, open_stage
from raysynth.score.filters import format_reason, length_reason, near_duplicate_reasons, rouge_novelty_reasons
from raysynth.store import RunDir, StageDir


def filter_reasons(texts: list[str], cfg: FilterConfig, reference: Iterable[str] = ()) -> list[str | None]:
    """Each text's first failing filter, or None; later filters see only texts that passed."""
    reasons: list[str | None] = []
    for text in texts:
        reason = length_reason(text, cfg.min_chars, cfg.max_chars)
        if reason is None and cfg.pattern is not None:
            reason = format_reason(text, cfg.pattern)
        reasons.append(reason)
    for check in _order_dependent(cfg, list(reference)):
        alive = [i for i, r in enumerate(reasons) if r is None]
        for i, reason in zip(alive, check([texts[i] for i in alive])):
            reasons[i] = reason
    return reasons


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
                "reference": len(reference)}
    stage = open_stage(run, iteration, name, identity)
    if stage.committed:
        return stage
    rows = source.read().sort_values("id", kind="stable").to_dict("records")
    texts = [str(row[column]) for row in rows]
    commit_decisions(stage, name, lineage, rows, filter_reasons(texts, cfg, reference), texts)
    return finish_stage(stage, identity, len(rows))
