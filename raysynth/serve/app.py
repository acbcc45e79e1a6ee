"""The Ray Serve deployment: an OpenAI-compatible API over vLLM that follows a run's current model.

Routes: GET /v1/models, POST /v1/chat/completions and /v1/completions (both with `stream: true` as
server-sent events), GET /health, POST /admin/swap, GET /admin/status.

Hot swap without failed requests: a replica keeps one *slot* per loaded model (name, engine, requests
in flight). A background task polls the run's current_model.json; when it names a new checkpoint, the
replica loads it beside the current one (requests keep flowing to the old engine meanwhile), points new
requests at it, and shuts the old engine down only once its last in-flight request has finished
(or keeps it addressable by name, `keep_previous`). Requests for the alias (`current`) always get the
newest model, and every response names the model that produced it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from raysynth.config import ServeConfig
from raysynth.serve import api

log = logging.getLogger(__name__)
POINTER = "current_model.json"

app = FastAPI(title="raysynth", description="OpenAI-compatible API for the current iteration's model")


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(api.error_body(exc.message, exc.kind, exc.status), status_code=exc.status)


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    # OpenAI answers 400 (not FastAPI's 422) for a malformed body, a bad role or a bad value.
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                         for e in exc.errors())
    return JSONResponse(api.error_body(problems, "invalid_request_error", 400), status_code=400)


@dataclass
class Slot:
    name: str
    path: str
    engine: Any
    tokenizer: Any
    in_flight: int = 0


def read_pointer(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or caught mid-replace on storage without atomic rename


@serve.deployment
@serve.ingress(app)
class ModelServer:
    async def __init__(self, cfg: ServeConfig, run_dir: str):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.api_key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        target = read_pointer(self.run_dir / POINTER)
        if target is None:
            raise RuntimeError(f"{self.run_dir / POINTER}: no current model to serve")
        self.current = await self._load(target)
        self.slots: dict[str, Slot] = {self.current.name: self.current}
        self.failed_path: str | None = None
        self.follower = asyncio.get_running_loop().create_task(self._follow())

    async def _load(self, target: dict[str, Any]) -> Slot:
        from raysynth.engine import start_async_engine

        engine = await asyncio.to_thread(start_async_engine, self.cfg.engine, target["path"])
        return Slot(target["name"], target["path"], engine, engine.get_tokenizer())

    async def _follow(self) -> None:
        while True:
            target = read_pointer(self.run_dir / POINTER)
            if target and target["path"] not in (self.current.path, self.failed_path):
                try:
                    await self._switch(target)
                except Exception:  # a checkpoint that does not load must not take the server down
                    log.exception("could not load %s; still serving %s", target["path"], self.current.name)
                    self.failed_path = target["path"]
            await asyncio.sleep(self.cfg.poll_s)

    async def _switch(self, target: dict[str, Any]) -> None:
        new = await self._load(target)
        old, self.current = self.current, new
        self.slots[new.name] = new
        kept = [s for s in self.slots.values() if s is not new]
        retire = kept[: max(0, len(kept) - self.cfg.keep_previous)]  # oldest first
        for slot in retire:
            if self.slots.get(slot.name) is slot:
                del self.slots[slot.name]
            asyncio.get_running_loop().create_task(self._retire(slot))
        log.info("now serving %s (was %s)", new.name, old.name)

    async def _retire(self, slot: Slot) -> None:
        while slot.in_flight:
            await asyncio.sleep(0.1)
        await asyncio.to_thread(slot.engine.shutdown)

    # --- request plumbing ---------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        if not self.api_key:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")

    def _slot(self, model: str) -> Slot:
        if model == self.cfg.current_alias:
            return self.current
        if model in self.slots:
            return self.slots[model]
        raise ApiError(404, f"model {model!r} is not served here; see /v1/models", "not_found_error")

    def _check(self, body: api.ChatRequest | api.CompletionRequest, ids: list[int]) -> int:
        budget = body.token_budget(self.cfg.max_tokens_limit)
        if budget > self.cfg.max_tokens_limit:
            raise ApiError(400, f"max_tokens {budget} is over this server's limit {self.cfg.max_tokens_limit}",
                           "invalid_request_error")
        if body.min_tokens > budget:
            raise ApiError(400, f"min_tokens {body.min_tokens} is over max_tokens {budget}", "invalid_request_error")
        if body.n > self.cfg.max_n:
            raise ApiError(400, f"n {body.n} is over this server's limit {self.cfg.max_n}", "invalid_request_error")
        if len(ids) + budget > self.cfg.engine.max_model_len:
            raise ApiError(400, f"prompt ({len(ids)} tokens) plus max_tokens ({budget}) exceeds the context "
                           f"length {self.cfg.engine.max_model_len}", "invalid_request_error")
        return budget

    async def _respond(self, slot: Slot, body, ids: list[int], chat: bool):
        from raysynth.engine import request_params, token_prompt

        budget = self._check(body, ids)
        params = request_params(body.temperature, body.top_p, budget, body.n, body.stops(), body.stream,
                                body.min_tokens)
        request_id = api.new_id("chatcmpl" if chat else "cmpl")
        outputs = slot.engine.generate(token_prompt(ids), params, request_id)
        slot.in_flight += 1
        if body.stream:
            return StreamingResponse(self._stream(slot, outputs, request_id, chat), media_type="text/event-stream")
        try:
            final = None
            async for final in outputs:
                pass
        finally:
            slot.in_flight -= 1
        texts = [o.text for o in final.outputs]
        finishes = [str(o.finish_reason) for o in final.outputs]
        completion_tokens = sum(len(o.token_ids) for o in final.outputs)
        make = api.chat_body if chat else api.completion_body
        return make(request_id, slot.name, texts, finishes, len(ids), completion_tokens)

    async def _stream(self, slot: Slot, outputs: AsyncIterator, request_id: str, chat: bool) -> AsyncIterator[str]:
        try:
            if chat:
                yield api.sse(api.chat_chunk(request_id, slot.name, 0, {"role": "assistant", "content": ""}, None))
            async for out in outputs:
                for o in out.outputs:
                    finish = str(o.finish_reason) if o.finish_reason else None
                    if o.text or finish:
                        chunk = (api.chat_chunk(request_id, slot.name, o.index, {"content": o.text}, finish) if chat
                                 else api.completion_chunk(request_id, slot.name, o.index, o.text, finish))
                        yield api.sse(chunk)
            yield api.SSE_DONE
        finally:
            slot.in_flight -= 1

    # --- routes -------------------------------------------------------------------------------

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        await self.current.engine.check_health()
        return {"status": "ok", "model": self.current.name}

    @app.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        order = [self.current] + [s for s in self.slots.values() if s is not self.current]
        return {"object": "list", "data": [{"id": s.name, "object": "model", "owned_by": "raysynth", "root": s.path}
                                           for s in order]}

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request, body: api.ChatRequest):
        from raysynth.engine import chat_token_ids

        self._authorize(request)
        slot = self._slot(body.model)
        ids = chat_token_ids(slot.tokenizer, [m.model_dump() for m in body.messages])
        return await self._respond(slot, body, ids, chat=True)

    @app.post("/v1/completions")
    async def completions(self, request: Request, body: api.CompletionRequest):
        self._authorize(request)
        slot = self._slot(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, "send one prompt per request", "invalid_request_error")
        return await self._respond(slot, body, slot.tokenizer.encode(prompts[0]), chat=False)

    @app.post("/admin/swap", status_code=202)
    async def swap(self, request: Request, body: api.SwapRequest) -> dict[str, str]:
        """Point the run at a checkpoint; every replica follows within `poll_s` seconds."""
        from raysynth.serve import point_run_at

        self._authorize(request)
        try:
            entry = await asyncio.to_thread(point_run_at, self.run_dir, body.model, body.name)
        except Exception as exc:
            raise ApiError(400, f"cannot serve {body.model!r}: {exc}", "invalid_request_error") from None
        return {"switching_to": entry["name"], "path": entry["path"]}

    @app.get("/admin/status")
    async def status(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return {"current": self.current.name, "loaded": {s.name: {"path": s.path, "in_flight": s.in_flight}
                                                         for s in self.slots.values()}}
