"""The studio's web app: the page, and a JSON API over the workspace's run directories.

Routes (all under the checks of ``studio.guard``):

- ``GET /``: the page (one file; its own script and style only, by hash);
- ``GET /api/info``; ``POST /api/compose``, ``/api/validate``, ``/api/plan``; ``POST /api/upload``;
- ``GET /api/runs``, ``/api/runs/{name}``, ``/api/runs/{name}/events`` (server-sent events as
  metrics.jsonl grows); ``POST /api/runs`` (write the config, prepare and train),
  ``/api/runs/{name}/{stop,resume,eval,export,link}``;
- ``POST /api/chat/open``, ``/api/chat/{id}/v1/chat/completions`` (passed to the model's own server),
  ``GET /api/chat/{id}/metrics`` (that server's);
- ``GET /files/{token}``: a report or an export through a short-lived signed link.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from llmkit.errors import LlmkitError
from llmkit.rundir import RunDir
from llmkit.studio import compose as compose_
from llmkit.studio import jobs, views
from llmkit.studio.chat import ChatServers
from llmkit.studio.guard import BodyTooLarge, Secrets, StudioGuard, error
from llmkit.studio.workspace import Refused, Workspace, read_metrics_from

log = logging.getLogger("llmkit.studio")
UPLOADS = "uploads"
EVENT_POLL_S = 0.5
HEARTBEAT_S = 15.0
EXPORTS = {"gguf": ("f32", "f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q6_k"), "hf": ("float32", "bfloat16", "float16")}


def page() -> tuple[bytes, str]:
    from llmkit.serving.app import inline_page

    return inline_page("llmkit.studio", "ui/studio.html")


def create_app(ws: Workspace, secrets: Secrets, chats: ChatServers) -> Any:
    app = FastAPI(title="llmkit studio", docs_url=None, redoc_url=None, openapi_url=None)
    body, policy = page()
    body = body.replace(b"__CSRF__", secrets.csrf.encode())

    @app.exception_handler(LlmkitError)
    async def _refused(_: Request, exc: LlmkitError) -> JSONResponse:
        return error(getattr(exc, "status", 400), exc.summary, exc.detail, exc.fix)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return error(413, str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error(500, "internal error", type(exc).__name__, "see the studio's terminal")

    @app.get("/")
    async def index() -> Response:
        return Response(body, media_type="text/html; charset=utf-8", headers={
            "Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY", "Cache-Control": "no-store"})

    _config_routes(app, ws, secrets)
    _run_routes(app, ws, secrets)
    _chat_routes(app, ws, chats)
    return StudioGuard(app, secrets)


async def _json(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError as e:
        raise Refused("the request body is not JSON", str(e)) from None
    if not isinstance(data, dict):
        raise Refused("the request body must be a JSON object")
    return data


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise Refused(f"{key!r} must be a string")
    return value


def _config_routes(app: FastAPI, ws: Workspace, secrets: Secrets) -> None:
    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        from llmkit.objectives import TASKS

        return {"workspace": ws.root.name, "presets": compose_.presets(), "tasks": sorted(TASKS),
                "exports": EXPORTS, "upload_limit": secrets.upload_limit}

    @app.post("/api/compose")
    async def compose(request: Request) -> dict[str, Any]:
        text = compose_.compose(ws, await _json(request))
        return {"yaml": text, **compose_.validate(ws, text)}

    @app.post("/api/validate")
    async def validate(request: Request) -> dict[str, Any]:
        return compose_.validate(ws, _text(await _json(request), "yaml"))

    @app.post("/api/plan")
    async def plan(request: Request) -> dict[str, Any]:
        from llmkit.planning.entry import plan_training

        cfg = compose_.check(ws, _text(await _json(request), "yaml"))
        notes: list[str] = []
        result = await run_in_threadpool(plan_training, cfg, None, None, None, notes.append)
        return {**result.to_json(), "notes": notes}

    @app.post("/api/upload")
    async def upload(request: Request, name: str) -> dict[str, Any]:
        if not compose_.NAME_OF_UPLOAD.fullmatch(name):
            raise Refused(f"{name!r} is not a file name", "letters, digits, '.', '_' and '-'", "rename the file")
        target = ws.inside(f"{UPLOADS}/{name}")
        if target.exists():
            raise Refused(f"{UPLOADS}/{name} already exists", "an upload never replaces a file", "rename the file",
                          status=409)
        target.parent.mkdir(exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in request.stream():
                    fh.write(chunk)
            try:
                os.link(partial, target)  # never replaces: a file that appeared meanwhile stays
            except FileExistsError:
                raise Refused(f"{UPLOADS}/{name} already exists", "an upload never replaces a file",
                              "rename the file", status=409) from None
        finally:
            os.unlink(partial)
        return {"path": f"{UPLOADS}/{name}", "bytes": target.stat().st_size}


def _train_commands(run: RunDir, prepare: bool) -> list[tuple[str, list[str]]]:
    config = f"runs/{run.root.name}/config.yaml"
    return ([("prepare", ["prepare", "-c", config])] if prepare else []) + [("train", ["train", "-c", config])]


def _run_routes(app: FastAPI, ws: Workspace, secrets: Secrets) -> None:
    @app.get("/api/runs")
    async def runs() -> list[dict[str, Any]]:
        return [views.summary(ws.run(n)) for n in ws.run_names()]

    @app.post("/api/runs")
    async def new_run(request: Request) -> dict[str, Any]:
        text = _text(await _json(request), "yaml")
        cfg = compose_.check(ws, text)
        run = ws.run(cfg.name, must_exist=False)
        if run.root.exists():
            raise Refused(f"a run named {cfg.name!r} exists", "a new run never replaces one",
                          "choose another name (the config's `name`)", status=409)
        try:
            run.root.mkdir(parents=True)
        except FileExistsError:  # another request made it first
            raise Refused(f"a run named {cfg.name!r} exists", "", "choose another name", status=409) from None
        run.config.write_text(text, encoding="utf-8")
        jobs.start(run, "train", _train_commands(run, prepare=True), ws.root)
        return {"name": cfg.name, "cli": views.cli_commands(run)[:2]}

    @app.get("/api/runs/{name}")
    async def run_detail(name: str) -> dict[str, Any]:
        return await run_in_threadpool(views.detail, ws.run(name))

    @app.get("/api/runs/{name}/events")
    async def events(name: str, request: Request) -> StreamingResponse:
        run = ws.run(name)
        return StreamingResponse(_events(run, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.post("/api/runs/{name}/stop")
    async def stop(name: str) -> dict[str, Any]:
        run = ws.run(name)
        kind = jobs.busy(run)
        if kind is None:
            raise Refused(f"nothing is running on {name}", "", "", status=409)
        jobs.stop(run, kind)
        return {"stopping": kind}

    @app.post("/api/runs/{name}/resume")
    async def resume(name: str) -> dict[str, Any]:
        run = ws.run(name)
        if run.final.is_dir():
            raise Refused(f"{name} has finished", "its final model is written", "start a new run", status=409)
        prepared = run.metrics.exists() or run.checkpoints.exists()
        jobs.start(run, "train", _train_commands(run, prepare=not prepared), ws.root)
        return {"resumed": name}

    @app.post("/api/runs/{name}/eval")
    async def evaluate(name: str) -> dict[str, Any]:
        run = ws.run(name)
        jobs.start(run, "eval", [("eval", ["eval", f"runs/{name}"]), ("report", ["report", f"runs/{name}"])], ws.root)
        return {"evaluating": name}

    @app.post("/api/runs/{name}/export")
    async def export(name: str, request: Request) -> dict[str, Any]:
        run = ws.run(name)
        jobs.start(run, "export", [("export", _export_args(run, await _json(request)))], ws.root)
        return {"exporting": name}

    @app.post("/api/runs/{name}/link")
    async def link(name: str, request: Request) -> dict[str, Any]:
        run, data = ws.run(name), await _json(request)
        what = data.get("what")
        if what == "report" and run.report.is_file():
            return {"url": f"/files/{secrets.sign({'run': name, 'what': 'report'})}"}
        files = {e["file"] for e in views.exports(run)}
        if what == "export" and data.get("file") in files:
            return {"url": f"/files/{secrets.sign({'run': name, 'what': 'export', 'file': data['file']})}"}
        raise Refused(f"{name} has no such {what or 'file'}", "", "", status=404)

    @app.get("/files/{token}")
    async def files(token: str) -> Response:
        payload = secrets.unsign(token)
        if payload is None:
            raise Refused("this link has expired or is not the studio's", "", "make a new one from the run's page",
                          status=403)
        run = ws.run(str(payload["run"]))
        if payload["what"] == "report":
            return FileResponse(run.report, media_type="text/html", headers={
                "Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:",
                "X-Content-Type-Options": "nosniff"})
        path = ws.inside(f"runs/{run.root.name}/studio/exports/{payload['file']}", must_exist=True)
        return FileResponse(path, filename=path.name, media_type="application/octet-stream")


def _export_args(run: RunDir, data: dict[str, Any]) -> list[str]:
    fmt, quant = data.get("format", "gguf"), data.get("quant")
    if fmt not in EXPORTS or (quant is not None and quant not in EXPORTS[fmt]):
        raise Refused(f"export {fmt} {quant or ''} is not offered", f"formats: {json.dumps(EXPORTS)}")
    quant = quant or EXPORTS[fmt][0]
    name = run.root.name
    out = f"runs/{name}/studio/exports/{name}-{quant}.gguf" if fmt == "gguf" else f"runs/{name}/studio/exports/{name}-hf"
    args = ["export", f"runs/{name}", "--format", fmt, "--out", out, "--overwrite",
            "--quant" if fmt == "gguf" else "--dtype", quant]
    repo = data.get("push_to_hub")
    if repo:
        if not isinstance(repo, str) or not compose_.HUB_REPO.fullmatch(repo):
            raise Refused(f"{repo!r} is not a Hub repository (org/name)")
        if views.hub_token(run) is None:
            cfg = run.load_config()
            raise Refused(f"no Hub token: ${cfg.hub_token_env or 'HF_TOKEN'} is empty where the studio runs",
                          "pushing needs a token with write access (the run's hub_token_env)",
                          f"start the studio with {cfg.hub_token_env or 'HF_TOKEN'} set, or export without pushing")
        args += ["--push-to-hub", repo]
    return args


async def _events(run: RunDir, request: Request) -> Any:
    """metrics.jsonl's records as they are written (event ``metrics``), and the run's summary when
    it changes (``status``); a comment now and then keeps proxies from closing the stream."""
    offset, shown, quiet = 0, None, 0.0
    while not await request.is_disconnected():
        records, offset = await run_in_threadpool(read_metrics_from, run.metrics, offset)
        if records:
            yield f"event: metrics\ndata: {json.dumps(records)}\n\n"
        now = await run_in_threadpool(views.summary, run)
        now.pop("updated", None)
        if now != shown:
            shown = now
            yield f"event: status\ndata: {json.dumps(now)}\n\n"
        quiet += EVENT_POLL_S
        if quiet >= HEARTBEAT_S:
            quiet = 0.0
            yield ": still here\n\n"
        await asyncio.sleep(EVENT_POLL_S)


def _chat_routes(app: FastAPI, ws: Workspace, chats: ChatServers) -> None:
    @app.post("/api/chat/open")
    async def open_chat(request: Request) -> dict[str, Any]:
        data = await _json(request)
        run = ws.run(_text(data, "run"))
        step = data.get("step")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
            raise Refused("'step' must be a checkpoint's step, or null for the final model")
        server = await run_in_threadpool(chats.open, run, step)
        return {"id": server.id}

    @app.get("/api/chat/{chat_id}/metrics")
    async def chat_metrics(chat_id: str) -> Response:
        """The model server's own /metrics (requests running, tokens, latencies)."""
        import httpx

        server = chats.get(chat_id)
        async with httpx.AsyncClient(timeout=30) as client:
            upstream = await client.get(server.url + "/metrics", headers={"Authorization": f"Bearer {server.key}"})
        return Response(upstream.content, upstream.status_code, media_type="text/plain; version=0.0.4")

    @app.post("/api/chat/{chat_id}/v1/chat/completions")
    async def completions(chat_id: str, request: Request) -> StreamingResponse:
        import httpx

        server = chats.get(chat_id)
        body = await _json(request)
        body["model"] = server.id
        client = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10))
        upstream = await client.send(client.build_request(
            "POST", server.url + "/v1/chat/completions", json=body,
            headers={"Authorization": f"Bearer {server.key}"}), stream=True)

        async def relay() -> Any:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:  # the page pressed Stop (or went away): closing the stream stops the generation
                await upstream.aclose()
                await client.aclose()

        return StreamingResponse(relay(), status_code=upstream.status_code,
                                 media_type=upstream.headers.get("content-type", "application/json"))
