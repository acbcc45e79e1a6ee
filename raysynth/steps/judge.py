"""LLM-as-judge steps on the vLLM stage: pointwise 1-10 scores and pairwise A/B verdicts.

Parsing is tolerant (`Score: 7`, `[[7]]`, `7/10`, `Rating: 7 out of 10`; `Winner: A`, `[[A]]`,
`Response A is better`), and a reply none of these match is a `Rejection`: counted, kept in the
rejected table, dropped. With structured outputs on (the default) the engine holds the model to
`Explanation: ...` then `Score: N` / `Winner: X`, which small models otherwise often miss.

Position swap: every pair is judged twice, (a, b) and (b, a) (`pairwise_rows`); `combine_pairwise`
calls a winner only when both orders agree and a tie otherwise.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from raysynth.config import JudgeConfig
from raysynth.steps import SHARED_PROMPTS, LLMStep, Messages, Rejection
from raysynth.steps.patterns import explanation_before

RECIPE = "judge"
PROMPTS = SHARED_PROMPTS / RECIPE
_SCORE_PATTERNS = [
    re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"),
    re.compile(r"(?:score|rating)\s*(?:is|of)?\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE),
    re.compile(r"\b(\d+(?:\.\d+)?)\s*(?:/|out of)\s*10\b", re.IGNORECASE),
    re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$"),
]
_WINNER_PATTERNS = [
    re.compile(r"\[\[\s*([AB])\s*\]\]"),
    re.compile(r"(?:winner|verdict|better response|answer)\s*(?:is)?\s*[:=]?\s*\**\s*(?:response\s*)?\(?([AB])\)?\b",
               re.IGNORECASE),
    re.compile(r"\bresponse\s*\(?([AB])\)?\s+is\s+(?:better|superior|preferred)", re.IGNORECASE),
    re.compile(r"^\s*\(?([AB])\)?\s*\.?\s*$"),
]


def build_pointwise(row: dict[str, Any], template: str) -> Messages:
    return [{"role": "user", "content": template.format(instruction=row["instruction"], response=row["response"])}]


def parse_score(text: str, scale: tuple[int, int] = (1, 10)) -> float:
    for pattern in _SCORE_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            value = float(matches[-1])  # the final verdict, after any restated examples
            if not scale[0] <= value <= scale[1]:
                raise Rejection("score_out_of_range", str(value))
            return value
    raise Rejection("unparseable", "no score")


def parse_pointwise(text: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"judge_score": parse_score(text), "judge_reply": text.strip()}]


def pointwise_regex(max_explanation_chars: int, guards: bool = True) -> str:
    return "Explanation: " + explanation_before("\nScore:", max_explanation_chars, guards) + r"\nScore: (10|[1-9])"


def pairwise_rows(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each (pair_id, instruction, a, b) twice: as shown (order 0) and swapped (order 1)."""
    rows = []
    for pair in pairs:
        rows.append({**pair, "order": 0, "response_a": pair["a"], "response_b": pair["b"]})
        rows.append({**pair, "order": 1, "response_a": pair["b"], "response_b": pair["a"]})
    return rows


def build_pairwise(row: dict[str, Any], template: str) -> Messages:
    return [{"role": "user", "content": template.format(
        instruction=row["instruction"], response_a=row["response_a"], response_b=row["response_b"])}]


def parse_winner(text: str) -> str:
    for pattern in _WINNER_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            return matches[-1].upper()
    raise Rejection("unparseable", "no verdict")


def parse_pairwise(text: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The verdict in terms of the original pair: 'a' or 'b', whatever order it was shown in."""
    shown = parse_winner(text)
    original = {("A", 0): "a", ("B", 0): "b", ("A", 1): "b", ("B", 1): "a"}[(shown, int(row["order"]))]
    return [{"judge_winner": original, "judge_reply": text.strip()}]


def pairwise_regex(max_explanation_chars: int, guards: bool = True) -> str:
    return "Explanation: " + explanation_before("\nWinner:", max_explanation_chars, guards) + r"\nWinner: (A|B)"


def combine_pairwise(verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per pair_id: winner 'a' / 'b' when both orders agree, else 'tie'; a pair with a
    verdict missing (dropped as unparseable) is 'incomplete'."""
    def decide(group: pd.DataFrame) -> str:
        seen = dict(zip(group["order"], group["judge_winner"]))
        if len(seen) < 2:
            return "incomplete"
        return seen[0] if seen[0] == seen[1] else "tie"

    if not len(verdicts):  # every verdict unparseable, or nothing judged
        return pd.DataFrame({"pair_id": pd.Series(dtype=str), "winner": pd.Series(dtype=str)})
    winners = verdicts.groupby("pair_id")[["order", "judge_winner"]].apply(decide)
    return winners.rename("winner").reset_index()


def picked_first_shown(verdicts: pd.DataFrame) -> list[int]:
    """Per parsed verdict, 1 when the judge picked the answer it was shown first, whichever model wrote
    it. A judge of the answers picks it about half the time over both orders; one that follows the
    position (a small model's habit) picks it nearly always, and both-orders judging turns its pairs
    into ties: a win rate near 0.5 then says nothing of the models."""
    return [int((winner == "a") == (int(order) == 0))
            for order, winner in zip(verdicts["order"], verdicts["judge_winner"])]


def judge_steps(cfg: JudgeConfig) -> dict[str, LLMStep]:
    chars = cfg.max_explanation_chars
    return {
        "pointwise": LLMStep("judge-pointwise", RECIPE, PROMPTS, "pointwise", build_pointwise, parse_pointwise,
                             cfg.pointwise, regex=pointwise_regex(chars, cfg.small_model_guards),
                             params={"chars": chars}),
        "pairwise": LLMStep("judge-pairwise", RECIPE, PROMPTS, "pairwise", build_pairwise, parse_pairwise,
                            cfg.pairwise, regex=pairwise_regex(chars, cfg.small_model_guards), params={"chars": chars}),
    }
