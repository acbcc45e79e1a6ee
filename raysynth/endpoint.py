"""An OpenAI-compatible endpoint as the engine of an LLM step (e.g. a hosted judge, or a model
served by `raysynth serve`): same input and output columns as `engine.VLLMStage`, so the stage
runner, store and parsers do not change. Requests of a batch go out concurrently, each with its
own error: one failed request never fails its batch.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from raysynth.config import EngineConfig, SamplingConfig


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
        # vLLM-based servers accept structured outputs in the request body; others may not.
        structured = None
        if sampling.structured and endpoint.structured_outputs and (regex or json_schema):
            structured = {"regex": regex} if regex else {"json": json_schema}
        self.extra_body = {"structured_outputs": structured} if structured else None

    def _one(self, messages_json: str) -> tuple[list[str], list[str], int, int, str]:
        try:
            reply = self.client.chat.completions.create(
                model=self.model, messages=json.loads(messages_json), temperature=self.sampling.temperature,
                top_p=self.sampling.top_p, max_tokens=self.sampling.max_tokens, n=self.sampling.n,
                extra_body=self.extra_body)
        except Exception as exc:
            return [], [], 0, 0, f"endpoint_error: {type(exc).__name__}: {exc}"[:500]
        usage = reply.usage
        return ([c.message.content or "" for c in reply.choices], [str(c.finish_reason) for c in reply.choices],
                usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0, "")

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        with ThreadPoolExecutor(self.parallel) as pool:
            results = list(pool.map(self._one, batch["prompt_messages"]))
        result = batch.copy()
        columns = list(zip(*results)) or [()] * 5
        for column, values in zip(("completions", "finish_reasons", "tokens_in", "tokens_out", "engine_error"),
                                  columns):
            result[column] = list(values)
        return result
