"""SynPO's keyword lists (paper section 2.1, appendix C.1): three keywords from the same corpus
paragraph per list, different paragraphs across lists, lists with personal names or stopwords excluded.

Two streaming stages, neither collects rows on the driver:
  corpus files (JSONL / Parquet / text, local or object-store paths) --read as a Ray Dataset-->
  keyword pool: YAKE candidates per paragraph, 3 picked at random (seeded by the paragraph)  [once]
  --> per iteration: a disjoint hash band of the pool, minus lists with names or stopwords

Choices the paper leaves open (configurable in `KeywordConfig`): YAKE as the extractor, its top-10
candidates of up to 2 words as the pool a paragraph's 3 keywords are drawn from, and "personal name"
meaning a capitalised keyword that is a US-census first name ("Harry") or a first name followed by a
last name ("Daniel Radcliffe"); lists from PyPI `names` (MIT). A lone surname ("Bush", "Young") is
kept, since census surnames are full of common words; a first name that is also a word ("April")
costs a list, never quality.
"""

from __future__ import annotations

import functools
import importlib.util
import random
import re
from pathlib import Path
from typing import Any

import pandas as pd

from raysynth.hashing import row_id, sha256_hex
from raysynth.pipeline import Lineage, run_read_stage, run_stage
from raysynth.recipes.synpo.config import KeywordConfig
from raysynth.store import RunDir, StageDir

_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")


@functools.cache
def _extractor(max_ngram: int, candidates: int):
    import yake

    return yake.KeywordExtractor(lan="en", n=max_ngram, top=candidates, dedupLim=0.7)


@functools.cache
def stopwords() -> frozenset[str]:
    """YAKE's own English stopword list (the extractor already avoids them at candidate edges)."""
    import yake

    path = Path(yake.__file__).parent / "core" / "StopwordsList" / "stopwords_en.txt"
    return frozenset(w.strip().lower() for w in path.read_text(encoding="utf-8", errors="ignore").split())


@functools.cache
def census_names(kind: str) -> frozenset[str]:
    """'first' or 'last' names from PyPI `names` (US census lists), lower-cased, read from the
    package's files without importing it."""
    folder = Path(importlib.util.find_spec("names").origin).parent
    files = ("dist.male.first", "dist.female.first") if kind == "first" else ("dist.all.last",)
    return frozenset(line.split()[0].lower() for f in files for line in (folder / f).read_text().splitlines()
                     if line.strip())


def candidates(text: str, cfg: KeywordConfig) -> list[str]:
    """YAKE's best keywords of the paragraph (its first `max_words` words), best first."""
    words = text.split()
    text = " ".join(words[: cfg.max_words])
    return [keyword for keyword, _ in _extractor(cfg.max_ngram, cfg.candidates).extract_keywords(text)]


def keyword_reason(keyword: str) -> str | None:
    """Why a keyword excludes its list: 'stopword', 'personal_name', or None."""
    tokens = _WORD.findall(keyword)
    if not tokens or any(t.lower() in stopwords() for t in tokens):
        return "stopword"
    first, last = census_names("first"), census_names("last")
    if all(t[0].isupper() for t in tokens) and tokens[0].lower() in first and (
            len(tokens) == 1 or tokens[-1].lower() in last):
        return "personal_name"
    return None


def pick_keywords(found: list[str], count: int, key: str, seed: int) -> list[str]:
    """`count` of the paragraph's candidates at random, seeded by the paragraph so a re-run picks the same."""
    rng = random.Random(f"{seed}:{key}")
    return rng.sample(found, count)


def text_id(text: str) -> str:
    return sha256_hex(text, 16)


def unit_hash(*parts: Any) -> float:
    """A number in [0, 1) fixed by `parts`: deterministic sampling that survives re-runs."""
    return int(sha256_hex(":".join(map(str, parts)), 16), 16) / 2**64


def in_band(row_id: str, seed: int, iteration: int, fraction: float) -> bool:
    """Iteration t takes the pool's lists whose hash falls in [(t-1)f, tf) modulo 1, so iterations
    draw disjoint lists until the pool is used up, then wrap around."""
    start = ((iteration - 1) * fraction) % 1.0
    offset = (unit_hash(seed, row_id) - start) % 1.0
    return offset < fraction


def list_reason(keywords: list[str]) -> str | None:
    for keyword in keywords:
        reason = keyword_reason(str(keyword))
        if reason:
            return reason
    return None


def read_corpus(paths: list[str], text_column: str):
    """Corpus files as a Ray Dataset with `id` (hash of the text) and `text`: JSONL/JSON and Parquet
    by suffix (directories of them too), anything else as plain text, one paragraph per line."""
    import ray

    first = str(paths[0]).rstrip("/")
    if first.endswith((".jsonl", ".json", ".jsonl.gz")):
        ds = ray.data.read_json(paths)
    elif first.endswith(".parquet") or (Path(first).is_dir() and any(Path(first).glob("*.parquet"))):
        ds = ray.data.read_parquet(paths)
    else:
        ds = ray.data.read_text(paths)
        text_column = "text"

    def with_ids(batch: pd.DataFrame) -> pd.DataFrame:
        texts = batch[text_column].astype(str)
        texts = texts[texts.str.strip().str.len() > 0]
        return pd.DataFrame({"id": [text_id(t) for t in texts], "text": texts.tolist()})

    return ds.map_batches(with_ids, batch_format="pandas")


def _commit(stage_dir: str, name: str, lineage: Lineage, inputs: list[str], kept: list[dict], rejected: list[dict],
            rows_in: int) -> pd.DataFrame:
    base = lineage.columns(name)
    kept = [{**row, **base, "id": row_id(row["parent_id"], name, 0)} for row in kept]
    # A rejection's index is -1, or -1 - k for the k-th extra copy of a repeated input.
    rejected = [{**row, **base, "id": row_id(row["parent_id"], name, -1 - row.pop("copy", 0))} for row in rejected]
    reasons: dict[str, int] = {}
    for row in rejected:
        reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
    StageDir(stage_dir).commit_batch(inputs, pd.DataFrame(kept), pd.DataFrame(rejected),
                                     {"rows_in": rows_in, "rows_out": len(kept), "rejected": reasons,
                                      "tokens_in": 0, "tokens_out": 0})
    return pd.DataFrame([{"rows_in": len(inputs), "rows_out": len(kept)}])


def pool_and_commit(batch: pd.DataFrame, cfg: KeywordConfig, seed: int, stage_dir: str, lineage: Lineage) -> pd.DataFrame:
    """One block of distinct paragraphs -> a keyword list each (or a `too_few_keywords` rejection);
    each extra copy of a repeated paragraph is rejected as `duplicate_input`."""
    kept, rejected = [], []
    for pid, text, copies in zip(batch["id"], batch["text"], batch["copies"]):
        found = candidates(str(text), cfg)
        if len(found) < cfg.per_list:
            rejected.append({"parent_id": pid, "reason": "too_few_keywords", "raw": str(text)[:500]})
        else:
            kept.append({"parent_id": pid, "keywords": pick_keywords(found, cfg.per_list, pid, seed)})
        rejected += [{"parent_id": pid, "reason": "duplicate_input", "raw": str(text)[:500], "copy": k}
                     for k in range(1, int(copies))]
    return _commit(stage_dir, "keyword-pool", lineage, list(batch["id"]), kept, rejected, int(batch["copies"].sum()))


def sample_and_commit(batch: pd.DataFrame, fraction: float, seed: int, iteration: int, name: str,
                      stage_dir: str, lineage: Lineage) -> pd.DataFrame:
    """One block of the pool -> this iteration's lists in it, minus those with names or stopwords.
    Lists outside the iteration's band are named in the commit marker but neither kept nor counted."""
    kept, rejected, sampled = [], [], 0
    for lid, keywords in zip(batch["id"], batch["keywords"]):
        if not in_band(lid, seed, iteration, fraction):
            continue
        sampled += 1
        keywords = [str(k) for k in keywords]
        reason = list_reason(keywords)
        if reason:
            rejected.append({"parent_id": lid, "reason": reason, "raw": "; ".join(keywords)})
        else:
            kept.append({"parent_id": lid, "keywords": keywords})
    return _commit(stage_dir, name, lineage, list(batch["id"]), kept, rejected, sampled)


def corpus_fingerprint(paths: list[str]) -> list[tuple[str, int]]:
    """Local files by path and size (a changed corpus is a new pool); remote paths by name."""
    def size(path: Path) -> int:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size

    return [(p, -1) if "://" in p else (str(Path(p).resolve()), size(Path(p))) for p in paths]


def run_keyword_pool(run: RunDir, paths: list[str], text_column: str, cfg: KeywordConfig, seed: int,
                     lineage: Lineage) -> StageDir:
    """The keyword-list pool of a corpus, streamed from its files (paper: 1M paragraphs -> 1M lists)."""
    identity = {"corpus": corpus_fingerprint(paths), "text_column": text_column, "seed": seed,
                "keywords": cfg.model_dump(include={"per_list", "candidates", "max_ngram", "max_words"})}

    def add_ops(ds, stage: StageDir):
        return ds.map_batches(pool_and_commit, batch_format="pandas", batch_size=None,
                              fn_kwargs={"cfg": cfg, "seed": seed, "stage_dir": str(stage.path), "lineage": lineage})

    return run_read_stage(run, 0, "keyword-pool", identity, lambda: read_corpus(paths, text_column),
                          cfg.batch_size, f"{lineage.recipe}/keyword-pool", add_ops)


def run_keyword_sample(run: RunDir, iteration: int, pool: StageDir, wanted: int, cfg: KeywordConfig, seed: int,
                       lineage: Lineage, name: str = "keywords") -> StageDir:
    """About `wanted` x oversample lists of the pool for `iteration`, minus names and stopwords."""
    fraction = min(1.0, wanted * cfg.oversample / max(1, pool.rows_out()))
    identity = {"input": pool.name, "fraction": fraction, "seed": seed, "iteration": iteration}

    def add_ops(ds, stage: StageDir):
        return ds.map_batches(sample_and_commit, batch_format="pandas", batch_size=None,
                              fn_kwargs={"fraction": fraction, "seed": seed, "iteration": iteration, "name": name,
                                         "stage_dir": str(stage.path), "lineage": lineage})

    return run_stage(run, iteration, name, identity, pool, cfg.sample_batch_size, f"{lineage.recipe}/{name}", add_ops)
