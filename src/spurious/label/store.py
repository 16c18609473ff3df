"""Human labels of the ``label`` stage: component review and image curation, per labeler, in SQLite.

``WS/labels.sqlite`` holds what ``visualize`` and ``retrieve`` produced (registered by
:meth:`LabelStore.sync`) next to the verdicts that people gave in the web UI
(:mod:`spurious.label.app`). Two tasks (DESIGN.md "Interfaces"):

* *review*: each selected component ``(k, l)`` gets a verdict ``spurious`` / ``core`` / ``unsure``
  (plus an optional note) per labeler; a component is an *agreed* spurious feature of class ``k``
  when at least ``min_agree`` (default 2) labelers said ``spurious``
  (:meth:`LabelStore.agreed_components`, the set ``S_k`` that SpuFix removes);
* *curate*: each retrieved candidate image of ``(k, l)`` gets ``in`` (the class object is visible),
  ``out`` (only the spurious feature, the object is absent) or ``trash`` (unusable); an image is
  *accepted* for the spurious benchmark when at least ``min_agree`` labelers said ``out``
  (:meth:`LabelStore.accepted_images`).

Storage: WAL journal, ``busy_timeout`` and ``BEGIN IMMEDIATE`` write transactions on a fresh
connection per call (the web server keeps one per thread instead: ``keep_connections``), so any
number of threads and processes (two servers on one workspace, a script exporting while people
label) write without losing a verdict; ``synchronous=FULL`` so a
committed verdict survives a crash of the server. The schema is versioned with
``PRAGMA user_version``; an older database is migrated in place on open (version 1 -> 2 adds the
identity columns and the sessions table), one written by a newer spurious is refused with a clear
error. Every verdict change is also appended to a history table.

Identities (``labelers`` table, one row per name; every verdict names the identity that gave it, and
the agreement rules count distinct identities):

* ``name``: a name typed on the sign-in page (loopback only, unverified: anyone can type any name);
* ``token``: a labeler invited by the owner (:meth:`LabelStore.invite_labeler`), who signs in with a
  secret link; only the SHA-256 of the token is stored;
* ``simulated``: a script that labels through this API (``add_labeler(name, kind="simulated")``).

A signed-in browser holds an opaque random session id; the ``sessions`` table keeps its SHA-256,
the identity and an expiry, and inviting again or removing a labeler ends its sessions.

This module imports no web code, so ``fix``, ``retrieve`` and the benchmark builder can use it cheaply.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from spurious import __version__
from spurious._checks import int_at_least
from spurious._io import JSONDict, atomic_path, read_json, utc_now, write_json
from spurious.counterfactual._index import CounterfactualPair, shown_pairs
from spurious.visualize import (
    SHEET_TABLE,
    read_sheet_table,
    sheet_classes,
    sheet_folder,
)
from spurious.workspace import IncompatibleArtifactError, Workspace

__all__ = [
    "COMPONENT_VERDICTS",
    "FILTERS",
    "IDENTITY_KINDS",
    "IMAGE_VERDICTS",
    "SCHEMA_VERSION",
    "SESSION_SECONDS",
    "ComponentRow",
    "CurateRow",
    "LabelStore",
    "Labeler",
    "SyncResult",
    "UnknownItemError",
    "check_labeler",
    "csv_cell",
    "curate_progress",
    "file_key",
    "review_progress",
    "select",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
COMPONENT_VERDICTS: tuple[str, ...] = ("spurious", "core", "unsure")
IMAGE_VERDICTS: tuple[str, ...] = ("in", "out", "trash")
FILTERS: tuple[str, ...] = ("all", "unlabeled", "disagreements")
IDENTITY_KINDS: tuple[str, ...] = ("name", "token", "simulated")
SESSION_SECONDS = 30 * 24 * 3600  # a sign-in lasts 30 days (then the invite link or the name again)
DB_NAME = "labels.sqlite"
MAX_NOTE_CHARS = 2000
MAX_LABELER_CHARS = 64
_BUSY_TIMEOUT_MS = 30_000
_LABELER_RE = re.compile(r"^[\w][\w .@+-]*$")
_CANDIDATE_KEYS = ("class", "component", "rank", "id", "path", "alpha")
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{20,128}$")  # invite tokens and session ids (token_urlsafe)
_SQL_INT_MAX = 2**63 - 1  # SQLite INTEGER; larger Python ints cannot even be looked up
_CSV_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")  # OWASP CSV injection: a leading one starts a formula

# version 1, as first released; a new database is created as version 1 and then migrated, so new
# and upgraded files get the same schema
_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE components (
    class INTEGER NOT NULL, component INTEGER NOT NULL, rank INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (class, component));
CREATE TABLE candidates (
    class INTEGER NOT NULL, component INTEGER NOT NULL, id TEXT NOT NULL, rank INTEGER NOT NULL,
    path TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (class, component, id));
CREATE TABLE files (key TEXT PRIMARY KEY, path TEXT NOT NULL UNIQUE);
CREATE TABLE labelers (name TEXT PRIMARY KEY, created TEXT NOT NULL);
CREATE TABLE component_verdicts (
    labeler TEXT NOT NULL, class INTEGER NOT NULL, component INTEGER NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ({", ".join(repr(v) for v in COMPONENT_VERDICTS)})),
    note TEXT NOT NULL DEFAULT '', created TEXT NOT NULL, updated TEXT NOT NULL,
    PRIMARY KEY (labeler, class, component));
CREATE INDEX component_verdicts_item ON component_verdicts (class, component);
CREATE TABLE image_verdicts (
    labeler TEXT NOT NULL, class INTEGER NOT NULL, component INTEGER NOT NULL, id TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ({", ".join(repr(v) for v in IMAGE_VERDICTS)})),
    created TEXT NOT NULL, updated TEXT NOT NULL,
    PRIMARY KEY (labeler, class, component, id));
CREATE INDEX image_verdicts_item ON image_verdicts (class, component, id);
CREATE TABLE history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, labeler TEXT NOT NULL,
    task TEXT NOT NULL CHECK (task IN ('review', 'curate')),
    class INTEGER NOT NULL, component INTEGER NOT NULL, id TEXT, verdict TEXT NOT NULL, note TEXT);
"""

# indexes of the per-request lookups (the review order, the votes of one item); created on every open, so
# databases of any earlier version get them without a schema version of their own
_INDEXES = """
CREATE INDEX IF NOT EXISTS components_order ON components (class, rank, component);
CREATE INDEX IF NOT EXISTS component_verdicts_votes ON component_verdicts (class, component, verdict);
CREATE INDEX IF NOT EXISTS image_verdicts_votes ON image_verdicts (class, component, id, verdict);
"""

# version -> the statements that migrate the previous version to it (in place, verdicts untouched)
_MIGRATIONS: dict[int, str] = {
    2: f"""
ALTER TABLE labelers ADD COLUMN kind TEXT NOT NULL DEFAULT 'name'
    CHECK (kind IN ({", ".join(repr(k) for k in IDENTITY_KINDS)}));
ALTER TABLE labelers ADD COLUMN token_hash TEXT;
ALTER TABLE labelers ADD COLUMN revoked TEXT;
CREATE UNIQUE INDEX labelers_token ON labelers (token_hash);
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY, labeler TEXT NOT NULL, created TEXT NOT NULL, expires INTEGER NOT NULL);
CREATE INDEX sessions_labeler ON sessions (labeler);
""",
}


class UnknownItemError(ValueError):
    """A verdict names a component or image that is not registered in the label store."""


@dataclass(frozen=True)
class Labeler:
    """One identity of the label store.

    ``kind``: ``name`` (typed on the sign-in page, not verified), ``token`` (invited by the owner,
    signs in with a secret link) or ``simulated`` (a script). ``revoked``: when the owner removed it
    (``None`` while active); its verdicts stay and count.
    """

    name: str
    kind: str
    created: str
    revoked: str | None = None

    @property
    def verified(self) -> bool:
        """Signed in with an invite token (the only kind the server can tell apart from an impostor)."""
        return self.kind == "token"


@dataclass(frozen=True)
class SyncResult:
    """What :meth:`LabelStore.sync` registered (counts after the scan)."""

    components: int
    candidates: int
    files: int
    classes: list[int]

    def summary_lines(self, path: str | os.PathLike[str] | None = None) -> list[str]:
        """One line: what is registered (``-> path``, the label store, when given)."""
        where = f" -> {path}" if path is not None else ""
        return [f"registered {self.components} components and {self.candidates} candidates of "
                f"{len(self.classes)} classes{where}"]


@dataclass(frozen=True)
class LabelCounts:
    """What the verdicts decided so far (:meth:`LabelStore.label_counts`; what ``spurious label export`` reports)."""

    labelers: list[str]
    agreed_components: int
    accepted_images: int
    min_agree: int

    def to_dict(self) -> JSONDict:
        """``labelers``, ``agreed_components``, ``accepted_images`` (the counts)."""
        return {"labelers": list(self.labelers), "agreed_components": self.agreed_components,
                "accepted_images": self.accepted_images}

    def summary_lines(self, path: str | os.PathLike[str] | None = None) -> list[str]:
        """Who labelled (``-> path``, the export, when given) and what they agreed on."""
        where = f" -> {path}" if path is not None else ""
        return [f"labels of {len(self.labelers)} labelers{where}",
                f"{self.agreed_components} agreed spurious components, {self.accepted_images} accepted images "
                f"(min_agree={self.min_agree})"]


@dataclass(frozen=True)
class ComponentRow:
    """One component in the review order, with its verdict counts.

    ``mine`` is the asking labeler's verdict (``None`` when unlabeled); ``votes`` maps each verdict to
    its number of labelers; ``agreed`` is ``votes['spurious'] >= min_agree``.
    """

    cls: int
    component: int
    rank: int
    mine: str | None
    votes: dict[str, int]
    agreed: bool

    @property
    def disagreement(self) -> bool:
        """At least two labelers gave different verdicts."""
        return sum(1 for n in self.votes.values() if n) > 1

    def matches(self, filter: str) -> bool:
        """``all``; ``unlabeled``: no verdict of the asking labeler; ``disagreements``: :attr:`disagreement`."""
        return filter == "all" or (filter == "unlabeled" and self.mine is None) or \
            (filter == "disagreements" and self.disagreement)


@dataclass(frozen=True)
class CurateRow:
    """One component with retrieved candidates, in the curation order."""

    cls: int
    component: int
    candidates: int
    judged_by_me: int
    disagreements: int
    accepted: int

    @property
    def done_by_me(self) -> bool:
        return self.judged_by_me >= self.candidates

    def matches(self, filter: str) -> bool:
        """``all``; ``unlabeled``: some candidate lacks the asking labeler's verdict; ``disagreements``:
        some candidate got different verdicts."""
        return filter == "all" or (filter == "unlabeled" and not self.done_by_me) or \
            (filter == "disagreements" and self.disagreements > 0)


Row = TypeVar("Row", ComponentRow, CurateRow)
"""A row of the review list (:class:`ComponentRow`) or of the curation list (:class:`CurateRow`)."""


def select(rows: Sequence[Row], filter: str = "all", cls: int | None = None) -> list[Row]:
    """The rows (:class:`ComponentRow` or :class:`CurateRow`) that match ``filter`` and class ``cls``.

    Raises:
        ValueError: unknown filter (valid: :data:`FILTERS`).
    """
    if filter not in FILTERS:
        raise ValueError(f"unknown filter {filter!r}; valid: {', '.join(FILTERS)}")
    return [r for r in rows if r.matches(filter) and (cls is None or r.cls == cls)]


def review_progress(rows: Sequence[ComponentRow]) -> dict[str, int]:
    """Counts over :meth:`LabelStore.components` rows: total, labelled by the asking labeler, agreed
    spurious, with disagreement."""
    return {"components": len(rows), "components_mine": sum(r.mine is not None for r in rows),
            "components_agreed": sum(r.agreed for r in rows),
            "components_disagreements": sum(r.disagreement for r in rows)}


def curate_progress(rows: Sequence[CurateRow]) -> dict[str, int]:
    """Counts over :meth:`LabelStore.curate_components` rows: candidates, judged by the asking
    labeler, accepted, with disagreement."""
    return {"candidates": sum(r.candidates for r in rows), "candidates_mine": sum(r.judged_by_me for r in rows),
            "candidates_accepted": sum(r.accepted for r in rows),
            "candidates_disagreements": sum(r.disagreements for r in rows)}


def check_labeler(name: object) -> str:
    """Validate a labeler name and return it stripped (NFC-normalised).

    Allowed: 1..64 characters, letters/digits/underscore first, then also space ``.@+-``.

    Raises:
        ValueError: empty, too long, or other characters.
    """
    if not isinstance(name, str):
        raise TypeError(f"labeler name must be a string, got {type(name).__name__}")
    clean = unicodedata.normalize("NFC", name.strip())
    if not clean or len(clean) > MAX_LABELER_CHARS or not _LABELER_RE.match(clean):
        raise ValueError(
            f"invalid labeler name {name!r}: use 1-{MAX_LABELER_CHARS} letters, digits, '_', and inside "
            "the name also space . @ + - (e.g. 'alice' or 'bob.smith')"
        )
    return clean


def _check_verdict(verdict: object, valid: Sequence[str]) -> str:
    if verdict not in valid:
        raise ValueError(f"unknown verdict {verdict!r}; valid: {', '.join(valid)}")
    return str(verdict)


def _check_kind(kind: object, valid: Sequence[str] = IDENTITY_KINDS) -> str:
    if kind not in valid:
        raise ValueError(f"unknown labeler kind {kind!r}; valid: {', '.join(valid)}")
    return str(kind)


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _fits_sql(*values: int) -> bool:
    """Whether every int can be an SQLite INTEGER (a larger one names no registered item)."""
    return all(-_SQL_INT_MAX - 1 <= int(v) <= _SQL_INT_MAX for v in values)


def csv_cell(value: object) -> object:
    """A CSV cell that a spreadsheet will not run as a formula (OWASP "CSV Injection").

    A string that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading
    single quote (``"=1+1"`` -> ``"'=1+1"``); other strings, numbers and ``None`` are returned as
    they are. The JSON export keeps the raw text.
    """
    if isinstance(value, str) and value.startswith(_CSV_TRIGGERS):
        return "'" + value
    return value


def _check_min_agree(min_agree: object) -> int:
    return int_at_least("min_agree", min_agree, 1)


def file_key(path: str | os.PathLike[str]) -> str:
    """The opaque key under which the web UI serves a registered file (hash of its absolute path)."""
    return hashlib.sha256(str(Path(path).absolute()).encode("utf-8")).hexdigest()[:24]


_REVIEW_KEYS = ("class", "component")
_CURATE_KEYS = ("class", "component", "id")  # an item of curation is one candidate image


def _filter_sql(verdicts: str, keys: tuple[str, ...], labeler: str | None, filter: str,
                cls: int | None) -> tuple[str, list[int | str | None]]:
    """SQL conditions on an item ``c`` (a component, or a candidate: ``keys`` join it to its rows of the
    ``verdicts`` table) for ``filter`` and class ``cls``; each an indexed lookup."""
    select([], filter)  # validates the filter
    conds: list[str] = []
    params: list[int | str | None] = []
    if cls is not None:
        conds.append("c.class = ?")
        params.append(int(cls))

    def same_item(alias: str) -> str:
        return " AND ".join(f"{alias}.{key} = c.{key}" for key in keys)

    if filter == "unlabeled":
        conds.append(f"NOT EXISTS (SELECT 1 FROM {verdicts} m WHERE m.labeler = ? AND {same_item('m')})")
        params.append(labeler)
    elif filter == "disagreements":
        task = _REVIEW_TASK if verdicts == _REVIEW_TASK.verdicts else _CURATE_TASK
        conds.append(f"EXISTS (SELECT 1 FROM {task.stats} d WHERE {same_item('d')} AND {task.split('d')})")
    return (" AND ".join(conds) or "1"), params


def _tally_sums(con: sqlite3.Connection, task: str, labeler: str | None, min_agree: int, *,
                cls: int | None = None, below: int | None = None) -> dict[str, int]:
    """``{"items", "mine", "agree", "split"}`` of task ``task`` from the per-class tallies: registered items,
    judged by ``labeler``, with at least ``min_agree`` agreed verdicts, with more than one distinct verdict;
    only class ``cls`` / only classes below ``below`` when given (one range of the tallies' key per kind)."""
    where = ""
    params: list[int | str | None] = [task, min_agree, labeler]
    if cls is not None:
        where += " AND class = ?"
        params.append(int(cls))
    if below is not None:
        where += " AND class < ?"
        params.append(int(below))
    out: dict[str, int] = {}
    for kind in ("items", "mine", "agree", "split"):  # one range of the tallies' key each
        who = labeler if kind == "mine" else ""
        level = min_agree if kind == "agree" else 0
        n = con.execute(f"SELECT sum(n) FROM tallies WHERE task = ? AND kind = ? AND who = ? AND level >= ?{where}",
                        [task, kind, who, level, *params[3:]]).fetchone()[0]
        out[kind] = int(n or 0)
    return out


def _filter_count(sums: dict[str, int], filter: str) -> int:
    """How many items ``filter`` keeps, from :func:`_tally_sums`."""
    return {"all": sums["items"], "unlabeled": sums["items"] - sums["mine"], "disagreements": sums["split"]}[filter]


# ---------------------------------------------------------------------- derived tables (counters, sync state)
# Derived from the tables above and kept current by triggers in the same transaction as every write, so a
# request reads counts instead of scanning every verdict. Rebuilt from scratch whenever _DERIVED_VERSION
# changes (or a file of an earlier spurious is opened); they hold nothing that is not in the tables above.
_DERIVED_VERSION = "1"


@dataclass(frozen=True)
class _Task:
    """One labelling task as the derived tables see it: its items, their verdicts, the agreed verdict."""

    name: str  # "review" / "curate" (the ``task`` column of ``tallies``)
    items: str  # the registered items: components / candidates
    verdicts: str  # component_verdicts / image_verdicts
    keys: tuple[str, ...]
    values: tuple[str, ...]  # the verdicts
    agreed: str  # the verdict whose count decides agreement

    @property
    def stats(self) -> str:
        return f"{self.name}_stats"

    def split(self, alias: str = "") -> str:
        """The SQL condition "a registered item with more than one distinct verdict" on a stats row
        (the partial index ``<task>_stats_split`` uses this exact text)."""
        a = f"{alias}." if alias else ""
        return f"{a}registered = 1 AND ({' + '.join(f'({a}n_{v} > 0)' for v in self.values)}) > 1"

    def same(self, alias: str, row: str) -> str:
        return " AND ".join(f"{alias}.{k} = {row}.{k}" for k in self.keys)


_TASKS = (
    _Task("review", "components", "component_verdicts", _REVIEW_KEYS, COMPONENT_VERDICTS, "spurious"),
    _Task("curate", "candidates", "image_verdicts", _CURATE_KEYS, IMAGE_VERDICTS, "out"),
)
_REVIEW_TASK, _CURATE_TASK = _TASKS


def _tally(task: _Task, kind: str, who: str, level: str, cls: str, delta: str, cond: str) -> str:
    return (f"INSERT INTO tallies (task, kind, who, level, class, n) SELECT '{task.name}', '{kind}', {who}, {level}, "
            f"{cls}, {delta} WHERE {cond} "
            "ON CONFLICT (task, kind, who, level, class) DO UPDATE SET n = n + excluded.n;")


def _derived_sql(task: _Task) -> str:
    """The stats table of a task (one row per item ever registered or judged: registered?, votes per
    verdict), its per-class tallies and the triggers that keep both current."""
    keys = ", ".join(task.keys)
    cols = "".join(f", n_{v} INTEGER NOT NULL DEFAULT 0" for v in task.values)
    key_cols = ", ".join(f"{k} {'TEXT' if k == 'id' else 'INTEGER'} NOT NULL" for k in task.keys)
    s, t, items, verdicts = task.stats, task.name, task.items, task.verdicts

    def contribute(row: str, sign: str) -> str:
        # a stats row counts in its class's tallies: one item, a split one, one with n agreed verdicts
        return (_tally(task, "items", "''", "0", f"{row}.class", sign, f"{row}.registered = 1")
                + _tally(task, "split", "''", "0", f"{row}.class", sign, task.split(row))
                + _tally(task, "agree", "''", f"{row}.n_{task.agreed}", f"{row}.class", sign,
                         f"{row}.registered = 1 AND {row}.n_{task.agreed} > 0"))

    def vote(row: str, sign: str) -> str:
        # a verdict row: its item's vote counts, and the labeler's own count when the item is registered
        sets = ", ".join(f"n_{v} = n_{v} {sign} ({row}.verdict = '{v}')" for v in task.values)
        registered = f"EXISTS (SELECT 1 FROM {items} i WHERE {task.same('i', row)})"
        return (f"INSERT INTO {s} ({keys}) VALUES ({', '.join(f'{row}.{k}' for k in task.keys)}) "
                "ON CONFLICT DO NOTHING;"
                f"UPDATE {s} SET {sets} WHERE {task.same(s, row)};"
                + _tally(task, "mine", f"{row}.labeler", "0", f"{row}.class", f"{sign}1", registered))

    def register(row: str, flag: int, sign: str) -> str:
        # an item (un)registered: its stats row's flag, and the own count of every labeler who judged it
        return (f"INSERT INTO {s} ({keys}, registered) VALUES ({', '.join(f'{row}.{k}' for k in task.keys)}, {flag}) "
                f"ON CONFLICT DO UPDATE SET registered = {flag};"
                f"INSERT INTO tallies (task, kind, who, level, class, n) SELECT '{t}', 'mine', v.labeler, 0, v.class, "
                f"{sign}1 FROM {verdicts} v WHERE {task.same('v', row)} "
                "ON CONFLICT (task, kind, who, level, class) DO UPDATE SET n = n + excluded.n;")

    return f"""
CREATE TABLE {s} ({key_cols}, registered INTEGER NOT NULL DEFAULT 0{cols}, PRIMARY KEY ({keys})) WITHOUT ROWID;
CREATE INDEX {s}_split ON {s} ({keys}) WHERE {task.split()};
CREATE TRIGGER {s}_ins AFTER INSERT ON {s} BEGIN {contribute('NEW', '1')} END;
CREATE TRIGGER {s}_upd AFTER UPDATE ON {s} BEGIN {contribute('OLD', '-1')} {contribute('NEW', '1')} END;
CREATE TRIGGER {s}_del AFTER DELETE ON {s} BEGIN {contribute('OLD', '-1')} END;
CREATE TRIGGER {t}_vote_ins AFTER INSERT ON {verdicts} BEGIN {vote('NEW', '+')} END;
CREATE TRIGGER {t}_vote_upd AFTER UPDATE OF verdict, labeler, {keys} ON {verdicts} BEGIN {vote('OLD', '-')} {vote('NEW', '+')} END;
CREATE TRIGGER {t}_vote_del AFTER DELETE ON {verdicts} BEGIN {vote('OLD', '-')} END;
CREATE TRIGGER {t}_item_ins AFTER INSERT ON {items} BEGIN {register('NEW', 1, '')} END;
CREATE TRIGGER {t}_item_del AFTER DELETE ON {items} BEGIN {register('OLD', 0, '-')} END;
"""


_DERIVED = f"""
CREATE TABLE tallies (
    task TEXT NOT NULL, kind TEXT NOT NULL, who TEXT NOT NULL, level INTEGER NOT NULL, class INTEGER NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (task, kind, who, level, class)) WITHOUT ROWID;
CREATE TABLE sync_state (source TEXT PRIMARY KEY, fingerprint TEXT NOT NULL);
CREATE TABLE sync_files (source TEXT NOT NULL, key TEXT NOT NULL, path TEXT NOT NULL, PRIMARY KEY (source, key));
CREATE INDEX sync_files_key ON sync_files (key);
{_derived_sql(_REVIEW_TASK)}
{_derived_sql(_CURATE_TASK)}
"""
_DERIVED_OBJECTS = ("tallies", "sync_state", "sync_files") + tuple(t.stats for t in _TASKS)


def _rebuild_derived(con: sqlite3.Connection) -> None:
    """Drop and recreate the derived tables and triggers, and fill them from the tables they summarise."""
    for name, kind in con.execute("SELECT name, type FROM sqlite_master WHERE type IN ('trigger', 'table')").fetchall():
        if kind == "trigger" or name in _DERIVED_OBJECTS:
            con.execute(f"DROP {kind.upper()} IF EXISTS {name}")
    _execute_script(con, _DERIVED)
    for task in _TASKS:
        keys = ", ".join(task.keys)
        sums = ", ".join(f"sum(n_{v})" for v in task.values)
        votes = ", ".join(f"verdict = '{v}' AS n_{v}" for v in task.values)
        zeros = ", ".join(f"0 AS n_{v}" for v in task.values)
        # the stats rows (their insert trigger adds the items / split / agree tallies)
        con.execute(
            f"INSERT INTO {task.stats} ({keys}, registered, {', '.join(f'n_{v}' for v in task.values)}) "
            f"SELECT {keys}, max(registered), {sums} FROM ("
            f"  SELECT {keys}, 1 AS registered, {zeros} FROM {task.items} "
            f"  UNION ALL SELECT {keys}, 0 AS registered, {votes} FROM {task.verdicts}) "
            f"GROUP BY {keys}")
        con.execute(
            f"INSERT INTO tallies (task, kind, who, level, class, n) SELECT '{task.name}', 'mine', v.labeler, 0, "
            f"v.class, count(*) FROM {task.verdicts} v WHERE EXISTS (SELECT 1 FROM {task.items} i "
            f"WHERE {task.same('i', 'v')}) GROUP BY v.labeler, v.class")
    con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('derived_version', ?)", (_DERIVED_VERSION,))



class _Resolver:
    """``str(Path(path).resolve())`` that reads each folder once (its real path and which of its
    entries are symbolic links): a sync resolves 10^5 file paths in a few hundred folders. Exact: a
    path whose last part is a link, ``.`` or ``..`` is resolved in full."""

    def __init__(self) -> None:
        self._folders: dict[str, tuple[str, set[str]]] = {}

    def __call__(self, path: str | os.PathLike[str]) -> str:
        text = os.fspath(path)
        parent, name = os.path.split(text)
        known = self._folders.get(parent)
        if known is None:
            try:
                with os.scandir(parent or ".") as entries:
                    links = {e.name for e in entries if e.is_symlink()}
            except OSError:  # not a folder (yet): nothing in it is a link
                links = set()
            known = self._folders[parent] = (os.path.realpath(parent or "."), links)
        if name in ("", ".", "..") or name in known[1]:
            return str(Path(text).resolve())
        return os.path.join(known[0], name)


def _file_key_of(path: str) -> str:
    """:func:`file_key` of a path already absolute and normalised (as ``str(Path(...))`` writes it)."""
    return hashlib.sha256(path.encode("utf-8")).hexdigest()[:24] if os.path.isabs(path) else file_key(path)

class LabelStore:
    """The label database ``WS/labels.sqlite`` of a workspace.

    Args:
        workspace: workspace directory (or an open :class:`~spurious.workspace.Workspace`).
        sync: also run :meth:`sync` (register ``WS/visualize`` and ``WS/retrieve``).
        keep_connections: keep one SQLite connection per thread open between calls (the web server
            does: the schema and statements are then prepared once, a verdict takes one fsync
            instead of ~20 ms more). While one is open, recent writes may sit in
            ``labels.sqlite-wal`` rather than in ``labels.sqlite`` itself (SQLite reads both; copy
            both, or copy when the process has ended). Off: a connection per call, closed after it.

    Raises:
        FileNotFoundError: ``workspace`` is not a spurious workspace.
        ValueError: the database has a newer schema than this spurious reads.
        IncompatibleArtifactError: the database was made for another model.
    """

    def __init__(self, workspace: str | os.PathLike[str] | Workspace, *, sync: bool = False,
                 keep_connections: bool = False) -> None:
        self.keep_connections = bool(keep_connections)
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
        self.root = self.workspace.root
        self.path = self.root / DB_NAME
        self._local = threading.local()
        self._init_db()
        if sync:
            self.sync()

    # ------------------------------------------------------------------ connection
    def _open(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        con.execute("PRAGMA synchronous = FULL")
        return con

    @contextlib.contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection: with ``keep_connections``, this thread's (opened on first use, kept for the
        next call; a nested call, or the first call after a fork, opens its own), else a new one
        closed after the call; a write holds ``BEGIN IMMEDIATE`` until
        commit, so concurrent writers queue instead of failing. Reads run in autocommit mode (each
        statement sees every committed write)."""
        local = self._local
        if not self.keep_connections:  # a connection per call, closed after it (the file is complete after each)
            local.pid, local.con, local.busy = None, None, True
        elif getattr(local, "pid", None) != os.getpid():  # a new thread, or a forked child: not the parent's
            local.pid, local.con, local.busy = os.getpid(), None, False
        shared = not local.busy
        if shared:
            if local.con is None:
                local.con = self._open()
            con, local.busy = local.con, True
        else:
            con = self._open()
        try:
            if not write:
                yield con
                return
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            if not shared:
                con.close()
            else:
                local.busy = False
                if con.in_transaction:  # left open by a failure: start the next call afresh
                    con.close()
                    local.con = None

    def _init_db(self) -> None:
        try:
            with self._connect() as con:
                mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.DatabaseError as err:
            raise ValueError(f"{self.path} is not a usable SQLite database ({err}); move it away to start a "
                             "new label store") from None
        if str(mode).lower() != "wal":
            log.warning("%s: SQLite refused WAL mode (journal_mode=%s); concurrent labelers may wait longer",
                        self.path, mode)
        with self._connect(write=True) as con:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ValueError(
                    f"{self.path} has label schema version {version}, but spurious {__version__} reads up to "
                    f"version {SCHEMA_VERSION}; upgrade spurious (pip install -U spurious) to open it"
                )
            if version == 0:
                tables = con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
                if tables:
                    raise ValueError(f"{self.path} is an SQLite file but not a spurious label store "
                                     "(no schema version); move it away or pick another workspace")
                _execute_script(con, _SCHEMA)
                meta = {"format": "spurious-labels", "model_fingerprint": self.workspace.model_fingerprint,
                        "model_spec": self.workspace.model_spec, "created": utc_now(),
                        "package_version": __version__}
                con.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
                version = 1
            for target in range(version + 1, SCHEMA_VERSION + 1):
                _execute_script(con, _MIGRATIONS[target])
                log.info("%s: label schema migrated to version %d", self.path, target)
            if version < SCHEMA_VERSION:
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            _execute_script(con, _INDEXES)
            derived = con.execute("SELECT value FROM meta WHERE key = 'derived_version'").fetchone()
            if derived is None or derived[0] != _DERIVED_VERSION:
                _rebuild_derived(con)
        meta = self.meta
        fingerprint = meta.get("model_fingerprint")
        if fingerprint != self.workspace.model_fingerprint:
            ws = self.workspace
            raise IncompatibleArtifactError(
                f"label store {self.path} holds labels for model {meta.get('model_spec', '(spec not recorded)')!r} "
                f"(model fingerprint {fingerprint}), but workspace {ws.root} has model {ws.model_spec!r} "
                f"(fingerprint {ws.model_fingerprint}); labels belong to the workspace they were made in: open that "
                f"workspace, or move {self.path} away to start new labels here"
            )

    @property
    def meta(self) -> dict[str, str]:
        """The database's meta table (format, model fingerprint and spec, created, package version)."""
        with self._connect() as con:
            return {r["key"]: r["value"] for r in con.execute("SELECT key, value FROM meta")}

    @property
    def schema_version(self) -> int:
        with self._connect() as con:
            return int(con.execute("PRAGMA user_version").fetchone()[0])

    # ------------------------------------------------------------------ registration
    def sync(self) -> SyncResult:
        """Register the components of ``WS/visualize`` and the candidates of ``WS/retrieve``.

        Idempotent: the registered items and files are replaced by what is on disk now; verdicts
        are never touched (a verdict on an item that disappears is kept and comes back with it).
        Only what changed is read again: each class table ``components.json`` and
        ``candidates.jsonl`` is registered with a fingerprint (SHA-256 of its bytes, the workspace's
        place and the counterfactual index), and a source whose fingerprint is unchanged is skipped.

        Raises:
            IncompatibleArtifactError: an artifact was made for another model than the workspace's.
            ValueError: a ``components.json`` or ``candidates.jsonl`` is malformed (named in the message).
        """
        visualize, retrieve = self.root / "visualize", self.root / "retrieve"
        if visualize.is_dir():
            self._check_manifest(visualize)
        if (retrieve / "candidates.jsonl").is_file():
            self._check_manifest(retrieve)
        with self._connect() as con:
            state = {r[0]: r[1] for r in con.execute("SELECT source, fingerprint FROM sync_state")}
        wanted = self._fingerprints()
        changed = [src for src, fp in wanted.items() if state.get(src) != fp]
        gone = [src for src in state if src not in wanted]
        pairs = shown_pairs(self.root) if any(src != "retrieve" for src in changed) else {}
        components: list[JSONDict] = []
        candidates: list[JSONDict] = []
        files: list[tuple[str, str, str]] = []  # (source, key, path)
        resolve = _Resolver()
        for src in changed:
            if src == "retrieve":
                found = self._scan_retrieve()
                candidates += found
                for c in found:
                    if c["path"] is not None:  # None: a pool without files
                        files.append((src, _file_key_of(c["path"]), resolve(c["path"])))
            else:
                comps, paths = self._scan_class(int(src.partition("/")[2]), pairs, resolve)
                components += comps
                files += [(src, _file_key_of(path), real) for path, real in paths]
        with self._connect(write=True) as con:
            stale: set[str] = set()
            if not state:  # a first sync, or a file of an earlier spurious: replace everything
                stale |= {r[0] for r in con.execute("SELECT key FROM files")}
                for table in ("components", "candidates", "sync_files"):
                    con.execute(f"DELETE FROM {table}")
            for src in gone + changed:
                stale |= {r[0] for r in con.execute("SELECT key FROM sync_files WHERE source = ?", (src,))}
                con.execute("DELETE FROM sync_files WHERE source = ?", (src,))
                con.execute("DELETE FROM sync_state WHERE source = ?", (src,))
                if src == "retrieve":
                    con.execute("DELETE FROM candidates")
                else:
                    con.execute("DELETE FROM components WHERE class = ?", (int(src.partition("/")[2]),))
            con.executemany(
                "INSERT INTO components (class, component, rank, record) VALUES (?, ?, ?, ?)",
                [(c["class"], c["component"], c["rank"], json.dumps(c)) for c in components])
            con.executemany(
                "INSERT INTO candidates (class, component, id, rank, path, record) VALUES (?, ?, ?, ?, ?, ?)",
                [(c["class"], c["component"], c["id"], c["rank"], c["path"] or "", json.dumps(c)) for c in candidates])
            con.executemany("INSERT OR IGNORE INTO sync_files (source, key, path) VALUES (?, ?, ?)", files)
            con.executemany("INSERT OR IGNORE INTO files (key, path) VALUES (?, ?)", [f[1:] for f in files])
            con.executemany("DELETE FROM files WHERE key = ? AND NOT EXISTS (SELECT 1 FROM sync_files s "
                            "WHERE s.key = files.key)", [(k,) for k in stale])
            con.executemany("INSERT INTO sync_state (source, fingerprint) VALUES (?, ?)",
                            [(src, wanted[src]) for src in changed])
            counts = [int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                      for t in ("components", "candidates", "files")]
            classes = [int(r[0]) for r in con.execute(
                "SELECT class FROM components UNION SELECT class FROM candidates ORDER BY class")]
        log.info("label store: %d components, %d candidates, %d files registered (%d of %d sources read again)",
                 *counts, len(changed), len(wanted))
        return SyncResult(counts[0], counts[1], counts[2], classes)

    def _fingerprints(self) -> dict[str, str]:
        """``source -> fingerprint`` of what :meth:`sync` registers: ``visualize/KKKKK`` per class table,
        ``retrieve`` for the candidates. A fingerprint hashes the file's bytes, the workspace's place
        (registered paths are absolute) and, for a class, the counterfactual index (its pairs are
        shown with the components); for the candidates also the working directory (relative pool
        paths are made absolute against it)."""
        place = str(self.root.resolve())
        index = self.root / "counterfactual" / "index.json"
        pairs = hashlib.sha256(index.read_bytes()).hexdigest() if index.is_file() else ""
        out: dict[str, str] = {}
        for k in sheet_classes(self.root):
            data = (sheet_folder(self.root, k) / SHEET_TABLE).read_bytes()
            out[f"visualize/{k:05d}"] = hashlib.sha256(f"{place}\0{pairs}\0".encode() + data).hexdigest()
        candidates = self.root / "retrieve" / "candidates.jsonl"
        if candidates.is_file():
            data = candidates.read_bytes()
            out["retrieve"] = hashlib.sha256(f"{place}\0{os.getcwd()}\0".encode() + data).hexdigest()
        return out

    def _check_manifest(self, folder: Path) -> None:
        path = folder / "manifest.json"
        if not path.is_file():
            return
        manifest = read_json(path)
        model = manifest.get("model")
        if isinstance(model, dict):
            fingerprint, spec = model.get("fingerprint"), model.get("spec")
        else:
            fingerprint, spec = manifest.get("model_fingerprint"), manifest.get("model_spec")
        ws = self.workspace
        if fingerprint is not None and fingerprint != ws.model_fingerprint:
            raise IncompatibleArtifactError(
                f"{path} was made with model {spec or '(spec not recorded)'!r} (model fingerprint {fingerprint}), "
                f"but workspace {ws.root} has model {ws.model_spec!r} (fingerprint {ws.model_fingerprint}); "
                f"re-run that stage in this workspace: `spurious {folder.name} {ws.root} --overwrite`"
            )

    def visual_path(self, component: JSONDict, name: str) -> Path:
        """Where the file ``name`` of a registered component record lies (its class folder of
        ``WS/visualize``); :func:`file_key` of this path is the key the web UI serves it under."""
        return self.root / "visualize" / str(component["folder"]) / str(name)

    def _scan_class(self, k: int, pairs: dict[tuple[int, int], list[CounterfactualPair]],
                    resolve: _Resolver) -> tuple[list[JSONDict], list[tuple[str, str]]]:
        """The component records of class ``k``'s table (with their counterfactual pairs) and the files
        they name: ``(absolute path, real path)``."""
        components: list[JSONDict] = []
        files: list[tuple[str, str]] = []
        cf_root = (self.root / "counterfactual").resolve()
        table = read_sheet_table(self.root, k)
        folder = table.folder
        real_folder = resolve(folder)
        base = str(self.root / "visualize" / folder.name)
        for rec in table.components:
            rec = {**rec, "folder": folder.name}
            for name in _png_names(rec):
                # a plain file name joins as Path would write it; anything else goes through Path
                simple = "/" not in name and os.sep not in name and name not in (".", "..")
                path = os.path.join(base, name) if simple else str(self.visual_path(rec, name))
                real = resolve(path)
                if os.path.dirname(real) == real_folder:  # only files of this class folder are served
                    files.append((path, real))
            shown = []
            for pair in pairs.get((k, int(rec["component"])), ()):
                pngs = {"original": pair.original, "counterfactual": pair.counterfactual,
                        "difference": pair.difference, "heatmap": pair.heatmap}
                reals = {n: resolve(p) for n, p in pngs.items()}
                if not all(Path(p).is_relative_to(cf_root) for p in reals.values()):
                    continue  # only files of WS/counterfactual are served
                files.extend((str(pngs[n]), reals[n]) for n in pngs)
                m = pair.optimised
                shown.append({"mode": pair.mode, "image_id": pair.image_id, "source": pair.source,
                              "spec": m["spec"], "before": m["before"], "after": m["after"],
                              "files": {n: str(p) for n, p in pngs.items()}})
            if shown:
                rec["counterfactuals"] = shown
            components.append(rec)
        return components, files

    def _scan_retrieve(self) -> list[JSONDict]:
        path = self.root / "retrieve" / "candidates.jsonl"
        if not path.is_file():
            return []
        out = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: not JSON ({err.msg}); re-run `spurious retrieve`") from None
                missing = [k for k in _CANDIDATE_KEYS if k not in rec] if isinstance(rec, dict) else _CANDIDATE_KEYS
                if missing:
                    raise ValueError(f"{path}:{lineno}: candidate record lacks {', '.join(missing)}; "
                                     "re-run `spurious retrieve`")
                rec["class"], rec["component"], rec["rank"] = int(rec["class"]), int(rec["component"]), int(rec["rank"])
                rec["id"] = str(rec["id"])
                # a pool imported without image files has no path: the candidate is labelled by id only
                rec["path"] = str(Path(rec["path"]).absolute()) if rec["path"] else None
                out.append(rec)
        return out

    # ------------------------------------------------------------------ items
    def class_name(self, k: int) -> str:
        names = self.workspace.class_names
        return names[k] if 0 <= k < len(names) else f"class {k}"

    def component(self, k: int, l: int) -> JSONDict:
        """The registered record of component ``(k, l)`` (see :class:`spurious.visualize.SheetTable` for its keys).

        Raises:
            UnknownItemError: no such component is registered.
        """
        row = None
        if _fits_sql(k, l):
            with self._connect() as con:
                row = con.execute("SELECT record FROM components WHERE class = ? AND component = ?",
                                  (int(k), int(l))).fetchone()
        if row is None:
            raise UnknownItemError(f"component (class {k}, component {l}) is not registered; "
                                   "run `spurious visualize` for it and reload the label store")
        return dict(json.loads(row["record"]))

    def candidates(self, k: int, l: int) -> list[JSONDict]:
        """The registered retrieval candidates of ``(k, l)`` (candidates.jsonl records), by rank."""
        if not _fits_sql(k, l):
            return []
        with self._connect() as con:
            rows = con.execute("SELECT record FROM candidates WHERE class = ? AND component = ? ORDER BY rank, id",
                               (int(k), int(l))).fetchall()
        return [json.loads(r["record"]) for r in rows]

    def file_path(self, key: str) -> Path | None:
        """The registered file behind an opaque key, or ``None`` for any other key."""
        with self._connect() as con:
            row = con.execute("SELECT path FROM files WHERE key = ?", (str(key),)).fetchone()
        return None if row is None else Path(row["path"])

    # ------------------------------------------------------------------ identities and sessions
    def labelers(self) -> list[str]:
        """The names of every identity (who gave a verdict, signed in or was invited), sorted."""
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT name FROM labelers ORDER BY name")]

    def label_counts(self, min_agree: int = 2) -> LabelCounts:
        """The labelers, and how many components they agreed are spurious and images they accepted."""
        agreed = self.agreed_components(min_agree)
        accepted = self.accepted_images(min_agree)
        return LabelCounts(self.labelers(), sum(len(v) for v in agreed.values()),
                           sum(len(v) for v in accepted.values()), min_agree)

    def identities(self) -> list[Labeler]:
        """Every identity with its kind, creation time and removal time, sorted by name."""
        with self._connect() as con:
            return [_labeler(r) for r in con.execute("SELECT * FROM labelers ORDER BY name")]

    def identity(self, name: str) -> Labeler | None:
        """The identity called ``name`` (after :func:`check_labeler`), or ``None``."""
        with self._connect() as con:
            row = con.execute("SELECT * FROM labelers WHERE name = ?", (check_labeler(name),)).fetchone()
        return None if row is None else _labeler(row)

    def add_labeler(self, name: str, kind: str = "name") -> str:
        """Register an identity that needs no token (a typed name, or a ``simulated`` script); returns
        the validated name. Registering an existing identity of the same kind again does nothing.

        Raises:
            ValueError: bad name; ``kind`` not ``name``/``simulated`` (invite with :meth:`invite_labeler`);
                the name belongs to an identity of another kind, or one the owner removed.
        """
        name = check_labeler(name)
        if kind == "token":
            raise ValueError("an invited labeler needs a token: use invite_labeler(name) "
                             "(`spurious label WS --add-labeler NAME`)")
        kind = _check_kind(kind, ("name", "simulated"))
        with self._connect(write=True) as con:
            row = con.execute("SELECT * FROM labelers WHERE name = ?", (name,)).fetchone()
            if row is None:
                con.execute("INSERT INTO labelers (name, created, kind) VALUES (?, ?, ?)", (name, utc_now(), kind))
            elif row["revoked"] is not None:
                raise ValueError(f"labeler {name!r} was removed from this label store on {row['revoked']}; "
                                 f"invite again with `spurious label WS --add-labeler {name!r}`")
            elif row["kind"] != kind:
                raise ValueError(f"labeler {name!r} is an identity of kind {row['kind']!r}, not {kind!r}"
                                 + ("; it signs in with its invite link" if row["kind"] == "token" else ""))
        return name

    def invite_labeler(self, name: str) -> str:
        """Create (or renew) the invite token of labeler ``name``; returns the token.

        The token is shown once: only its SHA-256 is stored. A new invite replaces the labeler's
        old token and ends its sessions. An unverified ``name`` identity of that name becomes an
        invited one (its verdicts stay), a removed one is restored.

        Raises:
            ValueError: bad name, or the name belongs to a ``simulated`` labeler.
        """
        name = check_labeler(name)
        token = secrets.token_urlsafe(32)
        with self._connect(write=True) as con:
            row = con.execute("SELECT kind FROM labelers WHERE name = ?", (name,)).fetchone()
            if row is not None and row["kind"] == "simulated":
                raise ValueError(f"labeler {name!r} is a simulated labeler (a script); invite people under "
                                 "another name")
            if row is None:
                con.execute("INSERT INTO labelers (name, created, kind, token_hash) VALUES (?, ?, 'token', ?)",
                            (name, utc_now(), _secret_hash(token)))
            else:
                con.execute("UPDATE labelers SET kind = 'token', token_hash = ?, revoked = NULL WHERE name = ?",
                            (_secret_hash(token), name))
            con.execute("DELETE FROM sessions WHERE labeler = ?", (name,))
        return token

    def remove_labeler(self, name: str) -> Labeler:
        """End labeler ``name``'s access: its token no longer signs in, its sessions end, its name can
        no longer be typed. Its verdicts stay (and count). Returns the removed identity.

        Raises:
            ValueError: no such labeler (the message lists the known names).
        """
        name = check_labeler(name)
        with self._connect(write=True) as con:
            if con.execute("SELECT 1 FROM labelers WHERE name = ?", (name,)).fetchone() is None:
                known = [r[0] for r in con.execute("SELECT name FROM labelers ORDER BY name")]
                raise ValueError(f"no labeler {name!r} in {self.path}; known: {', '.join(known) or 'none'} "
                                 "(see `spurious label WS --list-labelers`)")
            con.execute("UPDATE labelers SET token_hash = NULL, revoked = coalesce(revoked, ?) WHERE name = ?",
                        (utc_now(), name))
            con.execute("DELETE FROM sessions WHERE labeler = ?", (name,))
            return _labeler(con.execute("SELECT * FROM labelers WHERE name = ?", (name,)).fetchone())

    def labeler_for_token(self, token: str) -> Labeler | None:
        """The active invited labeler whose token this is, or ``None`` (unknown, replaced or removed)."""
        if not isinstance(token, str) or not _SECRET_RE.match(token):
            return None
        with self._connect() as con:
            row = con.execute("SELECT * FROM labelers WHERE token_hash = ? AND kind = 'token' AND revoked IS NULL",
                              (_secret_hash(token),)).fetchone()
        return None if row is None else _labeler(row)

    def open_session(self, name: str) -> str:
        """Start a sign-in session of the active identity ``name``; returns the session id (the
        browser's cookie; only its SHA-256 is stored). Sessions last :data:`SESSION_SECONDS`.

        Raises:
            ValueError: no such identity, or it was removed.
        """
        name = check_labeler(name)
        session = secrets.token_urlsafe(32)
        now = int(time.time())
        with self._connect(write=True) as con:
            if con.execute("SELECT 1 FROM labelers WHERE name = ? AND revoked IS NULL", (name,)).fetchone() is None:
                raise ValueError(f"no active labeler {name!r}; sign in or invite first")
            con.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
            con.execute("INSERT INTO sessions (id_hash, labeler, created, expires) VALUES (?, ?, ?, ?)",
                        (_secret_hash(session), name, utc_now(), now + SESSION_SECONDS))
        return session

    def session_labeler(self, session: str | None) -> Labeler | None:
        """The identity of a live session id, or ``None`` (unknown, expired, ended, or removed labeler)."""
        if not isinstance(session, str) or not _SECRET_RE.match(session):
            return None
        with self._connect() as con:
            row = con.execute(
                "SELECT l.* FROM sessions s JOIN labelers l ON l.name = s.labeler "
                "WHERE s.id_hash = ? AND s.expires > ? AND l.revoked IS NULL",
                (_secret_hash(session), int(time.time()))).fetchone()
        return None if row is None else _labeler(row)

    def close_session(self, session: str | None) -> None:
        """End a session (sign-out); an unknown id is ignored."""
        if isinstance(session, str) and _SECRET_RE.match(session):
            with self._connect(write=True) as con:
                con.execute("DELETE FROM sessions WHERE id_hash = ?", (_secret_hash(session),))

    # ------------------------------------------------------------------ verdicts
    def set_component_verdict(self, labeler: str, k: int, l: int, verdict: str, note: str | None = None) -> None:
        """Store (or replace) ``labeler``'s verdict on component ``(k, l)``.

        Args:
            verdict: one of :data:`COMPONENT_VERDICTS`.
            note: optional free text (at most 2000 characters); ``None`` keeps an earlier note.

        Raises:
            ValueError: bad labeler name, unknown verdict, note too long.
            UnknownItemError: the component is not registered.
        """
        labeler = check_labeler(labeler)
        verdict = _check_verdict(verdict, COMPONENT_VERDICTS)
        if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE_CHARS):
            raise ValueError(f"note must be a string of at most {MAX_NOTE_CHARS} characters")
        if not _fits_sql(k, l):
            raise UnknownItemError(f"component (class {k}, component {l}) is not registered")
        now = utc_now()
        with self._connect(write=True) as con:
            if con.execute("SELECT 1 FROM components WHERE class = ? AND component = ?", (k, l)).fetchone() is None:
                raise UnknownItemError(f"component (class {k}, component {l}) is not registered")
            con.execute("INSERT OR IGNORE INTO labelers (name, created) VALUES (?, ?)", (labeler, now))
            con.execute(
                "INSERT INTO component_verdicts (labeler, class, component, verdict, note, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (labeler, class, component) DO UPDATE SET "
                "verdict = excluded.verdict, note = coalesce(?, note), updated = excluded.updated",
                (labeler, k, l, verdict, note or "", now, now, note))
            con.execute("INSERT INTO history (at, labeler, task, class, component, verdict, note) "
                        "VALUES (?, ?, 'review', ?, ?, ?, ?)", (now, labeler, k, l, verdict, note))

    def set_image_verdict(self, labeler: str, k: int, l: int, image_id: str, verdict: str) -> None:
        """Store (or replace) ``labeler``'s verdict on candidate ``image_id`` of ``(k, l)``.

        Raises:
            ValueError: bad labeler name or unknown verdict (valid: :data:`IMAGE_VERDICTS`).
            UnknownItemError: the image is not a registered candidate of ``(k, l)``.
        """
        labeler = check_labeler(labeler)
        verdict = _check_verdict(verdict, IMAGE_VERDICTS)
        if not _fits_sql(k, l):
            raise UnknownItemError(f"image {image_id!r} is not a registered candidate of (class {k}, component {l})")
        now = utc_now()
        with self._connect(write=True) as con:
            if con.execute("SELECT 1 FROM candidates WHERE class = ? AND component = ? AND id = ?",
                           (k, l, str(image_id))).fetchone() is None:
                raise UnknownItemError(f"image {image_id!r} is not a registered candidate of "
                                       f"(class {k}, component {l})")
            con.execute("INSERT OR IGNORE INTO labelers (name, created) VALUES (?, ?)", (labeler, now))
            con.execute(
                "INSERT INTO image_verdicts (labeler, class, component, id, verdict, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (labeler, class, component, id) DO UPDATE SET "
                "verdict = excluded.verdict, updated = excluded.updated",
                (labeler, k, l, str(image_id), verdict, now, now))
            con.execute("INSERT INTO history (at, labeler, task, class, component, id, verdict) "
                        "VALUES (?, ?, 'curate', ?, ?, ?, ?)", (now, labeler, k, l, str(image_id), verdict))

    def component_verdicts(self, k: int, l: int) -> dict[str, dict[str, str]]:
        """``labeler -> {"verdict", "note", "updated"}`` for component ``(k, l)``."""
        with self._connect() as con:
            rows = con.execute("SELECT labeler, verdict, note, updated FROM component_verdicts "
                               "WHERE class = ? AND component = ? ORDER BY labeler", (k, l)).fetchall()
        return {r["labeler"]: {"verdict": r["verdict"], "note": r["note"], "updated": r["updated"]} for r in rows}

    def image_verdicts(self, k: int, l: int) -> dict[str, dict[str, str]]:
        """``image id -> {labeler: verdict}`` for the candidates of ``(k, l)``."""
        out: dict[str, dict[str, str]] = {}
        with self._connect() as con:
            for r in con.execute("SELECT id, labeler, verdict FROM image_verdicts WHERE class = ? AND component = ? "
                                 "ORDER BY id, labeler", (k, l)):
                out.setdefault(r["id"], {})[r["labeler"]] = r["verdict"]
        return out

    def history(self) -> list[JSONDict]:
        """Every verdict ever given, oldest first (``seq, at, labeler, task, class, component, id, verdict, note``)."""
        with self._connect() as con:
            return [dict(r) for r in con.execute("SELECT * FROM history ORDER BY seq")]

    # ------------------------------------------------------------------ listings for the UI
    def components(self, labeler: str | None = None, *, filter: str = "all", cls: int | None = None,
                   min_agree: int = 2) -> list[ComponentRow]:
        """Registered components in review order (class, then rank), with verdict counts.

        Args:
            labeler: whose verdict is ``mine`` (and whose "unlabeled" the filter means).
            filter: ``all``, ``unlabeled`` (no verdict of ``labeler``) or ``disagreements``
                (labelers gave different verdicts).
            cls: only this class.
        """
        select([], filter)  # validates the filter before the query
        min_agree = _check_min_agree(min_agree)
        if cls is not None and not _fits_sql(cls):
            return []
        where = ("c.class = ?", [int(cls)]) if cls is not None else ("1", [])
        return select(self._component_rows(labeler, *where, min_agree), filter)

    def _component_rows(self, labeler: str | None, where: str, params: list[int], min_agree: int) -> list[ComponentRow]:
        """The rows of the registered components that ``where`` keeps, in review order, with their votes."""
        sums = ", ".join(f"coalesce(sum(v.verdict = '{v}'), 0) AS n_{v}" for v in COMPONENT_VERDICTS)
        with self._connect() as con:
            rows = con.execute(
                f"SELECT c.class, c.component, c.rank, {sums}, "
                "max(CASE WHEN v.labeler = ? THEN v.verdict END) AS mine "
                "FROM components c LEFT JOIN component_verdicts v ON v.class = c.class AND v.component = c.component "
                f"WHERE {where} GROUP BY c.class, c.component ORDER BY c.class, c.rank, c.component",
                [labeler, *params]).fetchall()
        out = []
        for r in rows:
            votes = {v: int(r[f"n_{v}"]) for v in COMPONENT_VERDICTS}
            out.append(ComponentRow(r["class"], r["component"], r["rank"], r["mine"], votes,
                                    votes["spurious"] >= min_agree))
        return out

    def curate_components(self, labeler: str | None = None, *, filter: str = "all", cls: int | None = None,
                          min_agree: int = 2) -> list[CurateRow]:
        """Components with retrieval candidates (by class, component), with curation progress.

        ``filter``: ``all``, ``unlabeled`` (``labeler`` has not judged every candidate) or
        ``disagreements`` (some candidate got different verdicts).
        """
        select([], filter)  # validates the filter before the query
        min_agree = _check_min_agree(min_agree)
        sql = (
            "SELECT c.class, c.component, count(*) AS n, coalesce(sum(a.mine IS NOT NULL), 0) AS n_mine, "
            "coalesce(sum(a.distinct_verdicts > 1), 0) AS n_dis, coalesce(sum(a.outs >= ?), 0) AS n_acc "
            "FROM candidates c LEFT JOIN ("
            "  SELECT class, component, id, count(DISTINCT verdict) AS distinct_verdicts, "
            "  sum(verdict = 'out') AS outs, max(CASE WHEN labeler = ? THEN verdict END) AS mine "
            "  FROM image_verdicts " + ("WHERE class = ? " if cls is not None else "")
            + "GROUP BY class, component, id) a "
            "ON a.class = c.class AND a.component = c.component AND a.id = c.id "
            + ("WHERE c.class = ? " if cls is not None else "")
            + "GROUP BY c.class, c.component ORDER BY c.class, c.component")
        if cls is not None and not _fits_sql(cls):
            return []
        params: list[int | str | None] = [min_agree, labeler] + ([int(cls)] * 2 if cls is not None else [])
        with self._connect() as con:
            rows = con.execute(sql, params).fetchall()
        out = [CurateRow(r["class"], r["component"], r["n"], r["n_mine"], r["n_dis"], r["n_acc"]) for r in rows]
        return select(out, filter)

    # ------------------------------------------------------------------ one item and its neighbours (indexed)
    def component_row(self, labeler: str | None, k: int, l: int, *, min_agree: int = 2) -> ComponentRow | None:
        """The :meth:`components` row of ``(k, l)`` alone (``None``: not registered); one indexed query."""
        min_agree = _check_min_agree(min_agree)
        if not _fits_sql(k, l):
            return None
        rows = self._component_rows(labeler, "c.class = ? AND c.component = ?", [int(k), int(l)], min_agree)
        return rows[0] if rows else None

    def component_neighbour(self, labeler: str | None, key: tuple[int, int, int] | None, *, before: bool = False,
                            filter: str = "all", cls: int | None = None, min_agree: int = 2) -> ComponentRow | None:
        """The row just after (``before``: just before) review position ``key`` = ``(class, rank,
        component)`` among the rows that ``filter`` and ``cls`` keep; ``key=None``: the first (last) one.

        The same row as :func:`select` over :meth:`components` would give, found with one indexed
        query (the order ``class, rank, component``) instead of listing every component.
        """
        if cls is not None and not _fits_sql(cls):
            return None
        where, params = _filter_sql("component_verdicts", _REVIEW_KEYS, labeler, filter, cls)
        source = "components c"
        if filter == "disagreements":  # sparse: start from the split items (a partial index), then order them
            where, params = _REVIEW_TASK.split("d"), []
            if cls is not None:
                where += " AND d.class = ?"
                params.append(int(cls))
            source = (f"{_REVIEW_TASK.stats} d CROSS JOIN components c "
                      "ON c.class = d.class AND c.component = d.component")
        if key is not None:
            where += f" AND (c.class, c.rank, c.component) {'<' if before else '>'} (?, ?, ?)"
            params += [int(x) for x in key]
        order = " DESC" if before else ""
        with self._connect() as con:
            r = con.execute(f"SELECT c.class, c.component FROM {source} WHERE {where} "
                            f"ORDER BY c.class{order}, c.rank{order}, c.component{order} LIMIT 1", params).fetchone()
        return None if r is None else self.component_row(labeler, r["class"], r["component"], min_agree=min_agree)

    def component_position(self, labeler: str | None, row: ComponentRow, *, filter: str = "all",
                           cls: int | None = None) -> tuple[int | None, int]:
        """``(position, total)``: ``row``'s 1-based place among the rows ``filter``/``cls`` keep
        (``None`` when it is not one of them) and how many they are (two counting queries)."""
        if cls is not None and not _fits_sql(cls):
            return None, 0
        where, params = _filter_sql("component_verdicts", _REVIEW_KEYS, labeler, filter, row.cls)
        with self._connect() as con:  # min_agree plays no part in the filters' counts
            total = _filter_count(_tally_sums(con, "review", labeler, 1, cls=cls), filter)
            if not row.matches(filter) or (cls is not None and row.cls != cls):
                return None, total
            # the rows of earlier classes from their tallies, those of its own class before it counted
            earlier = 0 if cls is not None else _filter_count(_tally_sums(con, "review", labeler, 1, below=row.cls),
                                                              filter)
            before = int(con.execute(
                f"SELECT count(*) FROM components c WHERE {where} AND (c.rank, c.component) < (?, ?)",
                [*params, row.rank, row.component]).fetchone()[0])
        return earlier + before + 1, total

    def review_counts(self, labeler: str | None = None, *, min_agree: int = 2) -> dict[str, int]:
        """:func:`review_progress` of :meth:`components`, counted in SQL without listing the components."""
        min_agree = _check_min_agree(min_agree)
        with self._connect() as con:
            t = _tally_sums(con, "review", labeler, min_agree)
        return {"components": t["items"], "components_mine": t["mine"], "components_agreed": t["agree"],
                "components_disagreements": t["split"]}

    def curate_row(self, labeler: str | None, k: int, l: int, *, min_agree: int = 2) -> CurateRow | None:
        """The :meth:`curate_components` row of ``(k, l)`` alone (``None``: no candidates); one indexed query."""
        min_agree = _check_min_agree(min_agree)
        if not _fits_sql(k, l):
            return None
        with self._connect() as con:
            r = con.execute(
                "SELECT count(*) AS n, coalesce(sum(a.mine IS NOT NULL), 0) AS n_mine, "
                "coalesce(sum(a.distinct_verdicts > 1), 0) AS n_dis, coalesce(sum(a.outs >= ?), 0) AS n_acc "
                "FROM candidates c LEFT JOIN ("
                "  SELECT id, count(DISTINCT verdict) AS distinct_verdicts, sum(verdict = 'out') AS outs, "
                "  max(CASE WHEN labeler = ? THEN verdict END) AS mine "
                "  FROM image_verdicts WHERE class = ? AND component = ? GROUP BY id) a ON a.id = c.id "
                "WHERE c.class = ? AND c.component = ?", (min_agree, labeler, k, l, k, l)).fetchone()
        if not r["n"]:
            return None
        return CurateRow(k, l, r["n"], r["n_mine"], r["n_dis"], r["n_acc"])

    def curate_neighbour(self, labeler: str | None, key: tuple[int, int] | None, *, before: bool = False,
                         filter: str = "all", cls: int | None = None, min_agree: int = 2) -> CurateRow | None:
        """The row just after (``before``: just before) curation position ``key`` = ``(class,
        component)`` among the rows that ``filter`` and ``cls`` keep; ``key=None``: the first (last) one.

        The same row as :func:`select` over :meth:`curate_components` would give, found with one
        indexed query (the candidates' primary key order) instead of listing every component.
        """
        if cls is not None and not _fits_sql(cls):
            return None
        where, params = _filter_sql("image_verdicts", _CURATE_KEYS, labeler, filter, cls)
        source = "candidates c"
        if filter == "disagreements":  # sparse: walk the split candidates only (a partial index in this order)
            where, params = _CURATE_TASK.split("c"), []
            if cls is not None:
                where += " AND c.class = ?"
                params.append(int(cls))
            source = f"{_CURATE_TASK.stats} c"
        if key is not None:
            where += f" AND (c.class, c.component) {'<' if before else '>'} (?, ?)"
            params += [int(x) for x in key]
        order = " DESC" if before else ""
        with self._connect() as con:
            r = con.execute(f"SELECT c.class, c.component FROM {source} WHERE {where} "
                            f"ORDER BY c.class{order}, c.component{order} LIMIT 1", params).fetchone()
        return None if r is None else self.curate_row(labeler, r["class"], r["component"], min_agree=min_agree)

    def curate_counts(self, labeler: str | None = None, *, min_agree: int = 2) -> dict[str, int]:
        """:func:`curate_progress` of :meth:`curate_components`, counted in SQL without listing the components."""
        min_agree = _check_min_agree(min_agree)
        with self._connect() as con:
            t = _tally_sums(con, "curate", labeler, min_agree)
        return {"candidates": t["items"], "candidates_mine": t["mine"], "candidates_accepted": t["agree"],
                "candidates_disagreements": t["split"]}

    def classes_to_label(self) -> list[int]:
        """The classes with registered components or candidates, sorted (from the tallies: one row per class)."""
        with self._connect() as con:
            return [int(r[0]) for r in con.execute(
                "SELECT DISTINCT class FROM tallies WHERE task IN ('review', 'curate') AND kind = 'items' "
                "AND who = '' AND level = 0 AND n > 0 ORDER BY class")]

    def class_counts(self, labeler: str | None = None, *, min_agree: int = 2,
                     classes: Sequence[int] | None = None) -> dict[int, dict[str, int]]:
        """Per class with something to label (only ``classes`` when given: e.g. one page of the
        overview), the overview's counts: ``components``, ``mine``, ``agreed``, ``disagreements``
        (review, over components) and ``candidates``, ``judged``, ``accepted`` (curation, over
        candidate images); read from the per-class tallies (one row per class and count), not from
        the items."""
        min_agree = _check_min_agree(min_agree)
        names = {("review", "items"): "components", ("review", "mine"): "mine", ("review", "agree"): "agreed",
                 ("review", "split"): "disagreements", ("curate", "items"): "candidates",
                 ("curate", "mine"): "judged", ("curate", "agree"): "accepted"}
        only = "" if classes is None else f" AND class IN ({', '.join(str(int(k)) for k in classes)})"
        out: dict[int, dict[str, int]] = {}
        with self._connect() as con:
            for (task, kind), name in names.items():  # one range of the tallies' key each
                who = labeler if kind == "mine" else ""
                level = min_agree if kind == "agree" else 0
                for k, n in con.execute(
                        "SELECT class, sum(n) FROM tallies WHERE task = ? AND kind = ? AND who = ? AND level >= ?"
                        f"{only} GROUP BY class", (task, kind, who, level)):
                    out.setdefault(int(k), dict.fromkeys(names.values(), 0))[name] = int(n or 0)
        return {k: c for k, c in sorted(out.items()) if c["components"] or c["candidates"]}

    # ------------------------------------------------------------------ agreed results
    def agreed_components(self, min_agree: int = 2) -> dict[int, list[int]]:
        """The agreed spurious components: ``class k -> sorted [l, ...]`` (the sets ``S_k`` of SpuFix).

        A component counts when at least ``min_agree`` labelers gave it the verdict ``spurious``.
        Classes without one are absent.
        """
        min_agree = _check_min_agree(min_agree)
        with self._connect() as con:
            rows = con.execute(
                "SELECT class, component FROM component_verdicts WHERE verdict = 'spurious' "
                "GROUP BY class, component HAVING count(*) >= ? ORDER BY class, component", (min_agree,)).fetchall()
        out: dict[int, list[int]] = {}
        for r in rows:
            out.setdefault(int(r["class"]), []).append(int(r["component"]))
        return out

    def accepted_images(self, min_agree: int = 2) -> dict[tuple[int, int], list[JSONDict]]:
        """Candidates accepted for the spurious benchmark: ``(k, l) -> [record, ...]`` by rank.

        An image counts when at least ``min_agree`` labelers said ``out`` (the spurious feature
        without the class object). Each record is the ``candidates.jsonl`` record plus
        ``"labelers"``: the sorted names of those who said ``out``.
        """
        min_agree = _check_min_agree(min_agree)
        with self._connect() as con:
            rows = con.execute(
                "SELECT c.class, c.component, c.record, group_concat(v.labeler, char(0)) AS names "
                "FROM candidates c JOIN image_verdicts v "
                "ON v.class = c.class AND v.component = c.component AND v.id = c.id AND v.verdict = 'out' "
                "GROUP BY c.class, c.component, c.id HAVING count(*) >= ? "
                "ORDER BY c.class, c.component, c.rank, c.id", (min_agree,)).fetchall()
        out: dict[tuple[int, int], list[JSONDict]] = {}
        for r in rows:
            rec = json.loads(r["record"])
            rec["labelers"] = sorted(r["names"].split("\0"))
            out.setdefault((int(r["class"]), int(r["component"])), []).append(rec)
        return out

    def progress(self, labeler: str | None = None, min_agree: int = 2) -> dict[str, int]:
        """Counts for the UI: components (total, labeled by ``labeler``, agreed spurious, disagreements)
        and candidates (total, judged by ``labeler``, accepted)."""
        return {**self.review_counts(labeler, min_agree=min_agree),
                **self.curate_counts(labeler, min_agree=min_agree)}

    # ------------------------------------------------------------------ exports
    def labeler_count(self, task: str = "review") -> int:
        """How many labelers gave at least one verdict in ``task`` (``"review"`` or ``"curate"``). The
        component-set file of the agreed components (:func:`spurious.components.agreed_component_set`)
        names it in its ``source``."""
        if task not in ("review", "curate"):
            raise ValueError(f"task must be 'review' or 'curate', got {task!r}")
        table = "component_verdicts" if task == "review" else "image_verdicts"
        with self._connect() as con:
            return int(con.execute(f"SELECT count(DISTINCT labeler) FROM {table}").fetchone()[0])

    def verdict_rows(self, min_agree: int = 2) -> list[JSONDict]:
        """Every current verdict as a flat record (the CSV export), review first, then curation.

        Keys: ``task, class, class_name, component, id, path, labeler, verdict, note, updated, agreed,
        labeler_kind``; ``agreed`` says whether the item is an agreed spurious component / an accepted
        image, ``labeler_kind`` which kind of identity gave the verdict (:class:`Labeler`).
        """
        kinds = {who.name: who.kind for who in self.identities()}
        agreed = {(k, l) for k, ls in self.agreed_components(min_agree).items() for l in ls}
        accepted = {(k, l, rec["id"]) for (k, l), recs in self.accepted_images(min_agree).items() for rec in recs}
        rows: list[JSONDict] = []
        with self._connect() as con:
            for r in con.execute("SELECT * FROM component_verdicts ORDER BY class, component, labeler"):
                rows.append({"task": "review", "class": r["class"], "class_name": self.class_name(r["class"]),
                             "component": r["component"], "id": "", "path": "", "labeler": r["labeler"],
                             "verdict": r["verdict"], "note": r["note"], "updated": r["updated"],
                             "agreed": (r["class"], r["component"]) in agreed,
                             "labeler_kind": kinds.get(r["labeler"], "name")})
            for r in con.execute(
                    "SELECT v.*, c.path FROM image_verdicts v LEFT JOIN candidates c "
                    "ON c.class = v.class AND c.component = v.component AND c.id = v.id "
                    "ORDER BY v.class, v.component, v.id, v.labeler"):
                rows.append({"task": "curate", "class": r["class"], "class_name": self.class_name(r["class"]),
                             "component": r["component"], "id": r["id"], "path": r["path"] or "",
                             "labeler": r["labeler"], "verdict": r["verdict"], "note": "", "updated": r["updated"],
                             "agreed": (r["class"], r["component"], r["id"]) in accepted,
                             "labeler_kind": kinds.get(r["labeler"], "name")})
        return rows

    def labels_document(self, min_agree: int = 2) -> JSONDict:
        """The JSON export: agreed components, accepted images and every verdict."""
        accepted = self.accepted_images(min_agree)
        return {
            "format": "spurious-labels",
            "version": 1,
            "model_fingerprint": self.workspace.model_fingerprint,
            "created": utc_now(),
            "min_agree": min_agree,
            "labelers": self.labelers(),
            "identities": [{"name": who.name, "kind": who.kind, "created": who.created, "revoked": who.revoked}
                           for who in self.identities()],
            "agreed_components": {str(k): ls for k, ls in self.agreed_components(min_agree).items()},
            "accepted_images": [dict(rec) for recs in accepted.values() for rec in recs],
            "verdicts": self.verdict_rows(min_agree),
        }

    def labels_csv(self, min_agree: int = 2) -> str:
        """The CSV export: one row per current verdict (columns of :meth:`verdict_rows`).

        Every text cell goes through :func:`csv_cell`: one that begins with ``= + - @``, a tab or a
        carriage return (a note, a class name, an image id or path) gets a leading ``'`` so that a
        spreadsheet shows it instead of running it as a formula.
        """
        buf = io.StringIO()
        # RFC 4180 line ends: a cell with a comma, quote, CR or LF is quoted (with "\n" a lone CR was not)
        writer = csv.DictWriter(buf, fieldnames=list(_CSV_FIELDS), lineterminator="\r\n")
        writer.writeheader()
        for row in self.verdict_rows(min_agree):
            writer.writerow({k: str(row[k]).lower() if isinstance(row[k], bool) else csv_cell(row[k])
                             for k in _CSV_FIELDS})
        return buf.getvalue()

    def export_labels(self, path: str | os.PathLike[str], format: str | None = None, min_agree: int = 2) -> Path:
        """Write every verdict plus the agreed results, as JSON or CSV.

        Args:
            format: ``json`` or ``csv``; default from the file suffix (``.csv`` -> csv, else json).

        Raises:
            ValueError: unknown format.
        """
        path = Path(path)
        fmt = format or ("csv" if path.suffix.lower() == ".csv" else "json")
        if fmt not in ("json", "csv"):
            raise ValueError(f"unknown export format {format!r}; valid: json, csv")
        if fmt == "json":
            write_json(path, self.labels_document(min_agree))
        else:
            text = self.labels_csv(min_agree)
            with atomic_path(path) as tmp:
                tmp.write_text(text, encoding="utf-8", newline="")
        return path


_CSV_FIELDS = ("task", "class", "class_name", "component", "id", "path", "labeler", "verdict", "note", "updated",
               "agreed", "labeler_kind")


def _execute_script(con: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated statements one by one (``executescript`` would commit the open transaction)."""
    statement = ""
    for part in script.split(";"):
        statement += part + ";"
        if sqlite3.complete_statement(statement):  # a trigger's body holds ';' of its own
            if statement.strip(" \n;"):
                con.execute(statement)
            statement = ""


def _labeler(row: sqlite3.Row) -> Labeler:
    return Labeler(row["name"], row["kind"], row["created"], row["revoked"])


# ---------------------------------------------------------------------- visualize records
def _png_names(rec: object) -> Iterator[str]:
    """Every string in a record (nested) that names an image file."""
    if isinstance(rec, dict):
        for v in rec.values():
            yield from _png_names(v)
    elif isinstance(rec, list):
        for v in rec:
            yield from _png_names(v)
    elif isinstance(rec, str) and rec.lower().endswith((".png", ".jpg", ".jpeg", ".webp")):
        yield rec
