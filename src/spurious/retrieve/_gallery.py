"""The HTML gallery of a retrieval: an index and one page per component with its top candidates.

Pages are sharded by class, ``gallery/class_KKKKK/lLLLL.html``, so that no folder holds more than
one class's components (a 1000-class run would otherwise put 10,000 files in one folder).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from spurious import _html as H
from spurious.retrieve._voters import Voter
from spurious.workspace import Workspace


def gallery_page(k: int, l: int) -> str:
    """The page of class ``k``, component ``l``, relative to the gallery folder."""
    return f"class_{k:05d}/l{l:04d}.html"


def write_gallery(root: Path, ws: Workspace, sel: dict[int, list[int]], records: list[dict[str, Any]],
                  per_component: dict[str, int], voters: list[Voter], min_votes: int, dependence: str,
                  thumbs: int = 100) -> None:
    """``gallery/index.html`` plus ``gallery/class_KKKKK/lLLLL.html`` per component with its top candidates.

    Thumbnails link the image files (relative to the page's folder); each page links back to the index.
    """
    by_comp: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for rec in records:
        by_comp.setdefault((rec["class"], rec["component"]), []).append(rec)
    names = ws.class_names
    rows = []
    for k, comps in sel.items():
        for l in comps:
            page = gallery_page(k, l)
            page_dir = (root / page).parent
            recs = by_comp.get((k, l), [])
            figs = []
            for rec in recs[:thumbs]:
                cap = f"#{rec['rank']} a={rec['alpha']:.2f} v={rec['votes']}/{rec['models']}"
                if rec["path"]:
                    try:
                        src = os.path.relpath(rec["path"], page_dir)
                    except ValueError:  # another drive (Windows): link the file itself
                        src = Path(rec["path"]).as_uri()
                    figs.append(H.img(src, rec["id"], width=96, caption=cap))
                else:
                    figs.append(f"<figure><figcaption>{H.esc(rec['id'])}<br>{H.esc(cap)}</figcaption></figure>")
            more = f"<p class=\"muted\">showing {min(len(recs), thumbs)} of {len(recs)}</p>"
            H.write_page(root / page, f"class {k} ({names[k]}), component {l}",
                         f"<p>{H.link('../index.html', 'all components')}</p>"
                         f"<div class=\"row\">{''.join(figs)}</div>{more}",
                         subtitle=f"pool images ranked by alpha, kept when >= {min_votes} of {len(voters)} "
                                  f"models predict the class; {dependence}")
            rows.append([f"{k} {names[k]}", l, per_component.get(f"{k}/{l}", 0), H.link(page, "open")])
    body = H.table(["class", "component", "candidates", "gallery"], rows, html_cols=(3,))
    H.write_page(root / "index.html", "retrieved candidates", body,
                 subtitle=f"voters: {', '.join(v.name for v in voters)} (>= {min_votes}); {dependence}")
