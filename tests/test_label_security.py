"""Security rules of the label server and store (issue 16, items 1-5).

1. request bodies are limited (413 unread) and error answers never repeat the request;
2. identities: invite tokens (only their hash stored), sessions instead of a name cookie, tokens
   required beyond loopback, agreement over distinct identities, the v1 -> v2 schema migration;
3. every state-changing request from another origin is refused (login CSRF);
4. huge integers in item URLs answer 404;
5. CSV exports neutralise formula-like cells (OWASP).

Expected values come from the requests the tests make and the verdicts they place, not from the
code's own listings.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import json
import re
import socket
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from test_label_app import running_server
from test_label_store import make_label_ws

from spurious.cli import main
from spurious.label import LabelStore
from spurious.label.app import COOKIE, MAX_BODY_BYTES, create_app
from spurious.label.guards import same_origin
from spurious.label.store import SESSION_SECONDS
from spurious.workspace import Workspace

MARK = "ECHO-MARKER-7f3a"
HUGE = "99999999999999999999999"


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return make_label_ws(tmp_path)


@pytest.fixture
def app(ws: Workspace) -> Any:
    return create_app(ws.root)


def named(app: Any, name: str) -> TestClient:
    """A client signed in by typing ``name`` (simple mode)."""
    c = TestClient(app)
    r = c.post("/login", data={"name": name, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return c


def joined(app: Any, token: str) -> TestClient:
    """A client signed in with an invite token (GET shows the button, POST signs in)."""
    c = TestClient(app)
    assert c.get("/join", params={"token": token}).status_code == 200
    r = c.post("/join", data={"token": token, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303 and COOKIE in r.cookies, r.text
    return c


def _count(ws: Workspace, table: str) -> int:
    with contextlib.closing(sqlite3.connect(ws.root / "labels.sqlite")) as con:
        return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


# ---------------------------------------------------------------------- 1. body size, no echo
def test_a_body_over_the_limit_is_answered_413_and_not_stored(app: Any, ws: Workspace) -> None:
    c = named(app, "ann")
    big = json.dumps({"verdict": "core", "note": "x" * MAX_BODY_BYTES})
    assert len(big) > MAX_BODY_BYTES == 64 * 1024
    r = c.post("/api/review/0/3", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and MARK not in r.text and len(r.content) < 200
    # the same without sign-in, and on a form route
    assert TestClient(app).post("/api/review/0/3", content=big, headers={"content-type": "application/json"}) \
        .status_code == 413
    assert TestClient(app).post("/login", data={"name": "a" * (MAX_BODY_BYTES + 1)}).status_code == 413
    assert _count(ws, "component_verdicts") == 0
    # just under the limit passes the limit (and is then judged on its content: the note is too long)
    ok = json.dumps({"verdict": "core", "note": "y" * 1000})
    assert c.post("/api/review/0/3", content=ok, headers={"content-type": "application/json"}).status_code == 200


def test_the_limit_is_configurable(ws: Workspace) -> None:
    app = create_app(ws.root, max_body=2048)
    c = named(app, "ann")
    assert c.post("/api/review/0/3", json={"verdict": "core", "note": "z" * 1500}).status_code == 200
    assert c.post("/api/review/0/3", json={"verdict": "core", "note": "z" * 2100}).status_code == 413


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(ws: Workspace) -> None:
    """A real server answers 413 to the headers of a 500 MiB POST, without waiting for its body."""
    with running_server(create_app(ws.root)) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /api/review/0/3 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 524288000\r\n\r\n")
            head = s.recv(4096).decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head


def test_a_chunked_body_is_cut_off_at_the_limit(ws: Workspace) -> None:
    """A body without Content-Length (chunked) is counted as it arrives: 413 once past the limit,
    although the client never ends the body."""
    with running_server(create_app(ws.root)) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /api/review/0/3 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"a" * 16384
            for _ in range(6):  # 96 KiB > 64 KiB, and no final 0-length chunk
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            head = s.recv(4096).decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head


def test_the_limit_stops_reading_a_stream(ws: Workspace) -> None:
    """At the ASGI level: of a 10 MiB body in 1 KiB messages, no more than the limit (+ one message)
    is pulled from the server."""
    app = create_app(ws.root, max_body=4096)
    pulled = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"{" + b" " * 1023, "more_body": pulled < 10 * 1024}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/review/0/3", "raw_path": b"/api/review/0/3", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [413]
    assert pulled <= 4096 // 1024 + 1


def test_validation_errors_do_not_repeat_the_request(app: Any) -> None:
    c = named(app, "ann")
    for body in ({"verdict": MARK * 100}, {"verdict": "core", "note": MARK * 400}, {"verdict": ["x", MARK]}):
        r = c.post("/api/review/0/3", json=body)
        assert r.status_code == 422 and MARK not in r.text, r.text
        assert r.json()["detail"] and all(set(d) == {"loc", "msg", "type"} for d in r.json()["detail"])
    r = c.post("/api/review/0/3", content='{"verdict": "' + MARK, headers={"content-type": "application/json"})
    assert r.status_code == 422 and MARK not in r.text  # broken JSON
    r = c.post("/api/curate/0/3", json={"id": MARK, "verdict": MARK})
    assert r.status_code == 422 and MARK not in r.text
    r = TestClient(app).post("/login", data={"name": f"<{MARK}>"})
    assert r.status_code == 422 and MARK not in r.text  # a refused name is not shown back


# ---------------------------------------------------------------------- 2. identities
def test_invite_tokens_are_stored_only_as_hashes(ws: Workspace) -> None:
    store = LabelStore(ws.root)
    token = store.invite_labeler("ann")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    with contextlib.closing(sqlite3.connect(store.path)) as con:
        dump = "\n".join(con.iterdump())
    assert token not in dump and hashlib.sha256(token.encode()).hexdigest() in dump
    for f in ws.root.glob("labels.sqlite*"):  # the database and its WAL
        assert token.encode() not in f.read_bytes()
    assert store.labeler_for_token(token).name == "ann"  # type: ignore[union-attr]
    assert store.labeler_for_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.labeler_for_token("") is None and store.labeler_for_token("x' OR 1=1 --") is None
    who = store.identity("ann")
    assert who is not None and who.kind == "token" and who.verified and who.revoked is None


def test_a_new_invite_replaces_the_old_and_removal_ends_access(ws: Workspace) -> None:
    app = create_app(ws.root, require_tokens=True)
    store: LabelStore = app.state.store
    old = store.invite_labeler("ann")
    c = joined(app, old)
    assert c.get("/api/progress").json()["labeler"] == "ann"
    new = store.invite_labeler("ann")
    assert new != old
    assert c.get("/api/progress").status_code == 401  # the old sessions end
    assert TestClient(app).get("/join", params={"token": old}).status_code == 404
    c = joined(app, new)
    assert c.post("/api/review/0/3", json={"verdict": "spurious"}).status_code == 200
    store.remove_labeler("ann")
    assert c.get("/api/progress").status_code == 401
    assert TestClient(app).get("/join", params={"token": new}).status_code == 404
    assert TestClient(app).post("/join", data={"token": new}, follow_redirects=False).status_code == 404
    # the verdict stays, recorded under the identity that gave it
    assert store.component_verdicts(0, 3)["ann"]["verdict"] == "spurious"
    with pytest.raises(ValueError, match=r"no labeler 'nobody' in .*labels.sqlite; known: ann"):
        store.remove_labeler("nobody")
    # a removed name cannot be typed either (simple mode)
    r = TestClient(create_app(ws.root)).post("/login", data={"name": "ann"}, follow_redirects=False)
    assert r.status_code == 403 and COOKIE not in r.cookies


def test_tokens_required_mode_refuses_names_and_name_sessions(ws: Workspace) -> None:
    app = create_app(ws.root, require_tokens=True)
    store: LabelStore = app.state.store
    c = TestClient(app)
    page = c.get("/login")
    assert 'id="tokens-only"' in page.text and 'id="name"' not in page.text
    r = c.post("/login", data={"name": "mallory", "next": "/"}, follow_redirects=False)
    assert r.status_code == 403 and COOKIE not in r.cookies and "mallory" not in store.labelers()
    # a session of a typed name (made when the same store was served in simple mode) does not count here
    store.add_labeler("carl")
    c.cookies.set(COOKIE, store.open_session("carl"))
    assert c.get("/", follow_redirects=False).status_code == 303
    assert c.post("/api/review/0/3", json={"verdict": "core"}).status_code == 401
    # a forged cookie (a name, or a random id) is no session
    for forged in ("ann", "A" * 43, "../../etc"):
        c.cookies.set(COOKIE, forged)
        assert c.get("/api/progress").status_code == 401
    assert _count(ws, "component_verdicts") == 0


def test_the_invite_link_page_changes_nothing_until_the_button(ws: Workspace) -> None:
    app = create_app(ws.root, require_tokens=True)
    token = app.state.store.invite_labeler("ann")
    c = TestClient(app)
    page = c.get("/join", params={"token": token, "next": "/review"})
    assert page.status_code == 200 and COOKIE not in page.cookies
    assert 'id="invited-name">ann<' in page.text and page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "same-origin"  # the link (in the Referer) stays on this server
    assert c.get("/api/progress").status_code == 401
    r = c.post("/join", data={"token": token, "next": "/review"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/review"
    assert "samesite=lax" in r.headers["set-cookie"].lower() and "httponly" in r.headers["set-cookie"].lower()
    assert c.get("/api/progress").json()["labeler"] == "ann"
    assert "name not verified" not in c.get("/").text
    bad = TestClient(app).get("/join", params={"token": "nope"})
    assert bad.status_code == 404 and 'id="join-error"' in bad.text


def test_agreement_counts_distinct_identities_not_requests(ws: Workspace) -> None:
    """One invite link used from two browsers is one labeler: its two "spurious" are one vote."""
    app = create_app(ws.root, require_tokens=True)
    store: LabelStore = app.state.store
    ann = store.invite_labeler("ann")
    first, second = joined(app, ann), joined(app, ann)
    for c in (first, second):
        res = c.post("/api/review/0/3", json={"verdict": "spurious"}).json()
        assert res["labeler"] == "ann" and res["votes"]["spurious"] == 1 and res["agreed"] is False
    for c in (first, second):
        c.post("/api/curate/0/3", json={"id": "pool/p_0_3_0.png", "verdict": "out"})
    assert store.agreed_components() == {} and store.accepted_images() == {}
    bob = joined(app, store.invite_labeler("bob"))
    assert bob.post("/api/review/0/3", json={"verdict": "spurious"}).json()["agreed"] is True
    bob.post("/api/curate/0/3", json={"id": "pool/p_0_3_0.png", "verdict": "out"})
    assert store.agreed_components() == {0: [3]}
    assert store.accepted_images()[(0, 3)][0]["labelers"] == ["ann", "bob"]
    rows = list(csv.DictReader(io.StringIO(store.labels_csv())))
    assert {(r["labeler"], r["labeler_kind"]) for r in rows} == {("ann", "token"), ("bob", "token")}
    doc = store.labels_document()
    assert [(i["name"], i["kind"]) for i in doc["identities"]] == [("ann", "token"), ("bob", "token")]


def test_simple_mode_says_names_are_not_verified(app: Any) -> None:
    store: LabelStore = app.state.store
    page = TestClient(app).get("/login").text
    assert 'id="names-unverified"' in page and "names are not verified" in page
    c = named(app, "ann")
    assert 'id="unverified"' in c.get("/").text and "(name, not verified)" in c.get("/").text
    assert store.identity("ann").kind == "name"  # type: ignore[union-attr]
    # invite links work on loopback too, and a typed name cannot take an invited or simulated identity
    token = store.invite_labeler("bob")
    assert 'id="unverified"' not in joined(app, token).get("/").text
    store.add_labeler("sim-a", kind="simulated")
    for name, why in (("bob", "invited labeler"), ("sim-a", "simulated labeler")):
        r = TestClient(app).post("/login", data={"name": name}, follow_redirects=False)
        assert r.status_code == 403 and COOKIE not in r.cookies and why in r.text
    assert "(invited)" in c.get("/").text and "(simulated)" in c.get("/").text


def test_sessions_expire_and_sign_out_ends_them(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import spurious.label.store as store_module

    c = named(app, "ann")
    session = c.cookies.get(COOKIE)
    assert app.state.store.session_labeler(session).name == "ann"
    now = time.time()
    monkeypatch.setattr(store_module, "time", SimpleNamespace(time=lambda: now + SESSION_SECONDS + 1))
    assert c.get("/api/progress").status_code == 401
    monkeypatch.undo()
    assert c.get("/api/progress").status_code == 200
    c.post("/logout")
    assert app.state.store.session_labeler(session) is None
    c.cookies.set(COOKIE, session)  # a stolen copy of the cookie is dead too
    assert c.get("/api/progress").status_code == 401


def test_images_need_a_session(app: Any, ws: Workspace) -> None:
    from spurious.label.store import file_key

    url = f"/img/{file_key(ws.root / 'visualize' / 'class_00000' / 'npfv_l0003.png')}"
    assert TestClient(app).get(url).status_code == 401
    assert named(app, "ann").get(url).status_code == 200


def test_store_identity_errors(ws: Workspace) -> None:
    store = LabelStore(ws.root, sync=True)
    store.add_labeler("sim", kind="simulated")
    with pytest.raises(ValueError, match=r"labeler 'sim' is an identity of kind 'simulated', not 'name'"):
        store.add_labeler("sim")
    with pytest.raises(ValueError, match=r"'sim' is a simulated labeler \(a script\)"):
        store.invite_labeler("sim")
    with pytest.raises(ValueError, match=r"an invited labeler needs a token: use invite_labeler"):
        store.add_labeler("x", kind="token")
    with pytest.raises(ValueError, match=r"unknown labeler kind 'robot'; valid: name, simulated"):
        store.add_labeler("x", kind="robot")
    with pytest.raises(ValueError, match=r"no active labeler 'ghost'"):
        store.open_session("ghost")
    store.invite_labeler("ann")
    with pytest.raises(ValueError, match=r"'ann' is an identity of kind 'token', not 'name'; it signs in with"):
        store.add_labeler("ann")
    store.remove_labeler("ann")
    with pytest.raises(ValueError, match=r"labeler 'ann' was removed from this label store"):
        store.add_labeler("ann")
    # a typed-name identity becomes an invited one, keeping its verdicts
    store.set_component_verdict("dora", 0, 3, "core")
    store.invite_labeler("dora")
    dora = store.identity("dora")
    assert dora is not None and dora.kind == "token"
    assert store.component_verdicts(0, 3)["dora"]["verdict"] == "core"


# the label schema as first released (version 1): a file written by spurious before identities existed
_V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE components (class INTEGER NOT NULL, component INTEGER NOT NULL, rank INTEGER NOT NULL,
    record TEXT NOT NULL, PRIMARY KEY (class, component));
CREATE TABLE candidates (class INTEGER NOT NULL, component INTEGER NOT NULL, id TEXT NOT NULL, rank INTEGER NOT NULL,
    path TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (class, component, id));
CREATE TABLE files (key TEXT PRIMARY KEY, path TEXT NOT NULL UNIQUE);
CREATE TABLE labelers (name TEXT PRIMARY KEY, created TEXT NOT NULL);
CREATE TABLE component_verdicts (labeler TEXT NOT NULL, class INTEGER NOT NULL, component INTEGER NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('spurious', 'core', 'unsure')),
    note TEXT NOT NULL DEFAULT '', created TEXT NOT NULL, updated TEXT NOT NULL,
    PRIMARY KEY (labeler, class, component));
CREATE INDEX component_verdicts_item ON component_verdicts (class, component);
CREATE TABLE image_verdicts (labeler TEXT NOT NULL, class INTEGER NOT NULL, component INTEGER NOT NULL,
    id TEXT NOT NULL, verdict TEXT NOT NULL CHECK (verdict IN ('in', 'out', 'trash')),
    created TEXT NOT NULL, updated TEXT NOT NULL, PRIMARY KEY (labeler, class, component, id));
CREATE INDEX image_verdicts_item ON image_verdicts (class, component, id);
CREATE TABLE history (seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, labeler TEXT NOT NULL,
    task TEXT NOT NULL CHECK (task IN ('review', 'curate')),
    class INTEGER NOT NULL, component INTEGER NOT NULL, id TEXT, verdict TEXT NOT NULL, note TEXT);
"""


def test_a_version_1_label_file_is_migrated_in_place(ws: Workspace) -> None:
    path = ws.root / "labels.sqlite"
    t = "2026-01-01T00:00:00+00:00"
    with contextlib.closing(sqlite3.connect(path)) as con:
        con.executescript(_V1_SCHEMA)
        con.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("format", "spurious-labels"), ("model_fingerprint", ws.model_fingerprint),
            ("model_spec", ws.model_spec), ("created", t), ("package_version", "0.1")])
        con.executemany("INSERT INTO labelers VALUES (?, ?)", [("ann", t), ("bob", t)])
        con.executemany("INSERT INTO component_verdicts VALUES (?, 0, 3, ?, ?, ?, ?)",
                        [("ann", "spurious", "water", t, t), ("bob", "spurious", "", t, t)])
        con.executemany("INSERT INTO image_verdicts VALUES (?, 0, 3, 'pool/p_0_3_1.png', 'out', ?, ?)",
                        [("ann", t, t), ("bob", t, t)])
        con.execute("PRAGMA user_version = 1")
        con.commit()
    store = LabelStore(ws.root, sync=True)
    assert store.schema_version == 2
    assert store.agreed_components() == {0: [3]}
    assert store.component_verdicts(0, 3)["ann"]["note"] == "water"
    assert store.accepted_images()[(0, 3)][0]["labelers"] == ["ann", "bob"]
    assert [(w.name, w.kind, w.created, w.revoked) for w in store.identities()] == [
        ("ann", "name", t, None), ("bob", "name", t, None)]
    # the migrated file works like a new one: invites, sessions, verdicts
    token = store.invite_labeler("cleo")
    assert store.session_labeler(store.open_session("cleo")).name == "cleo"  # type: ignore[union-attr]
    assert store.labeler_for_token(token).name == "cleo"  # type: ignore[union-attr]
    LabelStore(ws.root)  # opening again migrates nothing
    # the same tables and columns as a store created new
    fresh = make_label_ws(ws.root.parent / "fresh")
    LabelStore(fresh.root)

    def columns(p: Path) -> dict[str, list[tuple[Any, ...]]]:
        with contextlib.closing(sqlite3.connect(p)) as con:
            names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index') "
                                               "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
            return {n: con.execute(f"PRAGMA index_info({n})").fetchall() or con.execute(f"PRAGMA table_info({n})")
                    .fetchall() for n in names}

    assert columns(path) == columns(fresh.root / "labels.sqlite")


def test_cli_invites_lists_and_removes(ws: Workspace, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(ws.root)
    assert main(["label", root, "--add-labeler", "ann", "--port", "9000"]) == 0
    out = capsys.readouterr().out
    link = re.search(r"http://127\.0\.0\.1:9000/join\?token=([A-Za-z0-9_-]+)\s*$", out)
    assert link is not None and "shown once" in out
    app = create_app(ws.root, require_tokens=True)
    c = joined(app, link.group(1))
    assert c.get("/api/progress").json()["labeler"] == "ann"
    monkeypatch.setattr(socket, "getfqdn", lambda: "labelhost.example")
    assert main(["label", root, "--add-labeler", "ann", "--host", "0.0.0.0", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["name"] == "ann" and doc["renewed"] is True
    assert doc["link"].startswith("http://labelhost.example:8765/join?token=")
    assert c.get("/api/progress").status_code == 401  # the first link's session ended
    LabelStore(root).add_labeler("sim", kind="simulated")
    assert main(["label", root, "--list-labelers", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["labelers"]
    assert [(w["name"], w["kind"], w["revoked"]) for w in listed] == [
        ("ann", "token", None), ("sim", "simulated", None)]
    assert main(["label", root, "--remove-labeler", "ann"]) == 0
    assert "removed ann" in capsys.readouterr().out
    assert TestClient(app).get("/join", params={"token": doc["link"].split("=", 1)[1]}).status_code == 404
    for argv, pattern in ((["label", root, "--remove-labeler", "nobody"], r"no labeler 'nobody'"),
                          (["label", "export", root, "--out", "x.csv", "--add-labeler", "x"],
                           r"--add-labeler belongs to `spurious label WS`, not to `export`"),
                          (["label", "sync", root, "--list-labelers"], r"--list-labelers belongs to"),
                          (["label", root, "--add-labeler", "bad name!"], r"invalid labeler name")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert re.search(pattern, err), err


# ---------------------------------------------------------------------- 3. cross-site requests
def _post_routes(app: Any) -> list[str]:
    paths = []
    for route in app.routes:
        if isinstance(route, APIRoute) and "POST" in route.methods:
            paths.append(route.path.replace("{k}", "0").replace("{l}", "3"))
    return sorted(paths)


def test_every_state_changing_route_refuses_other_origins(app: Any, ws: Workspace) -> None:
    store: LabelStore = app.state.store
    token = store.invite_labeler("ann")
    c = named(app, "bob")
    routes = _post_routes(app)
    assert routes == ["/api/curate/0/3", "/api/review/0/3", "/api/sync", "/join", "/login", "/logout"]
    bodies: dict[str, dict[str, Any]] = {
        "/api/curate/0/3": {"json": {"id": "pool/p_0_3_0.png", "verdict": "out"}},
        "/api/review/0/3": {"json": {"verdict": "spurious"}}, "/api/sync": {},
        "/join": {"data": {"token": token}}, "/login": {"data": {"name": "mallory"}}, "/logout": {}}
    foreign = ({"origin": "http://evil.example"}, {"origin": "null"}, {"referer": "http://evil.example/page"},
               {"origin": "http://127.0.0.1:9999"}, {"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"})
    for path in routes:
        for headers in foreign:
            r = c.post(path, headers=headers, follow_redirects=False, **bodies[path])
            assert r.status_code == 403 and "set-cookie" not in r.headers, (path, headers, r.status_code)
    for method in ("put", "delete", "patch"):
        assert getattr(c, method)("/api/sync", headers={"origin": "http://evil.example"}).status_code == 403
    # nothing changed: bob is still signed in, no verdict, no new labeler
    assert c.get("/api/progress").json()["labeler"] == "bob"
    assert store.labelers() == ["ann", "bob"] and _count(ws, "component_verdicts") == 0
    assert _count(ws, "image_verdicts") == 0
    # the same requests from this server's own pages pass
    own = {"origin": "http://testserver"}
    assert c.post("/api/review/0/3", headers=own, json={"verdict": "spurious"}).status_code == 200
    assert c.post("/api/review/0/3", headers={"referer": "http://testserver/review/0/3"},
                  json={"verdict": "core"}).status_code == 200
    r = TestClient(app).post("/login", headers={**own, "sec-fetch-site": "same-origin"}, data={"name": "cleo"},
                             follow_redirects=False)
    assert r.status_code == 303 and COOKIE in r.cookies


def test_login_csrf_cannot_switch_the_signed_in_labeler(app: Any) -> None:
    c = named(app, "ann")
    r = c.post("/login", data={"name": "mallory", "next": "/"}, headers={"origin": "http://evil.example"},
               follow_redirects=False)
    assert r.status_code == 403
    assert c.get("/api/progress").json()["labeler"] == "ann" and "mallory" not in app.state.store.labelers()


@pytest.mark.parametrize("headers,ok", [
    ({}, True), ({"host": "127.0.0.1:8765", "origin": "http://127.0.0.1:8765"}, True),
    ({"host": "localhost:8765", "referer": "http://localhost:8765/review/0/3?x=1"}, True),
    ({"host": "[::1]:8765", "origin": "http://[::1]:8765"}, True),
    ({"host": "example.org", "origin": "https://example.org"}, True),  # behind a TLS proxy
    ({"host": "example.org:80", "origin": "http://example.org"}, True),
    ({"host": "127.0.0.1:8765", "origin": "http://127.0.0.1:8766"}, False),
    ({"host": "127.0.0.1:8765", "origin": "http://localhost:8765"}, False),
    ({"host": "127.0.0.1:8765", "origin": "null"}, False),
    ({"host": "127.0.0.1:8765", "origin": "file://"}, False),
    ({"host": "127.0.0.1:8765", "referer": "http://evil.example/"}, False),
    ({"host": "127.0.0.1:8765", "sec-fetch-site": "cross-site"}, False),
    ({"host": "127.0.0.1:8765", "sec-fetch-site": "same-origin"}, True),
    ({"origin": "http://127.0.0.1:8765"}, False),  # no Host to compare with
])
def test_same_origin_rule(headers: dict[str, str], ok: bool) -> None:
    from starlette.datastructures import Headers

    assert same_origin(Headers(headers)) is ok


# ---------------------------------------------------------------------- 4. huge integers in URLs
@pytest.mark.parametrize("method,path,body", [
    ("get", f"/review/{HUGE}/1", None), ("get", f"/review/0/{HUGE}", None), ("get", f"/review/-{HUGE}/1", None),
    ("get", f"/class/{HUGE}", None), ("get", f"/curate/{HUGE}/1", None), ("get", f"/curate/0/{HUGE}", None),
    ("post", f"/api/review/{HUGE}/1", {"verdict": "core"}), ("post", f"/api/review/0/{HUGE}", {"verdict": "core"}),
    ("post", f"/api/curate/{HUGE}/3", {"id": "pool/p_0_3_0.png", "verdict": "in"}),
])
def test_huge_integers_in_item_urls_are_404(ws: Workspace, method: str, path: str, body: Any) -> None:
    c = TestClient(create_app(ws.root), raise_server_exceptions=False)
    c.post("/login", data={"name": "ann"})
    r = c.get(path) if method == "get" else c.post(path, json=body)
    assert r.status_code == 404, (path, r.status_code, r.text[:200])


def test_huge_integers_name_no_item_in_the_store(ws: Workspace) -> None:
    from spurious.label import UnknownItemError

    store = LabelStore(ws.root, sync=True)
    big = 10**30
    with pytest.raises(UnknownItemError, match="is not registered"):
        store.component(big, 1)
    with pytest.raises(UnknownItemError, match="is not registered"):
        store.set_component_verdict("ann", 0, big, "core")
    with pytest.raises(UnknownItemError, match="not a registered candidate"):
        store.set_image_verdict("ann", big, 3, "pool/p_0_3_0.png", "in")
    assert store.candidates(0, big) == [] and store.components(cls=big) == []
    assert store.curate_components(cls=-big) == []


# ---------------------------------------------------------------------- 5. CSV injection
FORMULAS = ["=HYPERLINK(\"http://evil.example\",\"x\")", "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]


def test_csv_export_neutralises_formula_cells(tmp_path: Path) -> None:
    ws = make_label_ws(tmp_path, class_names=["=cmd|' /C calc'!A0", "dog", "boat"])
    path = ws.root / "retrieve" / "candidates.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs[0]["id"] = "@evil"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    store = LabelStore(ws.root, sync=True)
    comps = [(0, 3), (0, 1), (0, 7), (1, 2), (1, 5), (0, 3)]
    for i, note in enumerate(FORMULAS):
        k, l = comps[i % 5]
        store.set_component_verdict(f"u{i}", k, l, "core", note=note)
    store.set_component_verdict("plain", 1, 2, "core", note="a = b, fine")
    store.set_image_verdict("ann", 0, 3, "@evil", "out")
    for text in (store.labels_csv(), store.export_labels(tmp_path / "l.csv").read_bytes().decode("utf-8"),
                 named(create_app(ws.root), "ann").get("/export/labels.csv").text):
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        notes = {r["labeler"]: r["note"] for r in rows if r["task"] == "review"}
        assert [notes[f"u{i}"] for i in range(len(FORMULAS))] == ["'" + n for n in FORMULAS]
        assert notes["plain"] == "a = b, fine"
        assert {r["class_name"] for r in rows if r["class"] == "0"} == {"'=cmd|' /C calc'!A0"}
        assert [r["id"] for r in rows if r["task"] == "curate"] == ["'@evil"]
        for r in rows:  # no cell of any export starts a formula
            assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for v in r.values()), r
    # the JSON export keeps the text as written
    doc = store.labels_document()
    assert sorted(v["note"] for v in doc["verdicts"] if v["labeler"].startswith("u")) == sorted(FORMULAS)
