"""A proxy in front of a real OpenAI-compatible server that misbehaves on purpose, for fault tests:
`refuse` (nothing listens), `fail` (the next N requests fail, alternately a 500 and a connection
dropped without an answer, then requests pass), `hang` (accept and never answer), `forward` (pass
everything). Counts what it did; runs its own event loop in a thread."""

from __future__ import annotations

import asyncio
import threading

import httpx
from aiohttp import web


class FlakyProxy:
    def __init__(self, upstream: str, port: int):
        self.upstream, self.port = upstream.rstrip("/"), port
        self.mode, self.failures_left = "refuse", 0
        self.seen = {"500": 0, "dropped": 0, "hung": 0, "forwarded": 0}
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.released = asyncio.Event()  # set when `hang` ends: hung handlers then answer 503
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def set(self, mode: str, failures: int = 0) -> None:
        """Switch behaviour; leaving `refuse` starts listening, entering it stops."""
        self.mode, self.failures_left = mode, failures
        if mode != "hang":
            self.loop.call_soon_threadsafe(self.released.set)
        listening = self.runner is not None
        if mode == "refuse" and listening:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        elif mode != "refuse" and not listening:
            asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> None:
        app = web.Application(client_max_size=8 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        await self.runner.cleanup()
        self.runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "hang":
            self.seen["hung"] += 1
            self.released.clear()
            await self.released.wait()  # long after the client gave up
            return web.json_response({"error": {"message": "was hanging", "type": "server_error"}}, status=503)
        if self.mode == "fail" and self.failures_left > 0:
            self.failures_left -= 1
            if self.failures_left % 2:
                self.seen["dropped"] += 1
                request.transport.abort()  # the connection ends with no answer at all
                return web.Response()
            self.seen["500"] += 1
            return web.json_response({"error": {"message": "injected failure", "type": "server_error"}}, status=500)
        self.seen["forwarded"] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with httpx.AsyncClient(timeout=300) as client:
            answer = await client.request(request.method, f"{self.upstream}{request.path_qs}",
                                          content=await request.read(), headers=headers)
        return web.Response(body=answer.content, status=answer.status_code,
                            content_type=answer.headers.get("content-type", "application/json").split(";")[0])

    def close(self) -> None:
        if self.runner is not None:
            self.set("refuse")
        self.loop.call_soon_threadsafe(self.loop.stop)
