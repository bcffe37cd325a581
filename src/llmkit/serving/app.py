"""The HTTP layer: an OpenAI-compatible FastAPI app over the engine.

Every request first passes :class:`Guard` (plain ASGI): path normalisation, deny-by-default API
key check, body-size limit, draining, and the request counter. Every error, whatever caused it,
is the OpenAI error object with a 4xx/5xx status and no stack trace or file path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import posixpath
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmkit.config.schema import GenerateConfig, ServeConfig
from llmkit.serving.engine import Engine, EngineError, Handle, Overloaded
from llmkit.serving.metrics import Metrics
from llmkit.serving.toolcalls.use import ToolStream
from llmkit.serving.protocol import (AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk,
                                   ChatCompletionRequest, ChatCompletionResponse, CompletionChoice, CompletionRequest,
                                   EngineRequest, Entry, TokenText, chat_logprobs, completion_logprobs,
                                   CompletionResponse, RequestError, Usage, error_body)

log = logging.getLogger("llmkit.serving")
ALLOW_UNAUTHENTICATED = frozenset({"/health", "/ready", "/"})
"""Routes reachable without the API key: the probes of Kubernetes and SkyServe (they reveal only a
status) and the chat page (it holds no data; it asks for the key and sends it with each request).
Every other route requires it (deny by default)."""
ROUTES = ("/", "/health", "/ready", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions",
          "/v1/load_lora_adapter", "/v1/unload_lora_adapter")


class ApiError(Exception):
    """An error answered as the OpenAI error object."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.kind, self.param, self.code), self.status, self.headers)


@dataclass
class State:
    """What the routes share."""

    engine: Engine
    tokenizer: Any
    model_name: str
    defaults: GenerateConfig
    config: ServeConfig
    api_key: str | None = None
    metrics: Metrics = field(default_factory=Metrics)
    ready: bool = True
    draining: bool = False
    in_flight: int = 0
    max_token_bytes: int = 64
    token_text: Any = None  # TokenText over the tokenizer (set in create_app)
    adapters: dict[str, int] = field(default_factory=dict)  # the LoRA adapters requests may name, and their slots


def canonical_path(raw: str) -> str:
    """The path an auth decision is made on: percent-decoded, '//' and '..' resolved, no trailing '/'."""
    path = posixpath.normpath("/" + unquote(raw).replace("\\", "/"))
    return "/" + path.lstrip("/") if path != "/" else "/"


class Guard:
    """ASGI middleware: auth, size limit, draining and request metrics, before any routing."""

    def __init__(self, app: Any, state: State):
        self.app, self.state = app, state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = canonical_path(scope.get("path", "/"))
        route = path if path in ROUTES else "other"
        status_box = {"status": 500}

        async def send_recording(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
            await send(message)

        try:
            problem = self._check(scope, path)
            if problem is not None:
                await problem.response()(scope, receive, send_recording)
                return
            await self.app(scope, self._limited(receive), send_recording)
        finally:
            self.state.metrics.request_done(route, status_box["status"])

    def _check(self, scope: dict[str, Any], path: str) -> ApiError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.state.api_key is not None and path not in ALLOW_UNAUTHENTICATED:
            given = headers.get("authorization", "")
            token = given[7:] if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), self.state.api_key.encode()):
                return ApiError(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                                "authentication_error", code="invalid_api_key")
        if self.state.draining and path != "/health":
            return ApiError(503, "the server is shutting down", "service_unavailable")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.state.config.max_body_bytes):
            return ApiError(413, f"request body over {self.state.config.max_body_bytes} bytes", code="body_too_large")
        return None

    def _limited(self, receive: Any) -> Any:
        limit = self.state.config.max_body_bytes
        return limited(receive, limit, lambda: ApiError(413, f"request body over {limit} bytes", code="body_too_large"))


def limited(receive: Any, limit: int, too_large: Callable[[], Exception]) -> Any:
    """An ASGI ``receive`` that raises ``too_large()`` once the body's bytes pass ``limit`` (a body
    sent without Content-Length, or one that lied about it)."""
    seen = 0

    async def wrapped() -> dict[str, Any]:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large()
        return message

    return wrapped


async def _read_json(request: Request) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "")
    if "json" not in ctype.lower():
        raise ApiError(400, "the body must be JSON (Content-Type: application/json)")
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "the JSON is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, not {type(body).__name__}")
    return body


def _parse(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        req = model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else None  # the request field, as OpenAI reports it
        raise ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param) from None
    except RecursionError:
        raise ApiError(400, "the JSON is nested too deeply") from None
    unknown = [k for k in getattr(req, "unknown_fields", list)() if k not in _WARNED]
    if unknown and len(_WARNED) < 1000:
        _WARNED.update(unknown)
        log.warning("ignored unknown request fields (logged once each): %s", ", ".join(unknown)[:300])
    return req


_WARNED: set[str] = set()


def chat_page() -> tuple[bytes, str]:
    """The chat page and its Content-Security-Policy (``inline_page``)."""
    return inline_page("llmkit.serving", "ui/chat.html")


def inline_page(package: str, resource: str) -> tuple[bytes, str]:
    """A page that is one file, and its Content-Security-Policy: only its own inline script and
    style (by hash), requests to this server only, no frames, forms, plugins or other origins."""
    import base64
    import hashlib
    import re
    from importlib.resources import files

    page = files(package).joinpath(resource).read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    policy = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
              "img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return page.encode(), policy


def create_app(state: State) -> FastAPI:
    """The FastAPI app (docs routes off: every route is classified for auth)."""
    app = FastAPI(title="llmkit", docs_url=None, redoc_url=None, openapi_url=None)
    tok, engine = state.tokenizer, state.engine
    if state.token_text is None and tok is not None:
        state.token_text = TokenText(tok)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(error_body("internal error", "server_error"), 500)

    @app.exception_handler(404)
    async def _not_found(_: Request, __: Exception) -> JSONResponse:
        return JSONResponse(error_body("no such route", "invalid_request_error", code="not_found"), 404)

    @app.exception_handler(405)
    async def _bad_method(_: Request, __: Exception) -> JSONResponse:
        return JSONResponse(error_body("method not allowed on this route", "invalid_request_error"), 405)

    if state.config.ui:
        page, policy = chat_page()

        @app.get("/")
        async def ui() -> Response:
            return Response(page, media_type="text/html; charset=utf-8", headers={
                "Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-cache"})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        ok = state.ready and not state.draining
        return JSONResponse({"status": "ready" if ok else "not ready"}, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        gauges = {"llmkit_active_requests": state.in_flight, "llmkit_queue_depth": engine.queued,
                  "llmkit_batch_size": engine.batch_size, "llmkit_engine_requests": engine.active,
                  "llmkit_kv_cache_bytes": getattr(engine, "kv_cache_bytes", 0)}
        cache = getattr(engine, "prefix_cache", None)
        if cache is not None:
            gauges.update({"llmkit_prefix_cache_hit_rate": round(cache.stats.hit_rate, 6),
                           "llmkit_prefix_cache_cached_tokens": cache.stats.cached_tokens,
                           "llmkit_prefix_cache_queried_tokens": cache.stats.queried_tokens,
                           "llmkit_prefix_cache_bytes": cache.bytes, "llmkit_prefix_cache_budget_bytes": cache.budget})
        return PlainTextResponse(state.metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        base = {"id": state.model_name, "object": "model", "created": 0, "owned_by": "llmkit",
                "dtype": state.config.dtype}  # serve.dtype: `llmkit verify --endpoint` judges by it
        return {"object": "list", "data": [base] + [{**base, "id": name, "parent": state.model_name, "root": name}
                                                    for name in sorted(state.adapters)]}

    add_adapter_routes(app, state)

    async def generation(request: Request, chat: bool) -> Response:
        req = _parse(ChatCompletionRequest if chat else CompletionRequest, await _read_json(request))
        adapter = 0 if req.model == state.model_name else state.adapters.get(req.model)
        if adapter is None:
            raise ApiError(404, "the model does not exist on this server (see GET /v1/models)", param="model",
                           code="model_not_found")
        try:
            work = req.to_engine_request(tok, state.defaults, engine.window, state.max_token_bytes,
                                         state.config.tool_parser, adapter)
        except RequestError as exc:
            raise ApiError(400, exc.message, param=exc.param, code=exc.code) from None
        try:
            handle = engine.submit(work.prompts, work.params)
        except Overloaded:
            raise ApiError(429, "the server is at capacity; retry shortly", "rate_limit_exceeded",
                           headers={"Retry-After": "1"}) from None
        state.metrics.tokens_in += work.prompt_tokens
        meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": state.model_name}
        if work.stream:
            return StreamingResponse(_sse(state, handle, meta, chat, work), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await _collect(state, request, handle, meta, chat, work)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generation(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generation(request, chat=True)

    return app


class LoadAdapter(BaseModel):
    lora_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_:-]{0,127}$")
    lora_path: str = Field(min_length=1, max_length=4096)


class UnloadAdapter(BaseModel):
    model_config = ConfigDict(extra="allow")
    lora_name: str = Field(max_length=128)


def add_adapter_routes(app: FastAPI, state: State) -> None:
    """vLLM's endpoints for loading and unloading LoRA adapters while serving (serve.allow_adapter_loading)."""

    def allowed() -> None:
        if not state.config.allow_adapter_loading:
            raise ApiError(403, "loading adapters while serving is off (serve.allow_adapter_loading)", code="forbidden")

    @app.post("/v1/load_lora_adapter")
    async def load_adapter(request: Request) -> PlainTextResponse:
        allowed()
        body = _parse(LoadAdapter, await _read_json(request))
        if body.lora_name == state.model_name or body.lora_name in state.adapters:
            raise ApiError(400, f"the name {body.lora_name!r} is taken (see GET /v1/models)", param="lora_name")
        from llmkit.errors import LlmkitError
        from llmkit.model.multilora import adapter_directory

        try:
            slot = await asyncio.wrap_future(state.engine.call(
                lambda: state.engine.adapters.load(body.lora_name, adapter_directory(body.lora_path))))
        except LlmkitError as exc:  # the message names the adapter, never the files' content
            raise ApiError(400, exc.summary, param="lora_path") from None
        state.adapters[body.lora_name] = slot
        log.warning("adapter %s loaded while serving", body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_adapter(request: Request) -> PlainTextResponse:
        allowed()
        body = _parse(UnloadAdapter, await _read_json(request))
        slot = state.adapters.pop(body.lora_name, None)
        if slot is None:
            raise ApiError(404, f"no adapter named {body.lora_name[:128]!r} is loaded", param="lora_name")
        state.engine.retire(slot)  # requests already running on it finish first
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


async def _events(state: State, handle: Handle) -> AsyncIterator[Any]:
    """A request's events until every choice has finished; cancels the request if abandoned."""
    deadline = handle.submitted_at + state.config.request_timeout_s
    remaining = len(handle.params)
    state.in_flight += 1
    first = True
    try:
        while remaining:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                yield EngineError("the request timed out", kind="timeout")
                return
            try:
                item = await asyncio.wait_for(handle.queue.get(), timeout)
            except asyncio.TimeoutError:
                continue
            if isinstance(item, EngineError):
                state.metrics.stream_errors += 1
                yield item
                return
            if first and item.token_id is not None:
                state.metrics.ttft.observe(time.monotonic() - handle.submitted_at)
                first = False
            if item.finish_reason:
                remaining -= 1
            yield item
    finally:
        state.in_flight -= 1
        state.metrics.latency.observe(time.monotonic() - handle.submitted_at)
        if remaining:
            state.engine.cancel(handle)


@dataclass
class _Choice:
    """One choice as it is assembled: text, tokens with their logprobs, why it ended."""

    text: str = ""
    finish: str = "stop"
    count: int = 0
    tokens: list[Entry] = field(default_factory=list)
    prompt: list[Entry] | None = None

    def add(self, ev: Any) -> None:
        self.text += ev.text
        self.count += ev.token_id is not None
        if ev.scored is not None and ev.logprob is not None:
            self.tokens.append((ev.scored, ev.logprob, ev.top))
        if ev.prompt is not None:
            self.prompt = ev.prompt
        if ev.finish_reason:
            self.finish = ev.finish_reason if ev.finish_reason != "cancelled" else "stop"


def _logprobs(state: State, work: EngineRequest, chat: bool, entries: list[Entry], offset: int = 0) -> Any:
    if chat:
        return chat_logprobs(state.token_text, entries)
    return completion_logprobs(state.token_text, entries, offset)


async def _collect(state: State, request: Request, handle: Handle, meta: dict[str, Any], chat: bool,
                   work: EngineRequest) -> JSONResponse:
    choices = [_Choice() for _ in handle.params]
    events = _events(state, handle)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        while True:
            nxt = asyncio.ensure_future(events.__anext__())
            done, _ = await asyncio.wait({nxt, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:  # the client went away: stop generating for it
                nxt.cancel()  # the generator is running inside this task: wait until the cancel ends it
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await nxt
                await events.aclose()  # its finally has run (a no-op then): the engine stops the request
                return JSONResponse(error_body("client disconnected", "invalid_request_error"), 499)
            try:
                ev = nxt.result()
            except StopAsyncIteration:
                break
            if isinstance(ev, EngineError):
                await events.aclose()
                return JSONResponse(error_body(ev.message, "server_error"), 504 if ev.kind == "timeout" else 500)
            choices[ev.key[1]].add(ev)
    finally:
        watcher.cancel()
    completion = sum(c.count for c in choices)
    state.metrics.tokens_out += completion
    usage = Usage.of(work.prompt_tokens, completion)
    body: ChatCompletionResponse | CompletionResponse
    if chat:
        body = ChatCompletionResponse(**meta, usage=usage, choices=[
            ChatChoice(index=i, message=_message(work, c), finish_reason=_finish(work, c),
                       logprobs=_logprobs(state, work, True, c.tokens) if work.logprobs else None)
            for i, c in enumerate(choices)])
    else:
        out = []
        for i, c in enumerate(choices):
            prefix = work.echo[i // work.n] if work.echo is not None else ""
            logprobs = None
            if work.logprobs:
                logprobs = _logprobs(state, work, False, (c.prompt or []) + c.tokens)
                if c.prompt is not None:  # generated tokens' offsets start after the echoed prompt
                    n = len(c.prompt)
                    gen = _logprobs(state, work, False, c.tokens, len(prefix))
                    logprobs["text_offset"] = logprobs["text_offset"][:n] + gen["text_offset"]
            out.append(CompletionChoice(index=i, text=prefix + c.text, finish_reason=c.finish, logprobs=logprobs))
        body = CompletionResponse(**meta, usage=usage, choices=out)
    return JSONResponse(body.model_dump(mode="json"))


def _message(work: EngineRequest, choice: _Choice) -> AssistantMessage:
    """A finished choice as the assistant's message: its text, or its text and its tool calls."""
    if work.tools is None:
        return AssistantMessage(content=choice.text)
    content, calls, _ = work.tools.finish(choice.text, choice.finish)
    return AssistantMessage(content=content, tool_calls=[c.openai() for c in calls] or None)


def _finish(work: EngineRequest, choice: _Choice) -> str:
    return work.tools.finish(choice.text, choice.finish)[2] if work.tools is not None else choice.finish


async def _wait_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.1)


def _tool_deltas(stream: ToolStream, text: str, finish: str | None) -> list[tuple[dict[str, Any], str | None]]:
    """One streamed choice's chunks for new text under tool calling: the content that is plain
    text for sure, and at the end the calls (one delta each, OpenAI's ``tool_calls`` shape), then
    the finish reason."""
    content = stream.add(text)
    if finish is None:
        return [({"content": content}, None)] if content else []
    rest, calls, finish = stream.end(finish)
    out: list[tuple[dict[str, Any], str | None]] = [({"content": content + rest}, None)] if content + rest else []
    out += [({"tool_calls": [call.openai(index=i)]}, None) for i, call in enumerate(calls)]
    return out + [({}, finish)]


async def _sse(state: State, handle: Handle, meta: dict[str, Any], chat: bool,
               work: EngineRequest) -> AsyncIterator[bytes]:
    """Server-sent events in OpenAI's chunk format; an engine failure ends with one error event.

    Logprobs travel with the text they belong to: tokens whose text is held back (a possible stop
    string, part of a character) are reported in the chunk that carries that text."""
    completion = 0
    chunk_type = ChatCompletionChunk if chat else CompletionResponse
    pending: list[list[Entry]] = [[] for _ in handle.params]
    offsets = [0] * len(handle.params)
    started = [False] * len(handle.params)
    tools = [ToolStream(work.tools) for _ in handle.params] if chat and work.tools is not None else None

    def chunk(choices: list[Any], usage: Usage | None = None) -> bytes:
        return chunk_type(**meta, choices=choices, usage=usage).sse()

    if chat:
        yield chunk([ChatChunkChoice(index=i, delta={"role": "assistant", "content": ""}, finish_reason=None)
                     for i in range(len(handle.params))])
    events = _events(state, handle)
    try:
        async for ev in events:
            if isinstance(ev, EngineError):
                yield f"data: {json.dumps(error_body(ev.message, 'server_error'))}\n\n".encode()
                return
            choice = ev.key[1]
            if not chat and work.echo is not None and not started[choice]:  # the prompt comes first
                started[choice] = True
                text = work.echo[choice // work.n]
                lp = _logprobs(state, work, False, ev.prompt or []) if work.logprobs else None
                yield chunk([CompletionChoice(index=choice, text=text, finish_reason=None, logprobs=lp)])
                offsets[choice] = len(text)
            completion += ev.token_id is not None
            if ev.scored is not None and ev.logprob is not None:
                pending[choice].append((ev.scored, ev.logprob, ev.top))
            if not ev.text and not ev.finish_reason:
                continue
            finish = ev.finish_reason if ev.finish_reason != "cancelled" else "stop"
            deltas = _tool_deltas(tools[choice], ev.text, finish if ev.finish_reason else None) if tools else []
            if tools is not None and not deltas:  # held back: a tool call may be starting
                continue
            lp = None
            if work.logprobs:
                lp = _logprobs(state, work, chat, pending[choice], offsets[choice])
                pending[choice] = []
            offsets[choice] += len(ev.text)
            if tools is not None:
                for delta, reason in deltas:
                    yield chunk([ChatChunkChoice(index=choice, delta=delta, finish_reason=reason, logprobs=lp)])
                    lp = None
            elif chat:
                yield chunk([ChatChunkChoice(index=choice, delta={"content": ev.text} if ev.text else {},
                                             finish_reason=finish, logprobs=lp)])
            else:
                yield chunk([CompletionChoice(index=choice, text=ev.text, finish_reason=finish, logprobs=lp)])
        state.metrics.tokens_out += completion
        if work.include_usage:
            yield chunk([], usage=Usage.of(work.prompt_tokens, completion))
        yield b"data: [DONE]\n\n"
    finally:
        await events.aclose()
