"""Static-HTML helpers: everything from data is escaped; pages are written atomically."""

from __future__ import annotations

from html.parser import HTMLParser

from spurious import _html


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        self.tags.append(tag)

    def handle_data(self, data):  # noqa: ANN001
        self.text.append(data)


def _parse(doc: str) -> _Collect:
    p = _Collect()
    p.feed(doc)
    return p


def test_markup_in_data_is_shown_as_text() -> None:
    evil = '<script>alert("x")</script>&'
    doc = _html.page(evil, _html.table(["class", "auc"], [[evil, 0.5]]) + _html.img("a b.png", evil, caption=evil))
    parsed = _parse(doc)
    assert "script" not in parsed.tags
    assert sum(evil in t for t in parsed.text) >= 3  # title, h1, table cell, caption come back as text


def test_table_formats_numbers_and_keeps_html_columns() -> None:
    doc = _html.table(["name", "x", "n", "link"], [["a", 0.123456, 7, _html.link("k/i.html", "open")]],
                      html_cols=(3,))
    parsed = _parse(doc)
    assert "0.123" in parsed.text and "7" in parsed.text and "open" in parsed.text
    assert parsed.tags.count("a") == 1
    assert _html.fmt(float("nan")) == "n/a" and _html.fmt(None) == "-" and _html.fmt(True) == "yes"


def test_write_page_is_atomic_and_creates_parents(tmp_path) -> None:  # noqa: ANN001
    path = _html.write_page(tmp_path / "a" / "b" / "index.html", "T", "<p>x</p>")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in path.parent.iterdir()] == ["index.html"]  # no temp file left


def test_cli_plugins_are_discovered() -> None:
    import pkgutil

    from spurious import _cli
    from spurious.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    plugins = [m.name for m in pkgutil.iter_modules(_cli.__path__) if not m.name.startswith("_")]
    for name in plugins:  # every plugin module registers (at least) the sub-command named after it
        assert name in sub.choices or any(c.startswith(name) for c in sub.choices), name
