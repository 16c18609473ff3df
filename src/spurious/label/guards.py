"""Request guards of the label server (pure ASGI middleware): body size and origin.

* :class:`BodyLimit`: a request body over ``max_bytes`` is answered ``413`` -- at once when its
  ``Content-Length`` says so, else (chunked) at the first chunk past the limit, before the rest is read;
* :class:`SameOrigin`: a state-changing request (not ``GET``/``HEAD``/``OPTIONS``) that a page of
  another origin sent (:func:`same_origin`) is answered ``403``: login CSRF, forged verdicts;
* :func:`validation_summary`: FastAPI's 422 details without the client's input.

Their answers are short ``text/plain`` and never repeat the request.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spurious._io import JSONDict

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

__all__ = ["MAX_BODY_BYTES", "BodyLimit", "SameOrigin", "same_origin", "validation_summary"]

MAX_BODY_BYTES = 64 * 1024  # the default limit (a verdict with a 2000-character note is < 13 KiB)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

async def _plain_answer(send: Send, status: int, text: str) -> None:
    """A short ``text/plain`` answer (that repeats nothing of the request) and close the connection."""
    body = text.encode("utf-8")
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), (b"x-content-type-options", b"nosniff")]})
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    """Raised from ``receive`` inside the app once a request body passes the limit."""


class BodyLimit:
    """Answer 413 to a request body larger than ``max_bytes``, without reading the rest of it.

    A ``Content-Length`` above the limit is refused before a byte of the body is read; a body
    without one (chunked) is counted as it streams in, and the app's ``receive`` fails at the first
    chunk past the limit: whatever the app then answers is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body too large: at most {self.max_bytes} bytes"
        lengths = Headers(scope=scope).getlist("content-length")
        if lengths:
            if len(set(lengths)) > 1 or not (lengths[0].isascii() and lengths[0].isdigit()):
                await _plain_answer(send, 400, "bad Content-Length header")
                return
            if int(lengths[0]) > self.max_bytes:
                await _plain_answer(send, 413, too_large)
                return
        seen = 0
        over = started = False

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over:  # the app's answer to a cut-off body (400, 422, 500) is replaced by the 413
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _plain_answer(send, 413, too_large)


def _origin_of(url: str, default_scheme: str) -> tuple[str, int | None] | None:
    """``(host, port)`` of an origin or URL (``port`` ``None``: none written); ``None`` if it has no host."""
    try:
        parts = urlsplit(url if "//" in url else f"{default_scheme}://{url}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.scheme not in ("http", "https"):
        return None
    if port is None and "//" in url:
        port = 443 if parts.scheme == "https" else 80
    return host.lower(), port


def same_origin(headers: Headers, scheme: str = "http") -> bool:
    """Whether a request comes from a page of this server (or from no page: a script, ``curl``).

    The page's origin is the ``Origin`` header, else the ``Referer``'s; it must name the host (and
    the port, when ``Host`` names one) of the ``Host`` header. ``Origin: null`` is refused. A request
    with neither header passes unless ``Sec-Fetch-Site`` says another site sent it (a browser always
    sends ``Origin`` with a cross-origin ``POST``).
    """
    source = headers.get("origin") or headers.get("referer")
    if source is None:
        return headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
    host = _origin_of(headers.get("host", ""), scheme)
    page = _origin_of(source, scheme)
    if host is None or page is None or page[0] != host[0]:
        return False
    return host[1] is None or page[1] == host[1]


class SameOrigin:
    """Refuse (403) every state-changing request (not GET/HEAD/OPTIONS) that another origin sent:
    login CSRF, logout, verdicts and re-scans from a foreign page."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in _SAFE_METHODS and \
                not same_origin(Headers(scope=scope), scope.get("scheme", "http")):
            await _plain_answer(send, 403, "cross-site request refused: this request did not come from a page "
                                           "of this server (Origin / Referer)")
            return
        await self.app(scope, receive, send)


def validation_summary(errors: Iterable[ErrorDetails]) -> list[JSONDict]:
    """FastAPI's 422 details without ``input`` and ``ctx`` (never repeat what the client sent)."""
    return [{"loc": [str(x)[:64] for x in e.get("loc", ())], "msg": str(e.get("msg", ""))[:200],
             "type": str(e.get("type", ""))[:64]} for e in errors]
