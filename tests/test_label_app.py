"""HTTP tests of the labelling web app (every route), its safety rules, concurrency, and the CLI."""

from __future__ import annotations

import contextlib
import html
import json
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
from fastapi.testclient import TestClient
from test_label_store import make_label_ws

from spurious.cli import main
from spurious.label import LabelStore
from spurious.label.app import COOKIE, Filter, create_app, is_loopback, serve
from spurious.label.store import FILTERS, file_key
from spurious.workspace import Workspace

NASTY = '<b>cat</b> & <script>alert("x")</script>'


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return make_label_ws(tmp_path, class_names=[NASTY, "dog", "boat"])


def client(app: Any, name: str | None = None, **kw: Any) -> TestClient:
    c = TestClient(app, **kw)
    if name is not None:
        r = c.post("/login", data={"name": name, "next": "/"}, follow_redirects=False)
        assert r.status_code == 303, r.text
    return c


@pytest.fixture
def app(ws: Workspace) -> Any:
    return create_app(ws.root)


def _db(ws: Workspace, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(ws.root / "labels.sqlite")) as con:
        return con.execute(sql, params).fetchall()


# ---------------------------------------------------------------------- sign-in
def test_pages_need_a_name_and_the_cookie_keeps_it(app: Any) -> None:
    c = client(app)
    for path in ("/", "/review", "/review/0/3", "/curate", "/curate/0/3", "/class/0"):
        r = c.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=%2F"), path
    for method, path in (("get", "/api/progress"), ("post", "/api/sync"), ("get", "/export/labels.json"),
                         ("get", "/export/labels.csv"), ("get", "/export/components.json")):
        assert getattr(c, method)(path).status_code == 401, path
    assert c.post("/api/review/0/3", json={"verdict": "core"}).status_code == 401
    assert c.post("/api/curate/0/3", json={"id": "pool/p_0_3_0.png", "verdict": "in"}).status_code == 401
    page = c.get("/login?next=/review/0/1")
    assert page.status_code == 200 and 'name="next" value="/review/0/1"' in page.text
    r = c.post("/login", data={"name": "  ann ", "next": "/review/0/1"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/review/0/1"
    session = c.cookies.get(COOKIE)
    assert session is not None and "ann" not in session and len(session) >= 40  # an opaque session id
    assert c.get("/").status_code == 200
    assert _db_names(app) == ["ann"]
    r = c.post("/logout", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert c.get("/", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("name", ["李雷", "Zoë Müller", "a+b c-d", "bob.smith@lab"])
def test_any_valid_name_survives_the_cookie(app: Any, name: str) -> None:
    c = client(app, name)
    assert c.get("/api/progress").json()["labeler"] == name
    assert c.post("/api/review/0/3", json={"verdict": "core"}).json()["labeler"] == name
    assert app.state.store.component_verdicts(0, 3)[name]["verdict"] == "core"


def _db_names(app: Any) -> list[str]:
    return app.state.store.labelers()


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", ""])
def test_login_never_redirects_off_site(app: Any, target: str) -> None:
    c = client(app)
    assert 'name="next" value="/"' in c.get("/login", params={"next": target}).text
    r = c.post("/login", data={"name": "ann", "next": target}, follow_redirects=False)
    assert r.headers["location"] == "/"


def test_a_bad_name_is_refused_and_not_repeated(app: Any) -> None:
    c = client(app)
    r = c.post("/login", data={"name": "<img src=x onerror=alert(1)>", "next": "/"})
    assert r.status_code == 422
    assert "<img src=x" not in r.text and "onerror" not in r.text  # the error page does not echo the name
    assert "invalid labeler name" in r.text and COOKIE not in r.cookies
    c.cookies.set(COOKIE, "<bad>")  # a forged cookie counts as no name
    assert c.get("/", follow_redirects=False).status_code == 303


# ---------------------------------------------------------------------- review
def test_review_page_shows_the_component(app: Any, ws: Workspace) -> None:
    c = client(app, "ann")
    r = c.get("/review/0/1?filter=all")
    assert r.status_code == 200
    rec = json.loads((ws.root / "visualize" / "class_00000" / "components.json").read_text())["components"][1]
    assert rec["component"] == 1
    body = r.text
    assert "5.000" in body and "0.600" in body and "4.000" in body  # eigenvalue, NPFV probability, NPFV alpha
    for t in rec["top_images"]:
        assert f"{t['alpha']:.3f}" in body
    # the NPFV, its heatmap and 5 images + 5 heatmaps are served, byte for byte
    folder = ws.root / "visualize" / "class_00000"
    names = [rec["npfv_png"], rec["npfv_heatmap_png"]] + [t[k] for t in rec["top_images"] for k in ("png", "heatmap_png")]
    for name in names:
        url = f"/img/{file_key(folder / name)}"
        assert f'src="{url}"' in body
        got = c.get(url)
        assert got.status_code == 200 and got.content == (folder / name).read_bytes()
        assert got.headers["content-type"] == "image/png"
    # previous/next in review order (rank): 3 -> 1 -> 7
    assert 'href="/review/0/3?filter=all"' in body and 'href="/review/0/7?filter=all"' in body
    assert c.get("/review/0/9").status_code == 404
    assert c.get("/review/0/1?filter=mine").status_code == 422
    assert c.get("/review/0/1?cls=x").status_code == 422
    assert c.get("/review/0/1?cls=99").status_code == 422
    assert c.get("/review/0/1?cls=%C2%B2").status_code == 422  # a unicode digit


def test_review_verdicts_are_stored_per_labeler_and_next_follows_the_filter(app: Any, ws: Workspace) -> None:
    ann, bob = client(app, "ann"), client(app, "bob")
    r = ann.get("/review", follow_redirects=False)  # the first unlabeled component in (class, rank) order
    assert r.status_code == 303 and r.headers["location"] == "/review/0/3?filter=unlabeled"
    res = ann.post("/api/review/0/3?filter=unlabeled", json={"verdict": "spurious", "note": "water"}).json()
    assert res["next"] == "/review/0/1?filter=unlabeled" and res["votes"] == {"spurious": 1, "core": 0, "unsure": 0}
    res = ann.post("/api/review/0/7?filter=unlabeled&cls=0", json={"verdict": "core"}).json()
    assert res["next"] == "/review/0/1?filter=unlabeled&cls=0"  # wraps around to what is still unlabeled
    res = bob.post("/api/review/0/3?filter=all", json={"verdict": "spurious"}).json()
    assert res["agreed"] is True and res["votes"]["spurious"] == 2 and res["next"] == "/review/0/1?filter=all"
    assert sorted(_db(ws, "SELECT labeler, class, component, verdict, note FROM component_verdicts")) == [
        ("ann", 0, 3, "spurious", "water"), ("ann", 0, 7, "core", ""), ("bob", 0, 3, "spurious", "")]
    assert ann.get("/review", follow_redirects=False).headers["location"] == "/review/0/1?filter=unlabeled"
    assert bob.get("/review?filter=disagreements", follow_redirects=False).status_code == 200  # none yet
    bob.post("/api/review/0/7", json={"verdict": "spurious"})
    assert bob.get("/review?filter=disagreements", follow_redirects=False).headers["location"] == \
        "/review/0/7?filter=disagreements"
    page = ann.get("/review/0/3?filter=all").text
    assert "agreed spurious" in page and "water" in page
    for body, status in (({"verdict": "maybe"}, 422), ({"verdict": "in"}, 422), ({}, 422),
                         ({"verdict": "core", "note": "x" * 2001}, 422)):
        assert ann.post("/api/review/0/3", json=body).status_code == status
    assert ann.post("/api/review/0/3?filter=bogus", json={"verdict": "core"}).status_code == 422
    assert ann.post("/api/review/2/0", json={"verdict": "core"}).status_code == 404
    assert _db(ws, "SELECT count(*) FROM component_verdicts") == [(4,)]


def test_review_done_page_when_nothing_matches(app: Any) -> None:
    c = client(app, "ann")
    for k, l in ((0, 3), (0, 1), (0, 7), (1, 2), (1, 5)):
        c.post(f"/api/review/{k}/{l}", json={"verdict": "unsure"})
    r = c.get("/review")
    assert r.status_code == 200 and 'id="done"' in r.text and "You labelled 5 of 5" in r.text


# ---------------------------------------------------------------------- curate
def test_curate_grid_and_verdicts(app: Any, ws: Workspace) -> None:
    ann, bob = client(app, "ann"), client(app, "bob")
    assert ann.get("/curate", follow_redirects=False).headers["location"] == "/curate/0/3?filter=unlabeled"
    page = ann.get("/curate/0/3").text
    cands = [json.loads(line) for line in (ws.root / "retrieve" / "candidates.jsonl").read_text().splitlines()]
    mine = [c for c in cands if (c["class"], c["component"]) == (0, 3)]
    assert page.count('class="cand') == len(mine) == 4
    for cand in mine:
        url = f"/img/{file_key(cand['path'])}"
        assert f'src="{url}"' in page
        assert ann.get(url).content == Path(cand["path"]).read_bytes()
    res = ann.post("/api/curate/0/3", json={"id": "pool/p_0_3_1.png", "verdict": "out"}).json()
    assert res["counts"] == {"in": 0, "out": 1, "trash": 0} and res["accepted"] is False
    res = bob.post("/api/curate/0/3", json={"id": "pool/p_0_3_1.png", "verdict": "out"}).json()
    assert res["counts"]["out"] == 2 and res["accepted"] is True
    bob.post("/api/curate/0/3", json={"id": "pool/p_0_3_2.png", "verdict": "trash"})
    ann.post("/api/curate/0/3", json={"id": "pool/p_0_3_2.png", "verdict": "in"})
    assert sorted(_db(ws, "SELECT labeler, id, verdict FROM image_verdicts")) == [
        ("ann", "pool/p_0_3_1.png", "out"), ("ann", "pool/p_0_3_2.png", "in"),
        ("bob", "pool/p_0_3_1.png", "out"), ("bob", "pool/p_0_3_2.png", "trash")]
    assert ann.get("/curate?filter=disagreements", follow_redirects=False).headers["location"] == \
        "/curate/0/3?filter=disagreements"
    page = ann.get("/curate/0/3?filter=all").text
    assert page.count("disagreement</span>") == 1 and 'href="/curate/1/5?filter=all"' in page
    for body in ({"id": "pool/p_0_3_1.png", "verdict": "spurious"}, {"id": "pool/p_0_3_1.png"},
                 {"id": "", "verdict": "out"}):
        assert ann.post("/api/curate/0/3", json=body).status_code == 422
    assert ann.post("/api/curate/0/3", json={"id": "pool/p_1_5_0.png", "verdict": "out"}).status_code == 404
    assert ann.get("/curate/2/0").status_code == 404
    for cand in mine:
        ann.post("/api/curate/0/3", json={"id": cand["id"], "verdict": "trash"})
    for cand in cands[4:]:
        ann.post("/api/curate/1/5", json={"id": cand["id"], "verdict": "trash"})
    r = ann.get("/curate")
    assert r.status_code == 200 and "You judged 7 of 7" in r.text


# ---------------------------------------------------------------------- overview, progress, exports, sync
def _place(ann: TestClient, bob: TestClient) -> None:
    for c in (ann, bob):
        c.post("/api/review/0/1", json={"verdict": "spurious"})
        c.post("/api/curate/1/5", json={"id": "pool/p_1_5_2.png", "verdict": "out"})
    ann.post("/api/review/1/2", json={"verdict": "core"})
    bob.post("/api/review/1/2", json={"verdict": "unsure"})


def test_overview_progress_and_class_page(app: Any) -> None:
    ann, bob = client(app, "ann"), client(app, "bob")
    _place(ann, bob)
    p = ann.get("/api/progress").json()
    assert p == {"labeler": "ann", "min_agree": 2, "components": 5, "components_mine": 2, "components_agreed": 1,
                 "components_disagreements": 1, "candidates": 7, "candidates_mine": 1, "candidates_accepted": 1,
                 "candidates_disagreements": 0}
    page = ann.get("/").text
    assert "<b>2</b> of 5 components" in page and "<b>1</b> of 7 candidates" in page
    assert 'href="/class/0"' in page and 'href="/class/1"' in page
    cls = ann.get("/class/1").text
    assert "<b>ann</b>: core" in cls and "<b>bob</b>: unsure" in cls and 'href="/curate/1/5?filter=all&amp;cls=1"' in cls
    assert ann.get("/class/2").status_code == 404


def test_exports(app: Any, ws: Workspace) -> None:
    ann, bob = client(app, "ann"), client(app, "bob")
    _place(ann, bob)
    comps = ann.get("/export/components.json")
    assert comps.json() == {"format": "spurious-components", "version": 1, "model_fingerprint": ws.model_fingerprint,
                            "classes": {"0": [1]}, "source": "labels: 2 labelers, min_agree=2"}
    assert "attachment" in comps.headers["content-disposition"]
    doc = ann.get("/export/labels.json").json()
    assert doc["agreed_components"] == {"0": [1]} and [r["id"] for r in doc["accepted_images"]] == ["pool/p_1_5_2.png"]
    csv_text = ann.get("/export/labels.csv")
    assert csv_text.headers["content-type"].startswith("text/csv")
    lines = csv_text.text.splitlines()
    assert len(lines) == 1 + 6 and lines[0].startswith("task,class,class_name")


def test_sync_registers_new_artifacts(app: Any, ws: Workspace) -> None:
    c = client(app, "ann")
    line = json.dumps({"class": 1, "component": 2, "rank": 0, "id": "extra", "path": str(ws.root / "manifest.json"),
                       "alpha": 1.0, "votes": 1, "models": 1})
    with open(ws.root / "retrieve" / "candidates.jsonl", "a") as fh:
        fh.write(line + "\n")
    assert c.get("/curate/1/2").status_code == 404
    assert c.post("/api/sync").json() == {"components": 5, "candidates": 8, "files": 68, "classes": [0, 1]}
    assert c.get("/curate/1/2").status_code == 200


def test_a_restarted_app_sees_every_verdict(ws: Workspace) -> None:
    app1 = create_app(ws.root)
    ann, bob = client(app1, "ann"), client(app1, "bob")
    _place(ann, bob)
    del app1, ann, bob
    app2 = create_app(ws.root)
    again = client(app2, "carol")
    assert again.get("/export/components.json").json()["classes"] == {"0": [1]}
    assert LabelStore(ws.root).agreed_components() == {0: [1]}


# ---------------------------------------------------------------------- safety
@pytest.mark.parametrize("path", [
    "/img/../labels.sqlite", "/img/..%2F..%2Fmanifest.json", "/img/%2Fetc%2Fpasswd", "/img/..%2Flabels.sqlite",
    "/img/" + "0" * 24, "/img/" + file_key("/etc/passwd"), "/img/ABCDEF", "/img/%2e%2e",
    "/static/../store.py", "/static/..%2Fstore.py", "/static/%2e%2e/app.py", "/static/../../label/app.py",
    "/labels.sqlite", "/manifest.json",
])
def test_only_registered_files_are_served(app: Any, path: str) -> None:
    c = client(app, "ann")
    r = c.get(path)
    assert r.status_code == 404, (path, r.status_code, r.text[:200])


def test_a_registered_key_pointing_at_a_deleted_file_is_404(app: Any, ws: Workspace) -> None:
    c = client(app, "ann")
    target = ws.root / "visualize" / "class_00000" / "npfv_l0003.png"
    assert c.get(f"/img/{file_key(target)}").status_code == 200
    target.unlink()
    assert c.get(f"/img/{file_key(target)}").status_code == 404
    assert c.get("/static/label.js").status_code == 200


def test_data_and_user_text_are_escaped_on_every_page(tmp_path: Path) -> None:
    ws = make_label_ws(tmp_path, class_names=[NASTY, "dog", "boat"])
    # an image id and a note with markup too
    path = ws.root / "retrieve" / "candidates.jsonl"
    evil_id = '"><img src=x onerror=alert(2)>'
    lines = path.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["id"] = evil_id
    path.write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    app = create_app(ws.root)
    c = client(app, "ann")
    note = "<script>alert('note')</script>"
    assert c.post("/api/review/0/3", json={"verdict": "core", "note": note}).status_code == 200
    assert c.post("/api/curate/0/3", json={"id": evil_id, "verdict": "out"}).status_code == 200
    pages = ["/", "/class/0", "/review/0/3?filter=all", "/curate/0/3?filter=all", "/review?filter=disagreements&cls=0",
             "/login"]
    escaped = html.escape(NASTY, quote=False)
    for p in pages:
        body = c.get(p).text
        assert "<script>alert" not in body and "<img src=x" not in body and "<b>cat</b>" not in body, p
        if p != "/login":
            assert escaped in body.replace("&#34;", '"'), p
        assert "<script src=\"/static/label.js\"></script>" in body
    assert html.escape(note, quote=True).replace("&#x27;", "&#39;") in c.get("/review/0/3?filter=all").text
    assert "alert(2)" in c.get("/curate/0/3?filter=all").text  # shown, but as text
    r = c.get("/")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_verdicts_must_be_json_requests(app: Any, ws: Workspace) -> None:
    """A foreign page can send a form or text/plain POST without a CORS preflight: those are refused."""
    c = client(app, "ann")
    body = json.dumps({"verdict": "core"})
    assert c.post("/api/review/0/3", content=body, headers={"content-type": "text/plain"}).status_code == 422
    assert c.post("/api/review/0/3", data={"verdict": "core"}).status_code == 422
    assert _db(ws, "SELECT count(*) FROM component_verdicts") == [(0,)]
    r = c.get("/login")
    assert "samesite=lax" in client(app).post("/login", data={"name": "x"}, follow_redirects=False) \
        .headers["set-cookie"].lower() and r.status_code == 200


def test_hosts_are_checked_when_asked(ws: Workspace) -> None:
    app = create_app(ws.root, allowed_hosts=["127.0.0.1", "localhost"])
    assert TestClient(app, base_url="http://127.0.0.1:8765").get("/login").status_code == 200
    assert TestClient(app, base_url="http://evil.example").get("/login").status_code == 400


def test_loopback_names() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.5", "::", "example.org"))


def test_serve_warns_off_loopback_and_checks_the_port(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    seen: list[Any] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: seen.append(self.config))
    with pytest.warns(UserWarning, match="binding to 0.0.0.0: only invited labelers can sign in .* plain HTTP"):
        serve(ws.root, host="0.0.0.0", port=0)
    serve(ws.root, host="127.0.0.1", port=0)
    assert [(cfg.host, cfg.port) for cfg in seen] == [("0.0.0.0", 0), ("127.0.0.1", 0)]
    # invite tokens: required beyond loopback, on request on loopback
    assert [cfg.app.state.require_tokens for cfg in seen] == [True, False]
    serve(ws.root, host="127.0.0.1", port=0, require_tokens=True, max_body=4096)
    assert seen[-1].app.state.require_tokens is True and seen[-1].app.state.max_body == 4096
    with pytest.raises(ValueError, match=r"binding to 0.0.0.0 needs invite tokens"):
        serve(ws.root, host="0.0.0.0", port=0, require_tokens=False)
    with pytest.raises(ValueError, match=r"max_body must be an integer >= 1024 \(bytes; default 65536\), got 10"):
        create_app(ws.root, max_body=10)
    with pytest.raises(ValueError, match=r"port must be an integer in 0..65535"):
        serve(ws.root, port=70000)
    with pytest.raises(ValueError, match=r"min_agree must be an integer >= 1, got 0"):
        create_app(ws.root, min_agree=0)
    with pytest.raises(FileNotFoundError, match="not a spurious workspace"):
        create_app(ws.root / "nowhere")


# ---------------------------------------------------------------------- a real server, many writers at once
@contextlib.contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_concurrent_labelers_over_http_lose_no_write(ws: Workspace) -> None:
    n = 40
    comps = [(0, 3), (0, 1), (0, 7), (1, 2), (1, 5)]
    ids = [f"pool/p_0_3_{r}.png" for r in range(4)]
    errors: list[str] = []

    def labeler(name: str, base: str) -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            c.post("/login", data={"name": name, "next": "/"})
            for i in range(n):
                k, l = comps[i % 5]
                r1 = c.post(f"/api/review/{k}/{l}", json={"verdict": ("spurious", "core")[i % 2], "note": f"{i}"})
                r2 = c.post("/api/curate/0/3", json={"id": ids[i % 4], "verdict": ("in", "out", "trash")[i % 3]})
                if r1.status_code != 200 or r2.status_code != 200:
                    errors.append(f"{name} {i}: {r1.status_code} {r2.status_code}")

    with running_server(create_app(ws.root)) as base:
        threads = [threading.Thread(target=labeler, args=(f"user{j}", base)) for j in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert errors == []
    assert _db(ws, "SELECT count(*) FROM history") == [(4 * 2 * n,)]
    assert _db(ws, "SELECT count(*) FROM component_verdicts") == [(4 * 5,)]
    assert _db(ws, "SELECT count(*) FROM image_verdicts") == [(4 * 4,)]
    # each labeler's final verdict on a component is its last write to it
    for pos, (k, l) in enumerate(comps):
        i = max(j for j in range(n) if j % 5 == pos)
        assert set(_db(ws, "SELECT verdict, note FROM component_verdicts WHERE class = ? AND component = ?", k, l)) \
            == {(("spurious", "core")[i % 2], str(i))}


# ---------------------------------------------------------------------- CLI
def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exports(ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(ws.root)
    code, out, err = _cli(capsys, "label", "sync", root, "--json")
    assert code == 0, err
    assert json.loads(out)["components"] == 5 and json.loads(out)["candidates"] == 7
    code, out, err = _cli(capsys, "label", "sync", root)  # the summary comes from the SyncResult
    assert code == 0 and out.strip().startswith("registered 5 components and 7 candidates of ")
    store = LabelStore(root)
    for who in ("ann", "bob"):
        store.set_component_verdict(who, 1, 5, "spurious")
        store.set_image_verdict(who, 0, 3, "pool/p_0_3_3.png", "out")
    code, out, err = _cli(capsys, "label", "components", root, "--out", str(tmp_path / "c.json"))
    assert code == 0, err
    assert "1 agreed spurious components in 1 classes" in out
    assert json.loads((tmp_path / "c.json").read_text())["classes"] == {"1": [5]}
    code, out, err = _cli(capsys, "label", "export", root, "--out", str(tmp_path / "l.csv"))
    assert code == 0, err
    assert out.splitlines() == [f"labels of 2 labelers -> {tmp_path / 'l.csv'}",
                                "1 agreed spurious components, 1 accepted images (min_agree=2)"]
    code, out, err = _cli(capsys, "label", "export", root, "--out", str(tmp_path / "l.csv"), "--json")
    assert code == 0, err
    assert json.loads(out) == {"path": str(tmp_path / "l.csv"), "labelers": ["ann", "bob"], "agreed_components": 1,
                               "accepted_images": 1}
    assert (tmp_path / "l.csv").read_text().startswith("task,class,")
    code, out, err = _cli(capsys, "label", "export", root, "--out", str(tmp_path / "l.txt"), "--format", "json")
    assert code == 0 and json.loads((tmp_path / "l.txt").read_text())["format"] == "spurious-labels"


@pytest.mark.parametrize("argv,pattern", [
    (["label", "export", "{ws}"], r"needs --out FILE"),
    (["label", "components"], r"needs the workspace: spurious label components WS --out FILE"),
    (["label", "frobnicate", "{ws}"], r"unknown form 'frobnicate'"),
    (["label", "{ws}", "--out", "x.json"], r"--out belongs to `spurious label export\|components WS`"),
    (["label", "components", "{ws}", "--out", "c.json", "--format", "csv"], r"--format belongs to"),
    (["label", "sync", "{tmp}/nowhere"], r"not a spurious workspace"),
    (["label", "{tmp}/nowhere", "--no-browser"], r"not a spurious workspace"),
    (["label", "{ws}", "--port", "99999", "--no-browser"], r"port must be an integer in 0..65535"),
    (["label", "export", "{ws}", "--out", "x.json", "--min-agree", "0"], r"min_agree must be an integer >= 1"),
])
def test_cli_errors(ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                    pattern: str) -> None:
    argv = [a.format(ws=ws.root, tmp=tmp_path) for a in argv]
    code, out, err = _cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("spurious label: error:") and len(err.strip().splitlines()) == 1
    import re

    assert re.search(pattern, err), err


def test_cli_serves_with_the_given_options(ws: Workspace, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import spurious.label.app as app_module

    import functools

    calls: list[dict[str, Any]] = []
    # the stand-in keeps serve's signature: the CLI reads its defaults from there
    monkeypatch.setattr(app_module, "serve", functools.wraps(app_module.serve)(lambda ws, **kw: calls.append({"ws": ws, **kw})))
    code, _, err = _cli(capsys, "label", str(ws.root), "--port", "9000", "--no-browser", "--min-agree", "3")
    assert code == 0, err
    assert calls == [{"ws": str(ws.root), "host": "127.0.0.1", "port": 9000, "min_agree": 3, "open_browser": False,
                      "log_level": "info", "require_tokens": None}]
    code, _, err = _cli(capsys, "label", str(ws.root), "--host", "0.0.0.0", "--require-tokens", "--max-body", "4096")
    assert code == 0, err
    assert calls[-1]["host"] == "0.0.0.0" and calls[-1]["require_tokens"] is True and calls[-1]["max_body"] == 4096


def test_reviews_what_the_visualize_stage_wrote(tmp_path: Path) -> None:
    """The real stage chain (extract -> npca -> visualize on a tiny CNN) feeds the review pages."""
    from conftest import tiny_classifier, write_images

    from spurious.extract import extract
    from spurious.npca import npca
    from spurious.visualize import visualize

    clf = tiny_classifier(num_classes=2)
    data = write_images(tmp_path / "data", {"a": 6, "b": 6}, seed=1)
    root = tmp_path / "ws"
    extract(root, model=clf, data=f"folder:{data}", num_workers=0, progress=False, dtype="float32")
    npca(root, n_components=3, progress=False)
    visualize(root, model=clf, candidates=2, keep=2, steps=1, top_images=2, neurons=0, progress=False)
    tables = {k: json.loads((root / "visualize" / f"class_{k:05d}" / "components.json").read_text()) for k in (0, 1)}
    c = client(create_app(root), "ann")
    assert [(r.cls, r.component) for r in c.app.state.store.components()] == [
        (k, comp["component"]) for k in (0, 1) for comp in tables[k]["components"]]
    for k, table in tables.items():
        for comp in table["components"]:
            page = c.get(f"/review/{k}/{comp['component']}?filter=all").text
            folder = root / "visualize" / f"class_{k:05d}"
            names = [comp["npfv_png"], comp["npfv_heatmap_png"]] + [
                t[key] for t in comp["top_images"] for key in ("png", "heatmap_png")]
            assert len(names) == 2 + 2 * 2
            for name in names:
                url = f"/img/{file_key(folder / name)}"
                assert f'src="{url}"' in page
                assert c.get(url).content == (folder / name).read_bytes()
            assert f"{comp['npfv_probability']:.3f}" in page
    r = c.post(f"/api/review/1/{tables[1]['components'][0]['component']}", json={"verdict": "spurious"})
    assert r.status_code == 200 and r.json()["votes"]["spurious"] == 1


def test_cli_serves_on_loopback_in_a_real_process(ws: Workspace) -> None:
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "spurious", "label", str(ws.root), "--port", str(port),
                             "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(base + "/login", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"server did not come up: {proc.communicate(timeout=5)[0]}") from None
                time.sleep(0.2)
        assert r.status_code == 200 and 'id="name"' in r.text
        assert httpx.get(base + "/login", headers={"host": "evil.example"}).status_code == 400  # DNS rebinding
        assert httpx.get(f"http://localhost:{port}/login").status_code == 200
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert f"Uvicorn running on http://127.0.0.1:{port}" in out


def test_curate_page_of_candidates_without_image_files(ws: Workspace) -> None:
    """A pool imported without files (path null) can still be curated by id; the page shows a placeholder."""
    from spurious.label import create_app

    path = ws.root / "retrieve" / "candidates.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for rec in recs:
        rec["path"] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    c = client(create_app(ws.root), "ann")
    page = c.get("/curate/0/3?filter=all")
    assert page.status_code == 200
    assert page.text.count('class="placeholder"') == 4 and "/img/" not in page.text.split('id="grid"')[1]
    assert c.post("/api/curate/0/3", json={"id": recs[0]["id"], "verdict": "out"}).status_code == 200


def test_page_filter_values_are_the_store_filters() -> None:
    # the routes' ?filter= type and LabelStore's select() must accept the same values
    assert get_args(Filter) == FILTERS


def test_pages_stay_small_at_many_classes_with_paging_and_search(tmp_path: Path) -> None:
    """Issue 21 (item 2): the overview pages its class table and finds classes by index or name; review pages
    carry no list of every class (a text filter takes an index or a name)."""
    from spurious.label.app import CLASSES_PER_PAGE

    names = [f"class number {i:03d}" for i in range(120)]
    ws = make_label_ws(tmp_path, class_names=names, components={k: [0] for k in range(120)}, candidates={},
                       top_images=1)
    c = client(create_app(ws.root), "ann")

    def listed(body: str) -> list[int]:
        return [int(m) for m in re.findall(r'<a href="/class/(\d+)">', body)]

    first = c.get("/").text
    assert listed(first) == list(range(CLASSES_PER_PAGE)) and "classes 1-50 of 120" in first
    assert 'href="/?page=2"' in first and 'rel="prev"' not in first
    last = c.get("/?page=3").text
    assert listed(last) == list(range(100, 120)) and 'rel="next"' not in last
    assert listed(c.get("/?page=99").text) == list(range(100, 120))  # clamped
    assert listed(c.get("/?page=0").text) == list(range(CLASSES_PER_PAGE))
    found = c.get("/", params={"q": "NUMBER 07"}).text  # part of a name, any case
    assert listed(found) == list(range(70, 80)) and "of 10 matching (of 120)" in found
    assert listed(c.get("/", params={"q": "42"}).text) == [42]  # an index (and names containing it: none here)
    assert "No class matches" in c.get("/", params={"q": "zebra"}).text
    # review: a class by name or index, no 120-option list
    page = c.get("/review/5/0", params={"filter": "all", "cls": "Class Number 005"})
    assert page.status_code == 200 and "<option" not in page.text.split('name="filter"')[1].split("</select>")[1]
    assert page.text.count("class number") < 10
    assert c.get("/review", params={"filter": "all", "cls": "class number 007"}, follow_redirects=False) \
        .headers["location"].startswith("/review/7/0")
    assert c.get("/review", params={"filter": "all", "cls": "7"}, follow_redirects=False) \
        .headers["location"].startswith("/review/7/0")
    assert c.get("/review", params={"filter": "all", "cls": "no such class"}).status_code == 422
