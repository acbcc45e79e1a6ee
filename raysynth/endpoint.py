"""An OpenAI-compatible endpoint as the engine of an LLM step (e.g. a hosted judge, or a model
served by `raysynth serve`): same input and output columns as `engine.VLLMStage`, so the stage
runner, store and parsers do not change. Requests of a batch go out concurrently.

A request the endpoint refuses as malformed (400, 413, 422) is the row's failure: rejected with
`endpoint_rejected`. Anything else is the machinery's (refused connection, timeout, 5xx, 429): the
client retries it with backoff (`endpoint.max_retries`), then the failed rows are sent again up to
`engine.batch_retries` times, and after that the batch fails (MachineryFailure) and the run stops
with nothing of it committed. A wrong key or model name (401, 403, 404) fails at once: no retry helps.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from raysynth.config import EngineConfig, SamplingConfig
from raysynth.faults import MachineryFailure

ROW_STATUSES = (400, 413, 422)
FATAL_STATUSES = (401, 403, 404)


class EndpointStage:
    """Callable class for `Dataset.map_batches`, like VLLMStage, calling `engine.endpoint`."""

    def __init__(self, engine: EngineConfig, model_dir: str, sampling: SamplingConfig,
                 regex: str | None = None, json_schema: dict | None = None):
        from openai import OpenAI

        endpoint = engine.endpoint
        key = os.environ.get(endpoint.api_key_env, "") if endpoint.api_key_env else ""
        self.client = OpenAI(base_url=endpoint.base_url, api_key=key or "none", timeout=endpoint.timeout_s,
                             max_retries=endpoint.max_retries)
        self.model, self.sampling, self.parallel = endpoint.model, sampling, endpoint.parallel_requests
        self.base_url, self.batch_retries = endpoint.base_url, engine.batch_retries
        # vLLM-based servers accept structured outputs in the request body; others may not.
        structured = None
        if sampling.structured and endpoint.structured_outputs and (regex or json_schema):
            structured = {"regex": regex} if regex else {"json": json_schema}
        self.extra_body = {"structured_outputs": structured} if structured else None

    def _one(self, messages_json: str) -> tuple[list[str], list[str], int, int, str] | Exception:
        """The reply's columns, a row rejection (last column set), or the machinery's exception."""
        import openai

        try:
            reply = self.client.chat.completions.create(
                model=self.model, messages=json.loads(messages_json), temperature=self.sampling.temperature,
                top_p=self.sampling.top_p, max_tokens=self.sampling.max_tokens, n=self.sampling.n,
                extra_body=self.extra_body)
        except openai.APIStatusError as exc:
            if exc.status_code in ROW_STATUSES:
                return [], [], 0, 0, f"endpoint_rejected: {exc.status_code}: {exc.message}"[:500]
            if exc.status_code in FATAL_STATUSES:
                raise MachineryFailure(f"{self.base_url} answered {exc.status_code} ({exc.message}); check "
                                       "endpoint.base_url, endpoint.model and the key") from None
            return exc
        except openai.APIError as exc:  # no answer: refused connection, timeout
            return exc
        usage = reply.usage
        return ([c.message.content or "" for c in reply.choices], [str(c.finish_reason) for c in reply.choices],
                usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0, "")

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        messages = list(batch["prompt_messages"])
        results: list = [None] * len(messages)
        pending = list(range(len(messages)))
        for attempt in range(self.batch_retries + 1):
            with ThreadPoolExecutor(self.parallel) as pool:
                for i, out in zip(pending, pool.map(self._one, [messages[i] for i in pending])):
                    results[i] = out
            pending = [i for i in pending if isinstance(results[i], Exception)]
            if not pending:
                break
            if attempt < self.batch_retries:
                time.sleep(min(30.0, 2.0 ** attempt))
        if pending:
            exc = results[pending[0]]
            raise MachineryFailure(f"{self.base_url}: {len(pending)} of {len(messages)} requests failed "
                                   f"{self.batch_retries + 1} times: {type(exc).__name__}: {exc}"[:500])
        result = batch.copy()
        columns = list(zip(*results)) or [()] * 5
        for column, values in zip(("completions", "finish_reasons", "tokens_in", "tokens_out", "engine_error"),
                                  columns):
            result[column] = list(values)
        return result
