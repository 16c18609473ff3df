"""End to end in a real browser: two labelers label with keyboard shortcuts in headless Chromium.

Needs Debian's ``chromium`` (or ``$SPURIOUS_CHROMIUM``) and the ``playwright`` package (its driver
only; no browser download). Skipped with the reason when either is missing, except under CI
(``$CI``) or ``SPURIOUS_REQUIRE_BROWSER=1``, where a missing browser fails the test instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_label_app import running_server
from test_label_store import make_label_ws

from spurious.label import LabelStore
from spurious.label.app import create_app


def _chromium() -> str | None:
    env = os.environ.get("SPURIOUS_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _required() -> bool:
    return os.environ.get("SPURIOUS_REQUIRE_BROWSER") == "1" or os.environ.get("CI", "").lower() in ("1", "true")


@pytest.fixture(scope="module")
def browser() -> Any:
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - depends on the machine
        missing = "the playwright package is not installed (pip install -e '.[test]')"
    exe = _chromium()
    if missing is None and exe is None:
        missing = "no chromium executable (apt-get install chromium, or set SPURIOUS_CHROMIUM)"
    if missing is not None:
        if _required():
            pytest.fail(f"browser test required under CI / SPURIOUS_REQUIRE_BROWSER=1, but {missing}")
        pytest.skip(missing)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                    "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


def _sign_in(browser: Any, base: str, name: str) -> Any:
    ctx = browser.new_context()
    ctx.set_default_timeout(15_000)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/review")
    assert "/login" in page.url
    page.fill("#name", name)
    page.press("#name", "Enter")
    page.wait_for_url("**/review/0/3?filter=unlabeled")  # back where the labeler wanted to go
    page.errors = errors  # type: ignore[attr-defined]
    return page


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as _expect

    return _expect(locator)


def _at(page: Any, k: int, l: int) -> None:
    page.wait_for_selector(f'body[data-page="review"][data-ready="1"][data-class="{k}"][data-component="{l}"]')


@pytest.mark.slow
def test_two_labelers_with_keyboard_shortcuts(browser: Any, tmp_path: Path) -> None:
    ws = make_label_ws(tmp_path, class_names=["<i>cat</i>", "dog", "boat"])
    order = [(0, 3), (0, 1), (0, 7), (1, 2), (1, 5)]  # review order: class, then rank
    keys = {"ann": "sscus", "bob": "sccss"}
    with running_server(create_app(ws.root)) as base:
        ann, bob = _sign_in(browser, base, "ann"), _sign_in(browser, base, "bob")
        assert ann.inner_text("#class-name") == "<i>cat</i>"  # markup in data shows as text

        # ann: a note first ("/" focuses it, Escape leaves it), then one key per component
        _at(ann, 0, 3)
        ann.keyboard.press("/")
        ann.keyboard.type("<b>water</b> everywhere")
        ann.keyboard.press("Escape")
        for (k, l), key in zip(order, keys["ann"]):
            _at(ann, k, l)
            ann.keyboard.press(key)
        ann.wait_for_selector('#done')  # every component labelled: the filter is empty
        # bob: walks forward and back with n / p before labelling
        _at(bob, 0, 3)
        bob.keyboard.press("n")
        _at(bob, 0, 1)
        bob.keyboard.press("p")
        _at(bob, 0, 3)
        for (k, l), key in zip(order, keys["bob"]):
            _at(bob, k, l)
            bob.keyboard.press(key)
        bob.wait_for_selector('#done')

        # curation: focus starts on the first image, each verdict moves it to the next
        for page, seq in ((ann, "ooti"), (bob, "oito")):
            page.goto(base + "/curate/0/3?filter=all")
            page.wait_for_selector('body[data-ready="1"] #grid .cand.focused')
            for key in seq:
                page.keyboard.press(key)
            expect(page.locator('#grid .cand[data-mine=""]')).to_have_count(0)  # every verdict saved
            assert page.errors == []  # type: ignore[attr-defined]
        bob.reload()
        assert bob.locator("#grid .cand.accepted").count() == 1

    store = LabelStore(ws.root)
    expected: dict[int, list[int]] = {}
    for i, (k, l) in enumerate(order):
        if keys["ann"][i] == keys["bob"][i] == "s":
            expected.setdefault(k, []).append(l)
    assert store.agreed_components() == expected == {0: [3], 1: [5]}
    names = {"s": "spurious", "c": "core", "u": "unsure"}
    for i, (k, l) in enumerate(order):
        got = {who: d["verdict"] for who, d in store.component_verdicts(k, l).items()}
        assert got == {who: names[keys[who][i]] for who in keys}
    assert store.component_verdicts(0, 3)["ann"]["note"] == "<b>water</b> everywhere"
    accepted = store.accepted_images()
    assert {kl: [r["id"] for r in recs] for kl, recs in accepted.items()} == {(0, 3): ["pool/p_0_3_0.png"]}
    assert accepted[(0, 3)][0]["labelers"] == ["ann", "bob"]


@contextlib.contextmanager
def _foreign_site(html: str) -> Iterator[str]:
    """Another origin (same host, another port) that serves one page; yields its URL."""
    body = html.encode("utf-8")

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.slow
def test_a_foreign_page_cannot_switch_the_signed_in_labeler(browser: Any, tmp_path: Path) -> None:
    """Login CSRF: a page of another origin auto-submits the sign-in form. The browser sends the
    session cookie along (same host, so same site: SameSite=Lax does not stop it), and the server
    refuses the request by its Origin."""
    ws = make_label_ws(tmp_path)
    with running_server(create_app(ws.root)) as base:
        ann = _sign_in(browser, base, "ann")
        evil = (f'<form method="post" action="{base}/login"><input name="name" value="mallory">'
                '<input name="next" value="/"></form><script>document.forms[0].submit()</script>')
        with _foreign_site(evil) as url:
            with ann.expect_navigation(url=f"{base}/login"):
                ann.goto(url)
            assert "cross-site request refused" in ann.content()
        ann.goto(base + "/")
        assert ann.inner_text("#labeler") == "ann"
    assert "mallory" not in LabelStore(ws.root).labelers()


@pytest.mark.slow
def test_an_invited_labeler_signs_in_with_the_link(browser: Any, tmp_path: Path) -> None:
    """Tokens required (as beyond loopback): the invite link signs in, typed names are not offered."""
    ws = make_label_ws(tmp_path)
    app = create_app(ws.root, require_tokens=True)
    token = app.state.store.invite_labeler("ann")
    with running_server(app) as base:
        ctx = browser.new_context()
        ctx.set_default_timeout(15_000)
        page = ctx.new_page()
        page.goto(base + "/review")
        assert "/login" in page.url and page.locator("#name").count() == 0
        page.goto(f"{base}/join?token={token}")
        assert page.inner_text("#invited-name") == "ann"
        page.click("#join")
        page.wait_for_url(base + "/")
        assert page.inner_text("#labeler") == "ann" and page.locator("#unverified").count() == 0
        page.goto(base + "/review")
        _at(page, 0, 3)
        page.keyboard.press("s")
        _at(page, 0, 1)
        ctx.close()
    who = LabelStore(ws.root).identity("ann")
    assert who is not None and who.kind == "token"
    assert LabelStore(ws.root).component_verdicts(0, 3)["ann"]["verdict"] == "spurious"
