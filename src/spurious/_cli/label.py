"""``spurious label``: the labelling web UI, and the exports of the agreed labels.

One sub-parser with four forms (the first word picks the form; a workspace literally named like a
form word is written ``./export``)::

    spurious label WS [--host HOST] [--port PORT] [--no-browser]       serve the web UI
    spurious label WS --add-labeler NAME | --list-labelers | --remove-labeler NAME   invite links
    spurious label export WS --out FILE [--format json|csv]             every verdict + agreed results
    spurious label components WS --out comps.json                       component-set file for `spurious fix`
    spurious label sync WS                                              register visualize/ + retrieve/ now
"""

from __future__ import annotations

import argparse
import socket
from typing import TYPE_CHECKING

from spurious._cli._common import (
    common_options,
    defaults_of,
    emit,
    given,
    is_given,
    resolve,
)

if TYPE_CHECKING:
    from spurious._cli._common import SubParsers

__all__ = ["register"]

_default = defaults_of("spurious.label.app:serve")

_FORMS = ("export", "components", "sync")
_USAGE = (
    "WS [--host HOST] [--port PORT] [--no-browser] [--min-agree N] [--require-tokens] [--max-body BYTES]",
    "WS --add-labeler NAME | --list-labelers | --remove-labeler NAME [--host H --port P: the link's address]",
    "export WS --out FILE [--format json|csv] [--min-agree N]",
    "components WS --out FILE [--min-agree N]",
    "sync WS",
    "(every form also takes --json, -v, --no-progress)",
)
_DESCRIPTION = """\
People decide which neural PCA components are harmful spurious features (review: spurious / core /
unsure) and which retrieved images show only the spurious feature (curate: in / out / trash). Every
verdict is stored per labeler in WS/labels.sqlite; a component is spurious, an image accepted, when
--min-agree labelers agree.

forms:
  WS           serve the web UI (FastAPI) on --host:--port; it registers WS/visualize (components to review)
               and WS/retrieve/candidates.jsonl (images to curate) on start. Binds to loopback by default,
               where people may sign in by typing a name (not verified) or with an invite link; beyond
               loopback (--host 0.0.0.0) only invite links sign in (also on loopback with --require-tokens)
  WS --add-labeler NAME     print NAME's invite link http://HOST:PORT/join?token=... (only a hash of the
               token is stored; inviting again replaces the link); --list-labelers; --remove-labeler NAME
               ends NAME's access (its verdicts stay). They work while the server runs
  export       write every verdict plus the agreed components and accepted images (JSON, or CSV: one row
               per verdict with an 'agreed' column); --format defaults from the file suffix
  components   write the agreed spurious components as the component-set file of `spurious fix --components`
  sync         re-scan WS/visualize and WS/retrieve into the label store and print the counts
See docs/label.md."""


def register(sub: SubParsers) -> None:
    """Add the ``label`` sub-command to the argparse sub-parser action ``sub``."""
    p = sub.add_parser("label", help="web UI: review components and curate retrieved images (+ exports)",
                       usage="\n       ".join(f"%(prog)s {u}" if u[0] != "(" else u for u in _USAGE),
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", metavar="WS|FORM", help="workspace, or one of: " + ", ".join(_FORMS))
    p.add_argument("path", nargs="?", default=None, metavar="WS", help="the workspace of export / components / sync")
    p.add_argument("--host", default=_default("host"), help="address to bind (default %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=_default("port"), help="port (default %(default)s; 0 = any free port)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument("--min-agree", type=int, default=_default("min_agree"),
                   help="labelers that must agree (default %(default)s)")
    p.add_argument("--require-tokens", action="store_true",
                   help="serve: only invite links sign in, also on loopback (always beyond loopback)")
    p.add_argument("--max-body", type=int, default=_default("max_body"), metavar="BYTES",
                   help="serve: the largest request body; larger ones are answered 413 (default %(default)s)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--add-labeler", default=None, metavar="NAME",
                     help="invite NAME: print a sign-in link (a new one replaces the old) instead of serving")
    who.add_argument("--list-labelers", action="store_true", help="list the labelers and their kinds")
    who.add_argument("--remove-labeler", default=None, metavar="NAME",
                     help="end NAME's access (invite link and sessions); its verdicts stay")
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
        if args.add_labeler is not None or args.list_labelers or args.remove_labeler is not None:
            return _labelers(args)
        return _serve(args)
    for flag in ("add_labeler", "remove_labeler", "max_body"):
        if is_given(getattr(args, flag)):
            raise ValueError(f"--{flag.replace('_', '-')} belongs to `spurious label WS`, not to `{form}`")
    for flag in ("list_labelers", "require_tokens"):
        if getattr(args, flag):
            raise ValueError(f"--{flag.replace('_', '-')} belongs to `spurious label WS`, not to `{form}`")
    if args.path is None:
        raise ValueError(f"`spurious label {form}` needs the workspace: spurious label {form} WS"
                         + (" --out FILE" if form != "sync" else ""))
    if form != "sync" and not args.out:
        raise ValueError(f"`spurious label {form}` needs --out FILE")
    if form == "components" and args.format is not None:
        raise ValueError("--format belongs to `spurious label export`; the component-set file is always JSON")

    from spurious.label import LabelStore

    min_agree = resolve(args.min_agree)
    store = LabelStore(args.path)
    if form == "sync":
        synced = store.sync()
        emit(args, {"path": str(store.path), **store.progress()}, synced.summary_lines(store.path))
    elif form == "components":
        from spurious.components import agreed_component_set

        comps = agreed_component_set(store, min_agree=min_agree)
        comps.save(args.out)
        emit(args, {"path": args.out, **comps.to_dict()},
             comps.summary_lines(args.out, kind="agreed spurious components"))
    else:
        path = store.export_labels(args.out, format=args.format, min_agree=min_agree)
        counts = store.label_counts(min_agree)
        emit(args, {"path": str(path), **counts.to_dict()}, counts.summary_lines(path))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from spurious.label.app import serve

    serve(args.target, host=resolve(args.host), port=resolve(args.port), min_agree=resolve(args.min_agree),
          open_browser=not args.no_browser, log_level="debug" if args.verbose else "info",
          require_tokens=True if args.require_tokens else None, **given(max_body=args.max_body))
    return 0


def _link_base(host: str, port: int) -> str:
    """``http://HOST:PORT`` for invite links; a wildcard bind address becomes this machine's name."""
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = socket.getfqdn()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _labelers(args: argparse.Namespace) -> int:
    from spurious.label import LabelStore, check_labeler

    store = LabelStore(args.target)
    if args.list_labelers:
        rows = store.identities()
        emit(args, {"path": str(store.path), "labelers": [
            {"name": w.name, "kind": w.kind, "created": w.created, "revoked": w.revoked} for w in rows]},
            [f"{w.name}\t{w.kind}{' (removed ' + w.revoked + ')' if w.revoked else ''}\tsince {w.created}"
             for w in rows] or [f"no labelers yet in {store.path}"])
    elif args.remove_labeler is not None:
        who = store.remove_labeler(args.remove_labeler)
        emit(args, {"name": who.name, "kind": who.kind, "revoked": who.revoked},
             [f"removed {who.name}: its invite link and sessions no longer work; its verdicts stay"])
    else:
        name = check_labeler(args.add_labeler)
        before = store.identity(name)
        token = store.invite_labeler(name)
        link = f"{_link_base(resolve(args.host), resolve(args.port))}/join?token={token}"
        note = ("" if before is None else
                " (the old link and its sessions no longer work)" if before.kind == "token" and before.revoked is None
                else " (restored)" if before.revoked is not None
                else " (its earlier verdicts under the typed name now belong to the invited labeler)")
        emit(args, {"name": name, "link": link, "renewed": before is not None},
             [f"invite link of {name}{note}; send it to {name} only, it is shown once:", link])
    return 0
