"""``spurious label``: the labelling web UI, and the exports of the agreed labels.

One sub-parser with four forms (the first word picks the form; a workspace literally named like a
form word is written ``./export``)::

    spurious label WS [--host 127.0.0.1] [--port 8765] [--no-browser]   serve the web UI
    spurious label export WS --out FILE [--format json|csv]             every verdict + agreed results
    spurious label components WS --out comps.json                       component-set file for `spurious fix`
    spurious label sync WS                                              register visualize/ + retrieve/ now
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]

_FORMS = ("export", "components", "sync")
_USAGE = (
    "WS [--host 127.0.0.1] [--port 8765] [--no-browser] [--min-agree 2]",
    "export WS --out FILE [--format json|csv] [--min-agree 2]",
    "components WS --out FILE [--min-agree 2]",
    "sync WS",
    "(every form also takes --json, -v, --no-progress)",
)
_DESCRIPTION = """\
People decide which neural PCA components are harmful spurious features (review: spurious / core /
unsure) and which retrieved images show only the spurious feature (curate: in / out / trash). Every
verdict is stored per labeler in WS/labels.sqlite; a component is spurious, an image accepted, when
--min-agree labelers (default 2) agree.

forms:
  WS           serve the web UI (FastAPI) on --host:--port; it registers WS/visualize (components to review)
               and WS/retrieve/candidates.jsonl (images to curate) on start. Binds to loopback by default:
               there are no passwords, so another --host exposes the labels to that network (a warning)
  export       write every verdict plus the agreed components and accepted images (JSON, or CSV: one row
               per verdict with an 'agreed' column); --format defaults from the file suffix
  components   write the agreed spurious components as the component-set file of `spurious fix --components`
  sync         re-scan WS/visualize and WS/retrieve into the label store and print the counts
See docs/label.md."""


def register(sub: Any) -> None:
    """Add the ``label`` sub-command to the argparse sub-parser action ``sub``."""
    from spurious.cli import common_options

    p = sub.add_parser("label", help="web UI: review components and curate retrieved images (+ exports)",
                       usage="\n       ".join(f"%(prog)s {u}" if u[0] != "(" else u for u in _USAGE),
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", metavar="WS|FORM", help="workspace, or one of: " + ", ".join(_FORMS))
    p.add_argument("path", nargs="?", default=None, metavar="WS", help="the workspace of export / components / sync")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free port)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument("--min-agree", type=int, default=2, help="labelers that must agree (default 2)")
    p.add_argument("--out", default=None, help="export / components: the file to write (required)")
    p.add_argument("--format", choices=["json", "csv"], default=None,
                   help="export: file format (default: csv for a .csv file, else json)")
    common_options(p)
    p.set_defaults(func=_cmd_label)


def _cmd_label(args: argparse.Namespace) -> int:
    form = args.target if args.target in _FORMS else None
    if form is None:
        if args.path is not None:
            raise ValueError(f"unknown form {args.target!r} (valid: {', '.join(_FORMS)}), or one workspace only; "
                             "see `spurious label -h`")
        for flag in ("out", "format"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag} belongs to `spurious label export|components WS`; serving takes no --{flag}")
        return _serve(args)
    if args.path is None:
        raise ValueError(f"`spurious label {form}` needs the workspace: spurious label {form} WS"
                         + (" --out FILE" if form != "sync" else ""))
    if form != "sync" and not args.out:
        raise ValueError(f"`spurious label {form}` needs --out FILE")
    if form == "components" and args.format is not None:
        raise ValueError("--format belongs to `spurious label export`; the component-set file is always JSON")

    from spurious.cli import emit
    from spurious.label import LabelStore

    store = LabelStore(args.path, sync=form == "sync")
    if form == "sync":
        p = store.progress()
        emit(args, {"path": str(store.path), **p}, [
            f"registered {p['components']} components and {p['candidates']} candidates -> {store.path}"])
    elif form == "components":
        doc = store.export_components(args.out, min_agree=args.min_agree)
        n = sum(len(v) for v in doc["classes"].values())
        emit(args, {"path": args.out, **doc}, [
            f"{n} agreed spurious components in {len(doc['classes'])} classes ({doc['source']}) -> {args.out}"])
    else:
        path = store.export_labels(args.out, format=args.format, min_agree=args.min_agree)
        agreed = store.agreed_components(args.min_agree)
        accepted = store.accepted_images(args.min_agree)
        summary = {"path": str(path), "labelers": store.labelers(),
                   "agreed_components": sum(len(v) for v in agreed.values()),
                   "accepted_images": sum(len(v) for v in accepted.values())}
        emit(args, summary, [
            f"labels of {len(summary['labelers'])} labelers -> {path}",
            (f"{summary['agreed_components']} agreed spurious components, {summary['accepted_images']} accepted "
             f"images (min_agree={args.min_agree})")])
    return 0


def _serve(args: argparse.Namespace) -> int:
    from spurious.label.app import serve

    serve(args.target, host=args.host, port=args.port, min_agree=args.min_agree, open_browser=not args.no_browser,
          log_level="debug" if args.verbose else "info")
    return 0
