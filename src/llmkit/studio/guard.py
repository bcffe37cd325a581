"""The studio's request checks, before any route (plain ASGI):

- the Host header names this server (a page elsewhere cannot reach a loopback studio through a
  DNS name it rebinds to 127.0.0.1);
- the API key on every request but the page itself, when the studio has one (it must, off
  loopback);
- state-changing requests are POST and carry the page's CSRF token in ``X-Studio-CSRF`` (another
  site cannot read the page, so cannot send it), and an ``Origin`` that is this server's;
- a size limit on every body (uploads have their own, larger one);
- file links (``/files/<token>``: a report or an export, for a plain link or a download) need no
  key: the token, signed by this studio and valid for five minutes, is the credential.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

from llmkit.serving.app import canonical_path, limited

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
BODY_LIMIT = 1 << 20
UPLOAD_PATH = "/api/upload"
LINK_TTL_S = 300.0


@dataclass
class Secrets:
    api_key: str | None
    csrf: str
    signing: bytes
    host: str
    port: int
    upload_limit: int

    def sign(self, payload: dict[str, Any]) -> str:
        body = base64.urlsafe_b64encode(json.dumps({**payload, "exp": time.time() + LINK_TTL_S}).encode()).decode()
        mac = hmac.new(self.signing, body.encode(), hashlib.sha256).hexdigest()
        return f"{body}.{mac}"

    def unsign(self, token: str) -> dict[str, Any] | None:
        body, _, mac = token.partition(".")
        good = hmac.new(self.signing, body.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, good):
            return None
        payload = json.loads(base64.urlsafe_b64decode(body.encode()))
        return payload if float(payload.get("exp", 0)) > time.time() else None


def error(status: int, message: str, detail: str = "", fix: str = "") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "detail": detail, "fix": fix}}, status)


class StudioGuard:
    def __init__(self, app: Any, secrets: Secrets) -> None:
        self.app, self.s = app, secrets

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = canonical_path(scope.get("path", "/"))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = self._check(scope["method"], path, headers)
        if problem is not None:
            return await problem(scope, receive, send)
        limit = self.s.upload_limit if path == UPLOAD_PATH else BODY_LIMIT
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await error(413, f"the request body is over {limit:,} bytes", "",
                               "send a smaller file" if path == UPLOAD_PATH else "")(scope, receive, send)
        await self.app(scope, limited(receive, limit, lambda: BodyTooLarge(limit)), send)

    def _check(self, method: str, path: str, headers: dict[str, str]) -> JSONResponse | None:
        host = headers.get("host", "").rsplit(":", 1)[0] if not headers.get("host", "").endswith("]") \
            else headers.get("host", "")
        if self.s.host in LOOPBACK and host not in LOOPBACK:
            return error(421, f"this studio answers on 127.0.0.1, not {host or 'no host'}", "",
                         f"open http://127.0.0.1:{self.s.port}/")
        key_free = path == "/" or (path.startswith("/files/") and method == "GET")
        if self.s.api_key is not None and not key_free:
            given = headers.get("authorization", "")
            token = given[7:] if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), self.s.api_key.encode()):
                return error(401, "missing or wrong API key", "every request but the page itself needs it",
                             "enter the key in the page (Authorization: Bearer <key>)")
        if method not in ("GET", "HEAD", "POST"):
            return error(405, f"{method} is not used by the studio")
        if method == "POST":
            if not hmac.compare_digest(headers.get("x-studio-csrf", "").encode(), self.s.csrf.encode()):
                return error(403, "missing or wrong CSRF token", "state-changing requests come from the studio's page",
                             "reload the page")
            origin = headers.get("origin")
            if origin is not None and origin.split("://", 1)[-1] != headers.get("host", ""):
                return error(403, f"requests from {origin} are refused", "", "use the studio's own page")
        return None


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is over {limit:,} bytes")
        self.limit = limit
