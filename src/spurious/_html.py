"""Small helpers for the static HTML reports (visualize sheets, score tables, the demo report).

Every string that comes from data or a user (class names, image ids, notes) goes through
:func:`esc`; the helpers that take text escape it themselves, the ones that take ``html`` do not.
Pages are self-contained apart from relative links to PNG files next to them.
"""

from __future__ import annotations

import html as _html
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from spurious._io import atomic_path

__all__ = ["esc", "fmt", "img", "link", "page", "table", "write_page", "CSS"]

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5rem auto;max-width:1200px;
padding:0 1rem;color:#1b1b1b;line-height:1.4}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}h3{font-size:1rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right;vertical-align:top}
th{background:#f3f3f3}td.l,th.l{text-align:left}
figure{display:inline-block;margin:.25rem;text-align:center;font-size:.75rem;vertical-align:top}
figure img{display:block;image-rendering:pixelated;border:1px solid #ccc}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5rem .75rem;margin:.75rem 0}
.muted{color:#666;font-size:.85rem}
.row{display:flex;flex-wrap:wrap;gap:.25rem;align-items:flex-start}
.card{border:1px solid #ddd;border-radius:6px;padding:.75rem;margin:.75rem 0}
"""


def esc(value: object) -> str:
    """HTML-escape ``str(value)`` (quotes too), for text and attribute values."""
    return _html.escape(str(value), quote=True)


def fmt(value: object, digits: int = 3) -> str:
    """Format a number for a table cell (``digits`` significant decimals; ints as-is; None as '-')."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:.{digits}f}"
    return esc(value)


def img(src: str | os.PathLike[str], alt: str, *, width: int | None = None, caption: str | None = None) -> str:
    """An ``<img>`` (inside a ``<figure>`` when ``caption`` is given); ``src`` is a relative path."""
    w = f' width="{int(width)}"' if width else ""
    tag = f'<img src="{esc(Path(src).as_posix())}" alt="{esc(alt)}"{w} loading="lazy">'
    if caption is None:
        return tag
    return f"<figure>{tag}<figcaption>{esc(caption)}</figcaption></figure>"


def link(href: str | os.PathLike[str], text: str) -> str:
    """An ``<a>`` to a relative path, with escaped text."""
    return f'<a href="{esc(Path(href).as_posix())}">{esc(text)}</a>'


def table(header: Sequence[str], rows: Iterable[Sequence[object]], *, html_cols: Sequence[int] = (),
          left_cols: Sequence[int] = (0,)) -> str:
    """An HTML table. Cells are formatted with :func:`fmt` (escaped) except the columns in
    ``html_cols``, which are inserted as given (already-built HTML such as links or images)."""
    def cell(tag: str, i: int, value: object) -> str:
        cls = ' class="l"' if i in left_cols else ""
        body = str(value) if i in html_cols else fmt(value)
        return f"<{tag}{cls}>{body}</{tag}>"

    head = "".join(cell("th", i, esc(h)) if i in html_cols else cell("th", i, h) for i, h in enumerate(header))
    body = "\n".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def page(title: str, body_html: str, *, subtitle: str | None = None) -> str:
    """A complete HTML5 document with the report CSS; ``title`` is escaped, ``body_html`` is not."""
    sub = f'<p class="muted">{esc(subtitle)}</p>' if subtitle else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{esc(title)}</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{esc(title)}</h1>\n{sub}\n{body_html}\n</body>\n</html>\n"
    )


def write_page(path: str | os.PathLike[str], title: str, body_html: str, *, subtitle: str | None = None) -> Path:
    """Write :func:`page` atomically to ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(page(title, body_html, subtitle=subtitle), encoding="utf-8")
    return path
