"""Filters that decide what a recipe keeps. Pure functions; each returns, per input, None (keep)
or the countable reason it was dropped, so a stage can commit kept and rejected rows.

- preference gap: SynPO keeps (chosen, rejected) pairs whose score gap is at least the threshold
  (0.20 with PairRM, 0.02 with ArmoRM).
- repetition: SynPO drops responses "with over 50% repetition patterns"; the paper does not define
  the measure. Ours: the share of word 4-grams that repeat an earlier 4-gram of the same response
  (0 for text without any repeated phrase, near 1 for a loop). Short texts (< 4 words) score 0.
- ROUGE-L novelty (Self-Instruct): keep an instruction only if its ROUGE-L F1 against every kept one
  is below 0.7. Exact ROUGE-L against all kept items is quadratic, so a MinHash LSH index over word
  sets screens candidates first and exact ROUGE-L runs on those only. ROUGE-L >= 0.7 implies an LCS
  covering 70% of both texts, hence a word-set Jaccard of about 0.54 or more; the screen's Jaccard
  threshold (0.3 by default) leaves a wide margin, so it misses practically no true duplicate.
- MinHash near-duplicates: drop a text whose word-3-shingle Jaccard with a kept one is >= threshold.
- length and format: character and word bounds, and a regex the text must match.
- Self-Instruct's heuristics on instructions: a start with punctuation or a non-ASCII character, a
  blocked prefix ("Write a program"), a blocked word or phrase (image, graph, file, ...).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable

from datasketch import MinHash, MinHashLSH
from rouge_score import rouge_scorer, tokenizers

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def gap_reason(score_gap: float | None, threshold: float) -> str | None:
    if score_gap is None:
        return "unscored"
    return None if score_gap >= threshold else "gap_below_threshold"


def repetition_ratio(text: str, n: int = 4) -> float:
    tokens = words(text)
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def repetition_reason(text: str, max_ratio: float = 0.5) -> str | None:
    return "repetition" if repetition_ratio(text) > max_ratio else None


def length_reason(text: str, min_chars: int = 1, max_chars: int | None = None) -> str | None:
    size = len(text.strip())
    if size < min_chars:
        return "too_short"
    if max_chars is not None and size > max_chars:
        return "too_long"
    return None


def word_count_reason(text: str, min_words: int | None = None, max_words: int | None = None) -> str | None:
    count = len(text.split())
    if min_words is not None and count < min_words:
        return "too_few_words"
    if max_words is not None and count > max_words:
        return "too_many_words"
    return None


def start_reason(text: str) -> str | None:
    """Self-Instruct: drop a text starting with punctuation or a non-English (non-ASCII) character."""
    first = text.strip()[:1]
    return "bad_start" if not first or first in string.punctuation or not first.isascii() else None


def prefix_reason(text: str, prefixes: Iterable[str]) -> str | None:
    start = text.strip().lower()
    return "blocked_prefix" if any(start.startswith(p.lower()) for p in prefixes) else None


def blocklist_reason(text: str, blocked: Iterable[str]) -> str | None:
    """Whole-word (or whole-phrase) matches in any case, as Self-Instruct's `find_word_in_string`."""
    for phrase in blocked:
        if re.search(rf"\b{re.escape(phrase)}\b", text, re.IGNORECASE):
            return "blocked_word"
    return None


def format_reason(text: str, pattern: str) -> str | None:
    return None if re.search(pattern, text, re.DOTALL) else "bad_format"


def _minhash(tokens: Iterable[str], num_perm: int) -> MinHash:
    m = MinHash(num_perm=num_perm, seed=1)
    m.update_batch([t.encode() for t in tokens])
    return m


def rouge_novelty_reasons(texts: Iterable[str], threshold: float = 0.7, screen_jaccard: float = 0.3,
                          num_perm: int = 128, kept: Iterable[str] = ()) -> list[str | None]:
    """Greedy in order: each text is compared with the ones kept before it (and `kept`, e.g. seeds).
    Each text is tokenized once, as rouge-score does; a candidate's exact ROUGE-L (rouge-score's LCS)
    is computed only when the words the two share could reach the threshold: F1 = 2 LCS / (|a| + |b|)
    and the LCS is at most their shared words, counted with repeats (an exact bound, so the kept set is
    the one the all-pairs filter keeps; bench/filters.py checks it)."""
    tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)
    index = MinHashLSH(threshold=screen_jaccard, num_perm=num_perm)
    pool: list[tuple[list[str], Counter]] = []

    def add(tokens: list[str], signature: MinHash) -> None:
        index.insert(str(len(pool)), signature)
        pool.append((tokens, Counter(tokens)))

    def too_similar(tokens: list[str], counts: Counter, other: tuple[list[str], Counter]) -> bool:
        other_tokens, other_counts = other
        if not tokens or not other_tokens:
            return False  # rouge-score's F1 is 0 with no tokens
        shared = sum((counts & other_counts).values())
        if 2 * shared / (len(tokens) + len(other_tokens)) < threshold - 1e-9:
            return False
        return rouge_scorer._score_lcs(other_tokens, tokens).fmeasure >= threshold

    for text in kept:
        add(tokenizer.tokenize(text), _minhash(set(words(text)), num_perm))
    reasons: list[str | None] = []
    for text in texts:
        if not words(text):
            reasons.append("empty")
            continue
        signature = _minhash(set(words(text)), num_perm)
        tokens = tokenizer.tokenize(text)
        counts = Counter(tokens)
        if any(too_similar(tokens, counts, pool[int(c)]) for c in index.query(signature)):
            reasons.append("rouge_l_too_similar")
        else:
            reasons.append(None)
            add(tokens, signature)
    return reasons


def near_duplicate_reasons(texts: Iterable[str], threshold: float = 0.8, num_perm: int = 128,
                           shingle: int = 3) -> list[str | None]:
    index = MinHashLSH(threshold=threshold, num_perm=num_perm)
    reasons: list[str | None] = []
    for i, text in enumerate(texts):
        tokens = words(text)
        shingles = {" ".join(tokens[j:j + shingle]) for j in range(max(1, len(tokens) - shingle + 1))}
        signature = _minhash(shingles, num_perm)
        if index.query(signature):
            reasons.append("near_duplicate")
        else:
            reasons.append(None)
            index.insert(str(i), signature)
    return reasons
