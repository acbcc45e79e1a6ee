"""Every name, id, seed and checksum raysynth derives from content: the same in every process and run,
so that a resumed run finds its stages and rows. Changing one renames every existing run's stages
(tests/test_store.py pins them)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

import numpy as np


def sha256_hex(data: str | bytes, length: int) -> str:
    """The first `length` hex digits of the SHA-256 of `data` (text as UTF-8)."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:length]


def stable_hash(obj: Any, length: int = 10) -> str:
    return sha256_hex(json.dumps(obj, sort_keys=True, default=str), length)


def row_id(parent_id: str, stage: str, index: int) -> str:
    """Stable id of the `index`-th row a stage makes from `parent_id`."""
    return sha256_hex(f"{parent_id}/{stage}/{index}", 16)


def id_hash(row_id: str) -> int:
    """A stable 64-bit hash of a row id (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(row_id.encode(), digest_size=8).digest(), "little")


def id_hashes(ids: Iterable[str]) -> np.ndarray:
    return np.fromiter((id_hash(i) for i in ids), dtype=np.uint64)


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()
