"""The Ray Serve deployment: an OpenAI-compatible API over vLLM that follows a run's current model.

Routes: GET /v1/models, POST /v1/chat/completions and /v1/completions (both with `stream: true` as
server-sent events), GET /health; admin, behind its own key: POST /admin/swap, GET /admin/status.

Hot swap without failed requests: a replica keeps one *slot* per loaded model (name, engine, requests
in flight). A background task polls the run's registry (models.json); when its current model changes,
the replica loads the new one beside the current one and runs one test generation (requests keep
flowing to the old engine meanwhile), points new requests at it, and shuts the old engine down only
once its last in-flight request has finished (or keeps it addressable by name, `keep_previous`). A
model that fails to load or to generate is refused: the old one keeps serving and /admin/status names
the failure. A replica starting on a registry whose current model is broken serves the most recent
earlier current model that loads, so a bad pointer never makes replicas crash-loop. Requests for the
alias (`current`) always get the newest model, and every response names the model that produced it.

Self-healing: Serve calls `check_health`, which asks the current engine; a replica whose engine died
fails it and is replaced (3 failed checks, `health_check_period_s` apart). Requests caught in it get
a 503 at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve

from raysynth.config import ServeConfig
from raysynth.registry import ModelEntry, read_registry
from raysynth.serve import api
from raysynth.serve.keys import bearer_matches, is_loopback, read_key, where_keys_go

log = logging.getLogger(__name__)
SMOKE_TIMEOUT_S = 120
RETIRE_WAIT_S = 600  # a stream whose client left before it started is never counted out: stop waiting

app = FastAPI(title="raysynth", description="OpenAI-compatible API for the current iteration's model")


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(api.error_body(exc.message, exc.kind, exc.status), status_code=exc.status)


class SwapRefused(Exception):
    """A model that did not load or did not pass its test generation; the old model keeps serving."""


@dataclass
class Slot:
    name: str
    path: str
    engine: Any
    tokenizer: Any
    in_flight: int = 0


def read_current(run_dir: Path) -> ModelEntry | None:
    try:
        return read_registry(run_dir).current_entry()
    except (OSError, ValueError):
        return None  # caught mid-replace on storage without atomic rename: the next poll sees it


def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    # OpenAI answers 400 (not FastAPI's 422) for a malformed body, a bad role or a bad value.
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise ApiError(400, problems, "invalid_request_error") from None


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


@serve.deployment
@serve.ingress(app)
class ModelServer:
    async def __init__(self, cfg: ServeConfig, run_dir: str):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.api_key = read_key(cfg.api_key_env, cfg.api_key_file)
        self.exposed = not is_loopback(cfg.host)
        self.failures: dict[str, dict[str, Any]] = {}  # model name -> what failed to load, and why
        self.retiring: list[Slot] = []  # displaced engines not yet shut down (waiting for their last request)
        self.switching = asyncio.Lock()
        registry = read_registry(self.run_dir)
        first = registry.current_entry()
        if first is None:
            raise RuntimeError(f"{self.run_dir}/models.json: no current model to serve")
        self.pointer = (first.name, first.path, first.registered_at)
        for entry in [first, *registry.fallbacks()]:
            try:
                self.current = await self._load(entry)
                break
            except Exception as exc:
                self._failed(entry, exc if isinstance(exc, SwapRefused) else SwapRefused(short(exc)))
        else:
            raise RuntimeError(f"no model registered in {self.run_dir} loads: {self.failures}")
        self.slots: dict[str, Slot] = {self.current.name: self.current}
        self.follower = asyncio.get_running_loop().create_task(self._follow())

    async def _load(self, entry: ModelEntry) -> Slot:
        """Load beside whatever serves now, and generate once; SwapRefused if either fails."""
        from raysynth.engine import smoke_generate, start_async_engine
        from raysynth.models import check_checkpoint

        try:
            await asyncio.to_thread(check_checkpoint, entry.path)
            engine = await asyncio.to_thread(start_async_engine, self.cfg.engine, entry.path)
        except Exception as exc:
            raise SwapRefused(f"{entry.name} does not load: {short(exc)}") from exc
        try:
            tokenizer = engine.get_tokenizer()
            await asyncio.wait_for(smoke_generate(engine, tokenizer), SMOKE_TIMEOUT_S)
        except Exception as exc:
            await asyncio.to_thread(engine.shutdown)
            raise SwapRefused(f"{entry.name} loaded but its test generation failed: {short(exc)}") from exc
        return Slot(entry.name, entry.path, engine, tokenizer)

    def _failed(self, entry: ModelEntry, exc: SwapRefused) -> None:
        log.error("%s", exc)
        self.failures[entry.name] = {"path": entry.path, "registered_at": entry.registered_at, "error": str(exc),
                                     "at": time.time()}

    def _wants(self, entry: ModelEntry) -> bool:
        """A switch to `entry` is due: it is not what serves now, and it has not already failed as is."""
        failed = self.failures.get(entry.name, {})
        return ((entry.name, entry.path) != (self.current.name, self.current.path)
                and (failed.get("path"), failed.get("registered_at")) != (entry.path, entry.registered_at))

    async def _follow(self) -> None:
        while True:
            async with self.switching:  # read under the lock: an admin swap writes the registry inside it
                entry = await asyncio.to_thread(read_current, self.run_dir)
                pointer = entry and (entry.name, entry.path, entry.registered_at)
                if pointer != self.pointer:  # the registry moved: a model that failed here gets another try
                    self.pointer = pointer
                    if entry:
                        self.failures.pop(entry.name, None)
                if entry and self._wants(entry):
                    try:
                        await self._switch(entry)
                    except SwapRefused as exc:
                        self._failed(entry, exc)
                    except Exception as exc:  # the follower must outlive anything one switch meets
                        self._failed(entry, SwapRefused(f"switching to {entry.name} failed: {short(exc)}"))
            await asyncio.sleep(self.cfg.poll_s)

    async def _switch(self, entry: ModelEntry) -> None:
        """Serve `entry` from now on: a model still loaded under that name and path is reused (a
        rollback within keep_previous); a same-name slot on another path, and the oldest models
        beyond keep_previous, are retired once idle."""
        kept = self.slots.get(entry.name)
        new = kept if kept and kept.path == entry.path else await self._load(entry)
        old, self.current = self.current, new
        self.slots.pop(new.name, None)
        others = list(self.slots.values())  # oldest first
        self.slots[new.name] = new
        retire = ([kept] if kept and kept is not new else []) + others[: max(0, len(others) - self.cfg.keep_previous)]
        for slot in retire:
            if self.slots.get(slot.name) is slot:
                del self.slots[slot.name]
            self.retiring.append(slot)  # before the task runs: /admin/status shows it from now on
            asyncio.get_running_loop().create_task(self._retire(slot))
        self.failures.pop(entry.name, None)
        log.info("now serving %s (was %s)", new.name, old.name)

    async def _retire(self, slot: Slot) -> None:
        waited = 0.0
        try:
            while slot.in_flight and waited < RETIRE_WAIT_S:
                await asyncio.sleep(0.1)
                waited += 0.1
            await asyncio.to_thread(slot.engine.shutdown)
        finally:
            self.retiring.remove(slot)

    async def check_health(self) -> None:
        """Serve's health check: raises when the current engine is dead, so Serve replaces this replica."""
        await self.current.engine.check_health()

    # --- request plumbing ---------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        if self.api_key:
            if not bearer_matches(request.headers.get("authorization", ""), self.api_key):
                raise ApiError(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")
        elif self.exposed:  # the driver refuses this; a node without the key must fail closed too
            raise ApiError(401, f"this server listens on {self.cfg.host} but this node has no API key: "
                           f"{where_keys_go(self.cfg.api_key_env, self.cfg.api_key_file, 'api')}",
                           "authentication_error")

    def _authorize_admin(self, request: Request) -> None:
        key = read_key(self.cfg.admin_key_env, self.cfg.admin_key_file)  # read each time: rotatable
        if not key:
            raise ApiError(403, "admin routes are off: no admin key is configured; to turn them on, "
                           f"{where_keys_go(self.cfg.admin_key_env, self.cfg.admin_key_file, 'admin')}",
                           "permission_error")
        if not bearer_matches(request.headers.get("authorization", ""), key):
            raise ApiError(401, "missing or wrong admin key (Authorization: Bearer ...)", "authentication_error")

    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        limit = self.cfg.max_body_bytes
        too_big = ApiError(413, f"request body is over this server's limit of {limit} bytes", "invalid_request_error")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise too_big
        return parse_body(model, bytes(raw))

    def _take(self, model: str) -> Slot:
        """The slot serving `model`, counted in flight at once so it cannot be retired under the request."""
        if model == self.cfg.current_alias:
            slot = self.current
        elif model in self.slots:
            slot = self.slots[model]
        else:
            raise ApiError(404, f"model {model!r} is not served here; see /v1/models", "not_found_error")
        slot.in_flight += 1
        return slot

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

    def _unavailable(self, slot: Slot, exc: Exception) -> ApiError | None:
        if slot.engine.errored:
            return ApiError(503, f"the engine serving {slot.name} died ({short(exc)}); this replica is being "
                            "replaced: retry shortly", "service_unavailable")
        return None

    async def _answer(self, request: Request, body_model: type[BaseModel], chat: bool):
        """Authorize, read and check the request, and generate; the slot stays in flight until the
        answer (or the stream) ends."""
        from raysynth.engine import chat_token_ids, request_params, token_prompt

        self._authorize(request)
        body = await self._body(request, body_model)
        slot = self._take(body.model)
        streaming = False
        try:
            if chat:
                messages = [m.model_dump() for m in body.messages]
                ids = await asyncio.to_thread(chat_token_ids, slot.tokenizer, messages)
            else:
                prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
                if len(prompts) != 1:
                    raise ApiError(400, "send one prompt per request", "invalid_request_error")
                ids = await asyncio.to_thread(slot.tokenizer.encode, prompts[0])
            budget = self._check(body, ids)
            if slot.engine.errored:
                raise self._unavailable(slot, RuntimeError("engine is dead"))
            params = request_params(body.temperature, body.top_p, budget, body.n, body.stops(), body.stream,
                                    body.min_tokens)
            request_id = api.new_id("chatcmpl" if chat else "cmpl")
            outputs = slot.engine.generate(token_prompt(ids), params, request_id)
            if body.stream:
                streaming = True
                return StreamingResponse(self._stream(slot, outputs, request_id, chat), media_type="text/event-stream")
            final = None
            try:
                async for final in outputs:
                    pass
            except Exception as exc:
                raise self._unavailable(slot, exc) or exc
        finally:
            if not streaming:
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
        except Exception as exc:  # the status line is sent: an error event, as OpenAI streams them
            error = self._unavailable(slot, exc) or ApiError(500, short(exc), "server_error")
            yield api.sse(api.error_body(error.message, error.kind, error.status))
        finally:
            slot.in_flight -= 1

    # --- routes -------------------------------------------------------------------------------

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        try:
            await self.check_health()
        except Exception as exc:
            raise ApiError(503, f"engine unavailable: {short(exc)}", "service_unavailable") from None
        return {"status": "ok", "model": self.current.name}

    @app.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        order = [self.current] + [s for s in self.slots.values() if s is not self.current]
        return {"object": "list", "data": [{"id": s.name, "object": "model", "owned_by": "raysynth"} for s in order]}

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._answer(request, api.ChatRequest, chat=True)

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._answer(request, api.CompletionRequest, chat=False)

    @app.post("/admin/swap")
    async def swap(self, request: Request) -> dict[str, Any]:
        """Serve a registered model: this replica loads it and generates once, then the registry points
        at it and the other replicas follow within `poll_s`. 400: not registered; 422: it did not load
        or generate (the old model keeps serving)."""
        from raysynth.registry import make_current

        self._authorize_admin(request)
        body = await self._body(request, api.SwapRequest)
        entry = (await asyncio.to_thread(read_registry, self.run_dir)).models.get(body.model)
        if entry is None:
            raise ApiError(400, f"{body.model!r} is not a model registered in the run; register a directory on "
                           "the driver with `raysynth models add DIR --name NAME --run-dir RUN_DIR`",
                           "invalid_request_error")
        async with self.switching:
            if (entry.name, entry.path) != (self.current.name, self.current.path):
                try:
                    await self._switch(entry)
                except Exception as exc:
                    refused = exc if isinstance(exc, SwapRefused) else SwapRefused(short(exc))
                    self._failed(entry, refused)
                    raise ApiError(422, f"swap refused: {refused}; still serving {self.current.name}",
                                   "swap_refused") from None
            await asyncio.to_thread(make_current, self.run_dir, entry.name)
        return {"current": entry.name, "iteration": entry.iteration}

    @app.get("/admin/status")
    async def status(self, request: Request) -> dict[str, Any]:
        self._authorize_admin(request)
        pointer = await asyncio.to_thread(read_current, self.run_dir)
        return {"current": self.current.name, "registry_current": pointer.name if pointer else None,
                "loaded": {s.name: {"path": s.path, "in_flight": s.in_flight} for s in self.slots.values()},
                "retiring": [{"name": s.name, "path": s.path, "in_flight": s.in_flight} for s in self.retiring],
                "failures": self.failures}
