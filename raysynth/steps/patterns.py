"""Structured-output patterns that fix only what a parser needs: any text up to an end marker.

vLLM's regex grammars have no look-ahead, so "any text that does not contain MARKER" is spelt out as
the automaton that reads text while remembering how much of MARKER it has just seen: text may hold
brackets, new lines, code blocks, any script, and even a prefix of the marker, but never the marker.
"""

from __future__ import annotations

import re


def text_without(marker: str) -> str:
    """A regex for any text (empty too) in which `marker` does not occur. The marker's first character
    must not occur again inside it (true of every `[Name End]` marker), so that a partial match can
    only restart at that character."""
    first, rest = marker[0], marker[1:]
    if not rest or first in rest:
        raise ValueError(f"unsupported marker {marker!r}")
    c0 = _char(first)
    prefixes = ["".join(map(_char, rest[:m])) for m in range(len(rest))]  # the marker's tail read so far after c0
    # From "c0 seen" (state 1): read a partial tail, then c0 again (back to state 1) ...
    loop = "(?:" + "|".join(prefixes) + ")" + c0
    # ... or a character that is neither c0 nor the next one of the marker (back to the start).
    exits = "(?:" + "|".join(f"{p}[^{_class(first)}{_class(rest[m])}]" for m, p in enumerate(prefixes)) + ")"
    after_c0 = f"(?:{loop})*{exits}"
    ending = f"(?:{c0}(?:{loop})*(?:" + "|".join(prefixes) + "))?"  # text may end inside a partial marker
    return f"(?:[^{_class(first)}]|{c0}{after_c0})*{ending}"


def explanation_before(marker: str, max_chars: int, guards: bool) -> str:
    """An explanation that a verdict or score line (starting with `marker`) follows: with the
    small-model guards one line of 10 to `max_chars` characters, else any text without the marker."""
    return rf"[^\n]{{10,{max_chars}}}" if guards else text_without(marker)


# Control characters as escapes: vLLM's grammar compiler (xgrammar) refuses a raw new line inside a
# character class, and every request of a step whose pattern it refuses comes back empty.
_CONTROL = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _char(c: str) -> str:
    return _CONTROL.get(c) or re.escape(c)


def _class(c: str) -> str:
    """`c` escaped for use inside a character class."""
    return _CONTROL.get(c) or ("\\" + c if c in "\\]^-[" else c)
