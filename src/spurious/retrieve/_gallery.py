"""The HTML gallery of a retrieval: an index and one page per component with its top candidates."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from spurious import _html as H
from spurious.retrieve._voters import Voter
from spurious.workspace import Workspace


def write_gallery(root: Path, ws: Workspace, sel: dict[int, list[int]], records: list[dict[str, Any]],
                  per_component: dict[str, int], voters: list[Voter], min_votes: int, dependence: str,
                  thumbs: int = 100) -> None:
    """``gallery/index.html`` plus one page per component with its top candidates (thumbnails link the files)."""
    by_comp: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for rec in records:
        by_comp.setdefault((rec["class"], rec["component"]), []).append(rec)
    names = ws.class_names
    rows = []
    for k, comps in sel.items():
        for l in comps:
            page = f"class_{k:05d}_l{l:04d}.html"
            recs = by_comp.get((k, l), [])
            figs = []
            for rec in recs[:thumbs]:
                cap = f"#{rec['rank']} a={rec['alpha']:.2f} v={rec['votes']}/{rec['models']}"
                if rec["path"]:
                    try:
                        src = os.path.relpath(rec["path"], root)
                    except ValueError:  # another drive (Windows): link the file itself
                        src = Path(rec["path"]).as_uri()
                    figs.append(H.img(src, rec["id"], width=96, caption=cap))
                else:
                    figs.append(f"<figure><figcaption>{H.esc(rec['id'])}<br>{H.esc(cap)}</figcaption></figure>")
            more = f"<p class=\"muted\">showing {min(len(recs), thumbs)} of {len(recs)}</p>"
            H.write_page(root / page, f"class {k} ({names[k]}), component {l}",
                         f"<div class=\"row\">{''.join(figs)}</div>{more}",
                         subtitle=f"pool images ranked by alpha, kept when >= {min_votes} of {len(voters)} "
                                  f"models predict the class; {dependence}")
            rows.append([f"{k} {names[k]}", l, per_component.get(f"{k}/{l}", 0), H.link(page, "open")])
    body = H.table(["class", "component", "candidates", "gallery"], rows, html_cols=(3,))
    H.write_page(root / "index.html", "retrieved candidates", body,
                 subtitle=f"voters: {', '.join(v.name for v in voters)} (>= {min_votes}); {dependence}")
