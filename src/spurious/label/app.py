"""The labelling web UI (``spurious label WS``): FastAPI + Jinja2 pages and a small vanilla-JS file.

Every page needs a signed-in labeler: the ``spurious_session`` cookie holds an opaque random session
id (its SHA-256 is kept in the label store), opened either by an invite link (``/join?token=...``,
made by ``spurious label WS --add-labeler NAME``) or, in the simple mode on loopback, by typing a
name on ``/login`` (not verified). With ``require_tokens`` (always when bound beyond loopback) only
invite links sign in.

========================================  ===========================================================
``GET  /login``, ``POST /login``          sign in by name (simple mode; refused with ``require_tokens``)
``GET  /join?token=T``, ``POST /join``    sign in with an invite link (the GET only shows a button)
``POST /logout``                          end the session
``GET  /``                                progress counts, per-class table, exports
``GET  /class/{k}``                       overview of class ``k``: components, votes, notes, curation
``GET  /review`` / ``/review/{k}/{l}``    one component per page; ``?filter=all|unlabeled|disagreements&cls=K``
``GET  /curate`` / ``/curate/{k}/{l}``    the retrieved candidates of a component in a grid (same filters)
``POST /api/review/{k}/{l}``              JSON ``{"verdict": "spurious"|"core"|"unsure", "note": str|null}``
``POST /api/curate/{k}/{l}``              JSON ``{"id": image id, "verdict": "in"|"out"|"trash"}``
``GET  /api/progress``                    the signed-in labeler's progress counts (JSON)
``POST /api/sync``                        re-scan ``WS/visualize`` and ``WS/retrieve``
``GET  /export/labels.json|.csv``         every verdict plus the agreed results
``GET  /export/components.json``          the component-set file of ``spurious fix``
``GET  /img/{key}``                       a registered image by its opaque key; anything else is 404
========================================  ===========================================================

Unknown verdicts are rejected with 422; Jinja2 autoescaping is on for every template, and the pages
run no inline script (a Content-Security-Policy forbids it), so data and user text show as text.
Request bodies are limited (``max_body``, 64 KiB by default; 413 before more is read), error
answers never repeat the request body, and every state-changing request (``POST`` etc.) from another
origin (``Origin`` / ``Referer`` / ``Sec-Fetch-Site``) is refused with 403.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlencode

import jinja2
from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from starlette.middleware.base import RequestResponseEndpoint
from starlette.middleware.trustedhost import TrustedHostMiddleware

from spurious import __version__
from spurious._io import JSONDict
from spurious.components import agreed_component_set
from spurious.label.guards import (
    MAX_BODY_BYTES,
    BodyLimit,
    SameOrigin,
    validation_summary,
)
from spurious.label.store import (
    IMAGE_VERDICTS,
    MAX_LABELER_CHARS,
    MAX_NOTE_CHARS,
    SESSION_SECONDS,
    ComponentRow,
    CurateRow,
    Labeler,
    LabelStore,
    Row,
    UnknownItemError,
    _check_min_agree,
    check_labeler,
    file_key,
)
from spurious.workspace import Workspace

__all__ = ["COOKIE", "LOOPBACK_HOSTS", "MAX_BODY_BYTES", "create_app", "is_loopback", "serve"]

# the ?filter= of the review and curate pages (the same values as spurious.label.store.FILTERS)
Filter = Literal["all", "unlabeled", "disagreements"]


COOKIE = "spurious_session"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_HERE = Path(__file__).parent
_KEY_RE = re.compile(r"^[0-9a-f]{24}$")
_CSP = ("default-src 'none'; img-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
_KEYS_REVIEW = {"s": "spurious", "c": "core", "u": "unsure"}
_KEYS_CURATE = {"i": "in", "o": "out", "t": "trash"}


class ReviewVerdict(BaseModel):
    """Body of ``POST /api/review/{k}/{l}``."""

    verdict: Literal["spurious", "core", "unsure"]
    note: str | None = Field(default=None, max_length=MAX_NOTE_CHARS)


class CurateVerdict(BaseModel):
    """Body of ``POST /api/curate/{k}/{l}``."""

    id: str = Field(min_length=1, max_length=4096)
    verdict: Literal["in", "out", "trash"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    import ipaddress

    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    return Jinja2Templates(env=env)


def _num(value: object, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else f"{value:.{digits}f}"


def _parse_cls(cls: str | None, num_classes: int, by_name: Mapping[str, int] | None = None) -> int | None:
    """The ``?cls=`` filter: a class index, or a class name (case and surrounding spaces ignored)."""
    if cls is None or cls.strip() == "":
        return None
    text = cls.strip()
    if text.isascii() and text.isdigit() and int(text) < num_classes:
        return int(text)
    if by_name is not None and text.casefold() in by_name:
        return by_name[text.casefold()]
    raise HTTPException(422, f"cls must be a class index in 0..{num_classes - 1} or a class name, got {cls!r}")


CLASSES_PER_PAGE = 50
"""Rows of the overview's class table per page (the page stays small at 1000 classes)."""


def _page_of(items: list[JSONDict], q: str, page: int) -> tuple[list[JSONDict], JSONDict]:
    """The overview's classes matching ``q`` (an index, or part of a name), page ``page`` (1-based, clamped)."""
    needle = q.strip().casefold()
    hits = [c for c in items if not needle or needle == str(c["k"]) or needle in str(c["name"]).casefold()]
    pages = max(1, math.ceil(len(hits) / CLASSES_PER_PAGE))
    page = min(max(1, page), pages)
    start = (page - 1) * CLASSES_PER_PAGE
    shown = hits[start:start + CLASSES_PER_PAGE]

    def url(p: int) -> str:
        return "/?" + urlencode({"q": q, "page": p} if q else {"page": p})

    nav: JSONDict = {"page": page, "pages": pages, "matching": len(hits), "total": len(items), "q": q,
                     "first": start + 1 if shown else 0, "last": start + len(shown),
                     "prev_url": url(page - 1) if page > 1 else None,
                     "next_url": url(page + 1) if page < pages else None}
    return shown, nav


def _query(filter: str, cls: int | None) -> str:
    params = {"filter": filter}
    if cls is not None:
        params["cls"] = str(cls)
    return "?" + urlencode(params)


def _safe_next(target: str | None) -> str:
    """Only local absolute paths are followed after sign-in (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _review_key(row: ComponentRow) -> tuple[int, int, int]:
    return (row.cls, row.rank, row.component)


def _curate_key(row: CurateRow) -> tuple[int, int]:
    return (row.cls, row.component)


def _vote_counts(votes: dict[str, str]) -> dict[str, int]:
    """How many labelers gave each image verdict (``votes``: labeler -> verdict)."""
    return {verdict: sum(1 for x in votes.values() if x == verdict) for verdict in IMAGE_VERDICTS}

def create_app(workspace: str | os.PathLike[str] | Workspace, *, sync: bool = True, min_agree: int = 2,
               allowed_hosts: list[str] | None = None, require_tokens: bool = False,
               max_body: int = MAX_BODY_BYTES) -> FastAPI:
    """Build the labelling app for a workspace.

    Args:
        workspace: the workspace directory; its ``labels.sqlite`` is created on first use.
        sync: register ``WS/visualize`` and ``WS/retrieve`` now (``POST /api/sync`` does it later).
        min_agree: labelers that must agree for a spurious component / an accepted image (>= 1).
        allowed_hosts: accepted ``Host`` headers (``None``: any); :func:`serve` passes the loopback
            names when it binds to loopback, which blocks DNS-rebinding pages.
        require_tokens: only invited labelers (invite link, :meth:`LabelStore.invite_labeler`) can
            sign in; ``False`` also allows typing a name (unverified; for loopback). :func:`serve`
            sets it when binding beyond loopback.
        max_body: the largest request body in bytes; a larger one is answered 413 unread.

    Raises:
        FileNotFoundError: not a workspace.
        ValueError: ``min_agree`` < 1, ``max_body`` < 1024, a newer label schema, malformed stage artifacts.
    """
    min_agree = _check_min_agree(min_agree)
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1024:
        raise ValueError(f"max_body must be an integer >= 1024 (bytes; default {MAX_BODY_BYTES}), got {max_body!r}")
    store = LabelStore(workspace, sync=sync, keep_connections=True)  # a connection per server thread
    templates = _templates()
    num_classes = store.workspace.num_classes
    by_name: dict[str, int] = {}
    for i, name in enumerate(store.workspace.class_names):
        by_name.setdefault(str(name).strip().casefold(), i)  # the first class of a name wins
    app = FastAPI(title="spurious label", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.require_tokens = bool(require_tokens)
    app.state.max_body = max_body
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")
    # the last added runs first: body limit, then host check, then the origin check
    app.add_middleware(SameOrigin)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.add_middleware(BodyLimit, max_bytes=max_body)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_summary(exc.errors())}, status_code=422)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: RequestResponseEndpoint) -> Response:
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    def identity_of(request: Request) -> Labeler | None:
        """The signed-in identity: a live session, of an invited labeler when tokens are required."""
        who = store.session_labeler(request.cookies.get(COOKIE))
        if who is None or (require_tokens and not who.verified):
            return None
        return who

    def labeler_of(request: Request) -> str | None:
        who = identity_of(request)
        return None if who is None else who.name

    def need_labeler(request: Request) -> str:
        name = labeler_of(request)
        if name is None:
            raise HTTPException(401, "sign in first: GET /login")
        return name

    def signed_in(response: Response, name: str) -> Response:
        response.set_cookie(COOKIE, store.open_session(name), max_age=SESSION_SECONDS, httponly=True,
                            samesite="lax", path="/")
        return response

    def login_redirect(request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)

    def render(request: Request, template: str, status_code: int = 200, **context: object) -> HTMLResponse:
        who = identity_of(request)
        context.setdefault("labeler", None if who is None else who.name)
        context.setdefault("identity", who)
        context.setdefault("page", template.removesuffix(".html"))
        return templates.TemplateResponse(request, template, {"version": __version__, "ws": str(store.root),
                                                          "min_agree": min_agree, "require_tokens": require_tokens,
                                                          **context},
                                          status_code=status_code)

    def img_url(path: str | os.PathLike[str]) -> str:
        return f"/img/{file_key(path)}"

    class_label = store.class_name

    # ------------------------------------------------------------------ sign-in
    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> HTMLResponse:
        return render(request, "login.html", next=_safe_next(next), error=None)

    @app.post("/login", response_model=None)
    def login(request: Request, name: str = Form(""), next: str = Form("/")) -> Response:
        """Simple mode: sign in under a typed name (unverified). Error pages never repeat the name."""
        def refuse(status: int, error: str) -> Response:
            return render(request, "login.html", status_code=status, next=_safe_next(next), error=error)

        if require_tokens:
            return refuse(403, "Signing in by name is off on this server: open the invite link the owner gave you.")
        try:
            name = check_labeler(name)
        except (TypeError, ValueError):
            return refuse(422, f"invalid labeler name: use 1-{MAX_LABELER_CHARS} letters, digits, '_', and inside "
                               "the name also space . @ + - (e.g. 'alice' or 'bob.smith')")
        existing = store.identity(name)
        if existing is not None and existing.revoked is not None:
            return refuse(403, "The owner removed this labeler; ask for an invite link.")
        if existing is not None and existing.kind == "token":
            return refuse(403, "This name belongs to an invited labeler: sign in with your invite link.")
        if existing is not None and existing.kind != "name":
            return refuse(403, "This name belongs to a simulated labeler (a script); pick another name.")
        try:
            name = store.add_labeler(name)
        except ValueError:  # changed meanwhile (invited or removed)
            return refuse(403, "This name cannot sign in by name any more; ask the owner for an invite link.")
        return signed_in(RedirectResponse(_safe_next(next), status_code=303), name)

    @app.get("/join", response_class=HTMLResponse)
    def join_page(request: Request, token: str = "", next: str = "/") -> HTMLResponse:
        """The invite link: shows whose link it is and a button (a GET changes nothing)."""
        who = store.labeler_for_token(token)
        response = render(request, "join.html", status_code=200 if who else 404, invited=who,
                          token=token if who else "", next=_safe_next(next))
        # no-store; the app's Referrer-Policy same-origin keeps the link off other sites ("no-referrer"
        # would make the browser send "Origin: null" with the button's POST, which is refused)
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.post("/join", response_model=None)
    def join(request: Request, token: str = Form(""), next: str = Form("/")) -> Response:
        who = store.labeler_for_token(token)
        if who is None:
            response = render(request, "join.html", status_code=404, invited=None, token="", next="/")
            response.headers["Cache-Control"] = "no-store"
            return response
        return signed_in(RedirectResponse(_safe_next(next), status_code=303), who.name)

    @app.post("/logout")
    def logout(request: Request) -> RedirectResponse:
        store.close_session(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ overview pages
    @app.get("/", response_class=HTMLResponse, response_model=None)
    def index(request: Request, q: str = "", page: int = 1) -> Response:
        me = labeler_of(request)
        if me is None:
            return login_redirect(request)
        # the classes from the tallies (one row each), the counts of the shown page's only; no component listed
        classes: list[JSONDict] = [{"k": k, "name": class_label(k)} for k in store.classes_to_label()]
        shown, nav = _page_of(classes, q[:200], page)
        counts = store.class_counts(me, min_agree=min_agree, classes=[c["k"] for c in shown])
        zero = dict.fromkeys(("components", "mine", "agreed", "disagreements", "candidates", "judged", "accepted"), 0)
        shown = [{**c, **counts.get(c["k"], zero)} for c in shown]  # (a class a concurrent sync just dropped: 0)
        return render(request, "index.html", progress=store.progress(me, min_agree=min_agree),
                      classes=shown, nav=nav, labelers=store.identities())

    @app.get("/class/{k}", response_class=HTMLResponse, response_model=None)
    def class_page(request: Request, k: int) -> Response:
        me = labeler_of(request)
        if me is None:
            return login_redirect(request)
        comps = store.components(me, cls=k, min_agree=min_agree)
        cur = store.curate_components(me, cls=k, min_agree=min_agree)
        if not comps and not cur:
            raise HTTPException(404, f"class {k} has nothing to label")
        rows = []
        for r in comps:
            rec = store.component(r.cls, r.component)
            png = rec.get("npfv_png")
            rows.append({"row": r, "rec": rec, "verdicts": store.component_verdicts(r.cls, r.component),
                         "npfv_url": img_url(store.visual_path(rec, png)) if png else None})
        return render(request, "class.html", k=k, class_name=class_label(k), rows=rows, curate=cur)

    def first_item(request: Request, task: str, first_of: Callable[[str, str, int | None], Row | None],
                   progress_of: Callable[[str], dict[str, int]], filter: str, cls: str | None) -> Response:
        """``/review`` and ``/curate``: redirect to the first row the filter keeps, else the "done" page.

        ``first_of(me, filter, cls)``: that row (``None``: none); ``progress_of(me)``: the progress counts.
        """
        me = labeler_of(request)
        if me is None:
            return login_redirect(request)
        k = _parse_cls(cls, num_classes, by_name)
        first = first_of(me, filter, k)
        if first is not None:
            return RedirectResponse(f"/{task}/{first.cls}/{first.component}{_query(filter, k)}", status_code=303)
        return render(request, "done.html", task=task, filter=filter, cls=k, class_label=class_label,
                      progress=progress_of(me))

    def first_review(me: str, filter: str, k: int | None) -> ComponentRow | None:
        return store.component_neighbour(me, None, filter=filter, cls=k, min_agree=min_agree)

    def review_counts(me: str) -> dict[str, int]:
        return store.review_counts(me, min_agree=min_agree)

    def first_curate(me: str, filter: str, k: int | None) -> CurateRow | None:
        return store.curate_neighbour(me, None, filter=filter, cls=k, min_agree=min_agree)

    def curate_counts(me: str) -> dict[str, int]:
        return store.curate_counts(me, min_agree=min_agree)

    # ------------------------------------------------------------------ review
    @app.get("/review", response_model=None)
    def review_first(request: Request, filter: Filter = "unlabeled",
                     cls: str | None = None) -> Response:
        return first_item(request, "review", first_review, review_counts, filter, cls)

    @app.get("/review/{k}/{l}", response_class=HTMLResponse, response_model=None)
    def review_page(request: Request, k: int, l: int,
                    filter: Filter = "unlabeled",
                    cls: str | None = None) -> Response:
        me = labeler_of(request)
        if me is None:
            return login_redirect(request)
        kc = _parse_cls(cls, num_classes, by_name)
        try:
            rec = store.component(k, l)
        except UnknownItemError as err:
            raise HTTPException(404, str(err)) from None
        here = store.component_row(me, k, l, min_agree=min_agree)
        if here is None:
            raise HTTPException(404, f"(class {k}, component {l}) is not registered")
        prev = store.component_neighbour(me, _review_key(here), before=True, filter=filter, cls=kc,
                                         min_agree=min_agree)
        nxt = store.component_neighbour(me, _review_key(here), filter=filter, cls=kc, min_agree=min_agree)
        position, total = store.component_position(me, here, filter=filter, cls=kc)
        q = _query(filter, kc)

        def url(r: ComponentRow | None) -> str:
            return "" if r is None else f"/review/{r.cls}/{r.component}{q}"

        def vis(name: str | None) -> str | None:
            return img_url(store.visual_path(rec, name)) if name else None

        tops = [{**t, "url": vis(t.get("png")), "cam_url": vis(t.get("heatmap_png"))}
                for t in rec.get("top_images", [])]
        counterfactuals = [{**c, "urls": {n: img_url(p) for n, p in c["files"].items()}}
                           for c in rec.get("counterfactuals", [])]
        verdicts = store.component_verdicts(k, l)
        mine = verdicts.get(me, {})
        return render(request, "review.html", task="review", rec=rec, k=k, l=l, class_name=class_label(k), row=here,
                      npfv_url=vis(rec.get("npfv_png")), npfv_cam_url=vis(rec.get("npfv_heatmap_png")),
                      tops=tops, counterfactuals=counterfactuals, verdicts=verdicts, mine=mine.get("verdict"), note=mine.get("note", ""),
                      prev_url=url(prev), next_url=url(nxt), filter=filter, cls=kc, query=q,
                      position=position, total=total, keys=_KEYS_REVIEW,
                      class_label=class_label,
                      progress=store.review_counts(me, min_agree=min_agree))

    @app.post("/api/review/{k}/{l}")
    def review_verdict(request: Request, k: int, l: int, body: ReviewVerdict,
                       filter: Filter = "unlabeled",
                       cls: str | None = None) -> JSONDict:
        me = need_labeler(request)
        kc = _parse_cls(cls, num_classes, by_name)
        try:
            store.set_component_verdict(me, k, l, body.verdict, body.note)
        except UnknownItemError as err:
            raise HTTPException(404, str(err)) from None
        here = store.component_row(me, k, l, min_agree=min_agree)
        if here is None:  # unregistered since the verdict (a concurrent sync)
            raise HTTPException(404, f"(class {k}, component {l}) is not registered")
        nxt = store.component_neighbour(me, _review_key(here), filter=filter, cls=kc, min_agree=min_agree)
        q = _query(filter, kc)
        if nxt is not None:
            next_url: str | None = f"/review/{nxt.cls}/{nxt.component}{q}"
        elif filter == "unlabeled":  # wrap around to what is still unlabeled, or the "all done" page
            first = store.component_neighbour(me, None, filter=filter, cls=kc, min_agree=min_agree)
            next_url = f"/review/{first.cls}/{first.component}{q}" if first is not None else f"/review{q}"
        else:
            next_url = None  # the end of the list: stay
        return {"ok": True, "labeler": me, "verdict": body.verdict, "votes": here.votes, "agreed": here.agreed,
                "next": next_url}

    # ------------------------------------------------------------------ curate
    @app.get("/curate", response_model=None)
    def curate_first(request: Request, filter: Filter = "unlabeled",
                     cls: str | None = None) -> Response:
        return first_item(request, "curate", first_curate, curate_counts, filter, cls)

    @app.get("/curate/{k}/{l}", response_class=HTMLResponse, response_model=None)
    def curate_page(request: Request, k: int, l: int,
                    filter: Filter = "unlabeled",
                    cls: str | None = None) -> Response:
        me = labeler_of(request)
        if me is None:
            return login_redirect(request)
        kc = _parse_cls(cls, num_classes, by_name)
        cands = store.candidates(k, l)
        if not cands:
            raise HTTPException(404, f"(class {k}, component {l}) has no retrieved candidates")
        here = store.curate_row(me, k, l, min_agree=min_agree)
        if here is None:  # its candidates unregistered since the listing above (a concurrent sync)
            raise HTTPException(404, f"(class {k}, component {l}) has no retrieved candidates")
        prev = store.curate_neighbour(me, _curate_key(here), before=True, filter=filter, cls=kc,
                                      min_agree=min_agree)
        nxt = store.curate_neighbour(me, _curate_key(here), filter=filter, cls=kc, min_agree=min_agree)
        q = _query(filter, kc)
        votes = store.image_verdicts(k, l)
        items = []
        for c in cands:
            v = votes.get(c["id"], {})
            counts = _vote_counts(v)
            items.append({"rec": c, "url": img_url(c["path"]) if c.get("path") else None, "mine": v.get(me), "counts": counts,
                          "accepted": counts["out"] >= min_agree, "disagreement": len(set(v.values())) > 1})
        try:
            rec = store.component(k, l)
            npfv_url = img_url(store.visual_path(rec, rec["npfv_png"])) if rec.get("npfv_png") else None
        except UnknownItemError:
            rec, npfv_url = None, None

        def url(r: CurateRow | None) -> str:
            return "" if r is None else f"/curate/{r.cls}/{r.component}{q}"

        return render(request, "curate.html", task="curate", k=k, l=l, class_name=class_label(k), items=items,
                      row=here, rec=rec, npfv_url=npfv_url, prev_url=url(prev), next_url=url(nxt), filter=filter,
                      cls=kc, query=q, keys=_KEYS_CURATE, class_label=class_label,
                      progress=store.curate_counts(me, min_agree=min_agree))

    @app.post("/api/curate/{k}/{l}")
    def curate_verdict(request: Request, k: int, l: int, body: CurateVerdict) -> JSONDict:
        me = need_labeler(request)
        try:
            store.set_image_verdict(me, k, l, body.id, body.verdict)
        except UnknownItemError as err:
            raise HTTPException(404, str(err)) from None
        counts = _vote_counts(store.image_verdicts(k, l).get(body.id, {}))
        return {"ok": True, "labeler": me, "id": body.id, "verdict": body.verdict, "counts": counts,
                "accepted": counts["out"] >= min_agree}

    # ------------------------------------------------------------------ API, exports, files
    @app.get("/api/progress")
    def progress(request: Request) -> JSONDict:
        me = need_labeler(request)
        return {"labeler": me, "min_agree": min_agree, **store.progress(me, min_agree=min_agree)}

    @app.post("/api/sync")
    def resync(request: Request) -> JSONDict:
        need_labeler(request)
        r = store.sync()
        return {"components": r.components, "candidates": r.candidates, "files": r.files, "classes": r.classes}

    @app.get("/export/labels.json")
    def export_json(request: Request) -> JSONResponse:
        need_labeler(request)
        return JSONResponse(store.labels_document(min_agree),
                            headers={"Content-Disposition": 'attachment; filename="labels.json"'})

    @app.get("/export/labels.csv")
    def export_csv(request: Request) -> PlainTextResponse:
        need_labeler(request)
        return PlainTextResponse(store.labels_csv(min_agree), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": 'attachment; filename="labels.csv"'})

    @app.get("/export/components.json")
    def export_components(request: Request) -> JSONResponse:
        need_labeler(request)
        return JSONResponse(agreed_component_set(store, min_agree=min_agree).to_dict(),
                            headers={"Content-Disposition": 'attachment; filename="components.json"'})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/img/{key}")
    def image(request: Request, key: str) -> FileResponse:
        need_labeler(request)
        path = store.file_path(key) if _KEY_RE.match(key) else None
        if path is None or not path.is_file():
            raise HTTPException(404, "no such image")
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    return app


def serve(workspace: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 8765, min_agree: int = 2,
          open_browser: bool = False, log_level: str = "info", require_tokens: bool | None = None,
          max_body: int = MAX_BODY_BYTES) -> None:
    """Run the labelling app with uvicorn until interrupted.

    On loopback, requests must name a loopback host (DNS-rebinding guard) and both sign-in modes
    work (typed names, unverified, and invite links) unless ``require_tokens=True``. Beyond loopback
    only invite links sign in (``require_tokens`` is forced), and a ``UserWarning`` says that the
    traffic is plain HTTP (and when nobody has an invite yet).

    Args:
        require_tokens: ``None``: only beyond loopback; ``True``: also on loopback.
        max_body: the largest request body in bytes (see :func:`create_app`).

    Raises:
        ValueError: ``port`` outside 0..65535 (0 = any free port), ``require_tokens=False`` beyond
            loopback, or see :func:`create_app`.
    """
    import uvicorn

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in 0..65535 (0 = any free port), got {port!r}")
    loopback = is_loopback(host)
    if require_tokens is None:
        require_tokens = not loopback
    elif not require_tokens and not loopback:
        raise ValueError(f"binding to {host} needs invite tokens (require_tokens=True): typed names are not "
                         "verified, so they are only offered on loopback (127.0.0.1)")
    if not loopback:
        warnings.warn(f"binding to {host}: only invited labelers can sign in (spurious label WS --add-labeler NAME), "
                      "but the connection is plain HTTP: invite links, sessions and labels cross the network "
                      "unencrypted; use a trusted network, or keep 127.0.0.1 and give each labeler an SSH tunnel",
                      stacklevel=2)
    allowed = ([*LOOPBACK_HOSTS, "[::1]", host.strip("[]")] if loopback else None)
    app = create_app(workspace, min_agree=min_agree, allowed_hosts=allowed, require_tokens=require_tokens,
                     max_body=max_body)
    if require_tokens and not any(who.verified and who.revoked is None for who in app.state.store.identities()):
        warnings.warn("nobody can sign in yet: invite labelers with `spurious label WS --add-labeler NAME` "
                      "(the running server accepts new invites at once)", stacklevel=2)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level)
    server = uvicorn.Server(config)
    if open_browser:
        import threading
        import webbrowser

        def _open() -> None:
            import time

            while not server.started and not server.should_exit:
                time.sleep(0.05)
            if server.started:
                bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
                webbrowser.open(f"http://{'localhost' if loopback else host}:{bound}/")

        threading.Thread(target=_open, daemon=True).start()
    server.run()
