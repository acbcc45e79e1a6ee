"""Failures of the machinery, as opposed to failures of a row.

A row's own failure (a prompt too long for the model, an unparseable reply, a request the endpoint
rejects as malformed) is committed as a rejected row with its reason. A failure of the machinery (an
engine or actor that died or hangs, an endpoint that is unreachable or answers 5xx/429, a scorer that
fails on every row) says nothing about the rows: the batch is redone, a bounded number of times, and
is never committed as rejections. When the retries are spent the stage stops the run (StageFailed)
with what it committed so far intact, and a re-run resumes it.
"""

from __future__ import annotations

# Ray Data actor pools of HF models (reward models, self-statistics): a dead actor is restarted and
# its batch redone this many times before the stage fails (Ray Data's own default is unbounded).
ACTOR_POOL_RETRIES = {"max_restarts": 3, "max_task_retries": 3}


class MachineryFailure(Exception):
    """The engine, an actor or an endpoint failed a batch: redo it, never reject its rows."""


class StageFailed(Exception):
    """A stage's batch failed past its retries; what was committed stays, a re-run resumes."""


def root_message(exc: BaseException) -> str:
    """The first line of the innermost MachineryFailure under Ray's wrappers (or of `exc` itself)."""
    seen, found = exc, None
    for _ in range(20):
        if isinstance(seen, MachineryFailure):
            found = seen
        following = getattr(seen, "cause", None) or seen.__cause__
        if not isinstance(following, BaseException) or following is seen:
            break
        seen = following
    chosen = found or seen
    text = str(chosen.args[0] if chosen.args else chosen).strip().splitlines()
    return f"{type(chosen).__name__}: {text[0] if text else ''}"[:600]
