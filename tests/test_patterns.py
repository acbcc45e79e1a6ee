"""`text_without`: any text but the marker, checked against a plain substring test."""

import itertools
import re

import pytest

from raysynth.steps.patterns import text_without


@pytest.mark.parametrize("marker", ["[Question End]", "[End]", "\nInput:"])
def test_text_without_a_marker_is_exactly_the_texts_that_lack_it(marker):
    pattern = re.compile(text_without(marker))
    alphabet = sorted(set(marker)) + ["x", "\n"]
    # Every short text over the marker's own characters, and texts around the whole marker.
    texts = ["".join(t) for n in range(6) for t in itertools.product(alphabet[:5], repeat=n)]
    fragments = [marker[:i] for i in range(len(marker) + 1)] + [marker[i:] for i in range(len(marker))] + ["x"]
    texts += ["".join(pair) for pair in itertools.product(fragments, repeat=2)]  # partial markers meeting
    texts += [marker, "a" + marker, marker + "b", marker[:-1], marker[0] + marker, marker[:3] + marker[1:],
              "see [1] and [Question] or [Question En]d.\n```py\nx = [1, 2]\n```", "用中文写一个问题。"]
    for text in texts:
        assert bool(pattern.fullmatch(text)) == (marker not in text), repr(text)


def test_markers_that_repeat_their_first_character_are_refused():
    with pytest.raises(ValueError):
        text_without("abca")
