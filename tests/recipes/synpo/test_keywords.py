"""SynPO's keyword lists on fixed text: YAKE candidates, the seeded pick, the exclusions, the
iteration bands (the pool and sample stages run in test_synpo_e2e.py and test_faults.py)."""

import pytest

from raysynth.recipes.synpo.config import KeywordConfig
from raysynth.recipes.synpo.keywords import (candidates, in_band, keyword_reason, list_reason, pick_keywords, text_id,
                                             unit_hash)

PARAGRAPH = ("The Amazon rainforest covers much of the Amazon basin of South America. The basin holds "
             "seven million square kilometres, of which rainforest covers five and a half million. "
             "Deforestation by cattle ranching and soybean farming threatens the rainforest ecosystem.")


def test_yake_candidates_are_phrases_of_the_paragraph():
    found = candidates(PARAGRAPH, KeywordConfig())
    assert 3 <= len(found) <= 10
    assert all(word.lower() in PARAGRAPH.lower() for keyword in found for word in keyword.split())


def test_pick_is_seeded_by_the_paragraph():
    found = ["a1", "b2", "c3", "d4", "e5"]
    assert pick_keywords(found, 3, "p1", 0) == pick_keywords(found, 3, "p1", 0)
    picks = {tuple(pick_keywords(found, 3, f"p{i}", 0)) for i in range(20)}
    assert len(picks) > 3 and all(len(set(p)) == 3 for p in picks)


@pytest.mark.parametrize("keyword, reason", [
    ("Daniel Radcliffe", "personal_name"), ("Harry", "personal_name"), ("the", "stopword"),
    ("machine learning", None), ("Pan American", None), ("London", None), ("Bush", None),
    ("harry", None),  # lower case: a word, not a name
])
def test_keyword_exclusion(keyword, reason):
    assert keyword_reason(keyword) == reason


def test_a_list_is_excluded_by_its_first_bad_keyword():
    assert list_reason(["soybean farming", "Daniel Radcliffe", "the"]) == "personal_name"
    assert list_reason(["soybean farming", "rainforest"]) is None


def test_iteration_bands_are_disjoint_and_about_the_fraction():
    ids = [f"id{i}" for i in range(4000)]
    bands = [{i for i in ids if in_band(i, 0, t, 0.1)} for t in (1, 2, 3)]
    assert all(320 < len(b) < 480 for b in bands)
    assert not bands[0] & bands[1] and not bands[1] & bands[2]
    assert {i for i in ids if in_band(i, 0, 1, 1.0)} == set(ids)
    assert bands[0] == {i for i in ids if in_band(i, 0, 11, 0.1)}  # wraps around after 1 / fraction


def test_paragraph_ids_and_draws_are_fixed_by_content():
    # Pinned values: a change here renames the pool's rows and moves every iteration's band.
    assert text_id("a paragraph") == "0ca6cc471ca5bab4" != text_id("a paragraph.")
    draws = [unit_hash("row", 0, i) for i in range(1000)]
    assert all(0 <= d < 1 for d in draws) and 0.45 < sum(draws) / len(draws) < 0.55
    assert unit_hash("row", 0, 1) == 0.27075334459020567 != unit_hash("row", 1, 1)
