"""Champion and challenger: a trained model becomes the run's current model only when it beats the
champion it faced.

Iteration 0's model is the first champion. After training, a recipe registers the new model as a
candidate (`challenge`), evaluates it against the champion on the same prompts (judged win rate, a
frozen judge, paired IFEval differences; raysynth/eval) and files the gate's verdict in the registry:
promoted, it is the new champion and `raysynth serve` switches to it; rejected, it stays registered
with the reason. `gate` is a pure function of the evaluation and the config's fields.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from raysynth.config import PromotionConfig, RunHeader
from raysynth.hashing import stable_hash
from raysynth.registry import record_decision, register_model
from raysynth.store import RunDir


@dataclass(frozen=True)
class Contender:
    name: str  # in the registry
    model: str  # as the run evaluates it: the initial model's name, or a trained model's directory
    iteration: int


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str


def _interval(m: dict[str, Any], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(m['value'])} [{f.format(m['low'])}, {f.format(m['high'])}] (n={m['n']})"


def _measured(m: dict[str, Any] | None) -> bool:
    return bool(m) and m.get("n", 0) > 0 and not math.isnan(m["low"])


def gate(result: dict[str, Any] | None, cfg: PromotionConfig) -> Verdict:
    """Promote or not, from an evaluation against the champion (`evaluate(..., baseline=champion)`);
    `result` None: the run has no evaluation."""
    if not cfg.gate:
        return Verdict(True, "promoted without a gate (promotion.gate: false)")
    if result is None:
        return Verdict(True, "promoted without a gate: the run has no eval section to gate on")
    passed, failed = [], []
    winrate = result.get("winrate") or {}
    win = winrate.get("win_rate")
    if not _measured(win):
        failed.append("no judged win rate against the champion (eval.winrate off, or no verdict parsed)")
    else:
        counts = f"{winrate['wins']}-{winrate['ties']}-{winrate['losses']} W-T-L"
        line = f"win rate {_interval(win)}, {counts}, judge {winrate.get('judge')}"
        ok = win["low"] > cfg.min_winrate
        (passed if ok else failed).append(f"{line}: lower bound {'above' if ok else 'not above'} {cfg.min_winrate}")
    differences = (result.get("paired") or {}).get("ifeval", {})
    for metric in cfg.ifeval_metrics:
        d = differences.get(metric)
        if not _measured(d):
            failed.append(f"no paired IFEval {metric} difference")
            continue
        ok = d["low"] >= -cfg.max_ifeval_drop
        (passed if ok else failed).append(
            f"IFEval {metric} difference {_interval(d, signed=True)}: "
            + (f"no drop beyond {cfg.max_ifeval_drop}" if ok else f"may drop more than {cfg.max_ifeval_drop}"))
    if failed:
        return Verdict(False, "rejected: " + "; ".join(failed))
    return Verdict(True, "promoted: " + "; ".join(passed))


def versus(result: dict[str, Any] | None, champion: Contender) -> dict[str, Any] | None:
    """What the registry keeps of an evaluation against the champion."""
    if result is None:
        return None
    return {"champion": champion.name, "winrate": result.get("winrate"),
            "ifeval": (result.get("paired") or {}).get("ifeval")}


def first_champion(run_dir: RunDir, recipe: str, model: str, model_dir: str) -> Contender:
    """Iteration 0's model, registered as the run's first champion (current, unless the run already has one)."""
    name = f"{recipe}-iter-00"
    register_model(run_dir.path, name, Path(model_dir), 0, lineage={"recipe": recipe},
                   reason="iteration 0")
    return Contender(name, model, 0)


def challenge(run_dir: RunDir, t: int, cfg: RunHeader, trained: Path, parent: str, data: Path,
              champion: Contender, frozen_judge: str, texts: list[str] | None = None) -> tuple[Contender, Verdict]:
    """Register `trained` (iteration `t`, trained from `parent` on `data`) as a candidate, evaluate it
    against `champion` (when the run has an `eval:` section) and file the gate's verdict. Returns the
    champion after the verdict, and the verdict."""
    from raysynth.eval import evaluate

    recipe = cfg.recipe
    name = f"{recipe}-iter-{t:02d}"
    lineage = {"recipe": recipe, "parent": parent, "training_data": str(data),
               "config_hash": stable_hash(cfg.model_dump(mode="json"), 12)}
    entry = register_model(run_dir.path, name, trained, t, make_current=False, lineage=lineage)
    result = None
    eval_cfg = getattr(cfg, "eval", None)
    if eval_cfg is not None:
        result = evaluate(run_dir, t, entry.path, cfg.engine, eval_cfg, baseline=champion.model, texts=texts,
                          baseline_iteration=champion.iteration, judge=frozen_judge)
    verdict = gate(result, cfg.promotion)
    record_decision(run_dir.path, name, verdict.promote, verdict.reason, versus(result, champion))
    print(f"[{name}] {verdict.reason}")
    return (Contender(name, entry.path, t) if verdict.promote else champion), verdict


def next_policy(cfg: PromotionConfig, trained: str, champion: Contender) -> str:
    """The model the next iteration synthesizes with."""
    return champion.model if cfg.next_policy == "champion" else trained


def stop_reason(cfg: PromotionConfig, without_promotion: int, started: float,
                generated_tokens: Callable[[], int] = lambda: 0) -> str | None:
    """Why the loop should stop before its next iteration, or None. `generated_tokens`: the run's
    tokens so far (asked only when a token budget is set)."""
    if cfg.patience is not None and without_promotion >= cfg.patience:
        return f"stopped: {without_promotion} iterations in a row without a promotion (promotion.patience)"
    minutes = (time.time() - started) / 60
    if cfg.max_minutes is not None and minutes >= cfg.max_minutes:
        return f"stopped: {minutes:.1f} minutes spent (promotion.max_minutes: {cfg.max_minutes})"
    if cfg.max_tokens is not None and (tokens := generated_tokens()) >= cfg.max_tokens:
        return f"stopped: {tokens:,} tokens generated (promotion.max_tokens: {cfg.max_tokens:,})"
    return None


def generated_tokens(run_dir: RunDir) -> int:
    """Tokens the run's LLM stages have generated: a committed stage's manifest total, else the sum over
    its committed batches."""
    return sum(int(stage.manifest().get("tokens_out", 0)) if stage.committed else stage.stats().tokens_out
               for stage in run_dir.stages())


@dataclass
class Ladder:
    """A recipe's promotion state, owned by its run: the champion, the frozen judge, and what the stop
    rules count (iterations since the last promotion, the start time). The one-shot recipes (Condor,
    REFED) climb once."""
    run_dir: RunDir
    cfg: RunHeader
    champion: Contender
    frozen_judge: str
    started: float = field(default_factory=time.time)
    without_promotion: int = 0

    def stop(self) -> str | None:
        """Why the loop stops before its next iteration, or None: the iteration starts, and counts as
        one without a promotion until a candidate is promoted."""
        reason = stop_reason(self.cfg.promotion, self.without_promotion, self.started,
                             lambda: generated_tokens(self.run_dir))
        if reason is None:
            self.without_promotion += 1
        return reason

    def climb(self, t: int, trained: Path, parent: str, data: Path,
              texts: list[str] | None = None) -> tuple[str, dict[str, Any]]:
        """`challenge` the champion with iteration `t`'s model. Returns the model the next iteration
        synthesizes with, and what the iteration's summary records of the verdict."""
        self.champion, verdict = challenge(self.run_dir, t, self.cfg, trained, parent, data, self.champion,
                                           self.frozen_judge, texts)
        if verdict.promote:
            self.without_promotion = 0
        model = str(trained.resolve())
        return (next_policy(self.cfg.promotion, model, self.champion),
                {"model": model, "promoted": verdict.promote, "verdict": verdict.reason})
