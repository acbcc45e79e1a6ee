"""Diversity of synthetic texts: distinct-1/2, near-duplicate rate, embedding spread.

distinct-n (Li et al., 2016) is unique n-grams over all n-grams, and it falls as a corpus grows,
so a bootstrap over texts (which repeats texts) would bias it down. We compute it on disjoint
groups of `group_size` texts (seeded shuffle) and report the mean with a bootstrap over groups:
comparable across iterations that use the same group size. The near-duplicate rate is the share of
texts that MinHash-LSH finds near an earlier text (the filter stage's detector). Embedding spread
(mean pairwise cosine distance) needs an embedding model and is skipped without one.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from raysynth.eval.stats import rate
from raysynth.score.filters import near_duplicate_reasons, words


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    tokens = words(text)
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    grams = [g for text in texts for g in _ngrams(text, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def grouped_distinct(texts: list[str], n: int, group_size: int, seed: int) -> dict[str, float]:
    order = list(texts)
    random.Random(seed).shuffle(order)
    groups = [order[i:i + group_size] for i in range(0, len(order), group_size)]
    if len(groups) > 1 and len(groups[-1]) < group_size:
        groups = groups[:-1]  # a short last group would read as more diverse
    return rate([distinct_n(group, n) for group in groups], seed)


def embedding_spread(texts: list[str], model: str, seed: int, max_texts: int = 512) -> dict[str, float]:
    """Mean cosine distance between texts' mean-pooled embeddings; the interval resamples texts
    (pairs among resampled texts exclude a text with itself)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from raysynth.models import resolve_model

    sample = random.Random(seed).sample(texts, min(max_texts, len(texts)))
    path = resolve_model(model)
    tokenizer, encoder = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    vectors = []
    with torch.no_grad():
        for i in range(0, len(sample), 32):
            batch = tokenizer(sample[i:i + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            vectors.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    emb = torch.cat(vectors).numpy()
    distance = 1.0 - emb @ emb.T
    np.fill_diagonal(distance, np.nan)
    return rate(np.nanmean(distance, axis=1).tolist(), seed)


def diversity(texts: list[str], seed: int = 0, group_size: int = 20, jaccard: float = 0.8,
              embedding_model: str | None = None) -> dict[str, Any]:
    texts = [t for t in texts if t and t.strip()]
    metrics: dict[str, Any] = {
        "distinct_1": grouped_distinct(texts, 1, group_size, seed),
        "distinct_2": grouped_distinct(texts, 2, group_size, seed),
        "near_duplicate_rate": rate([float(r is not None) for r in near_duplicate_reasons(texts, jaccard)], seed),
        "texts": len(texts),
    }
    if embedding_model and len(texts) > 1:
        metrics["embedding_spread"] = embedding_spread(texts, embedding_model, seed)
    return metrics
