"""Match the labels found in a dataset (folder names, list labels) to a model's class names.

A class-folder dataset used to be labelled by *sorted folder name* (torchvision ``ImageFolder``):
folders named after the model's classes but in another order, or only some of them, got
silently wrong labels. Here a label follows the class *name*. Each found text ``t`` is matched by
the first rule that applies:

1. ``class_map[t]``: a class index (``int`` or digit string) or an exact, unique class name.
2. ``t`` equals exactly one class name.
3. ``t`` equals exactly one class name after normalising both (case-insensitive; runs of spaces,
   ``_`` and ``-`` count as one space; ends stripped): ``Great_White_Shark`` is
   ``great white shark``.
4. ``t`` is the WordNet id of a class (only when ``wnids`` are given, e.g. ``n01440764``).
5. ``t`` is ``NN_name`` (``NN``, then ``_``, ``-`` or a space, then a name matching by rule 2 or
   3) and ``NN`` is that class's index: ``00_star``. A number that disagrees with the name is an
   error, as is the name alone when it is shared by several classes and ``NN`` is none of them.
6. ``t`` is all digits and a valid class index: ``17``.

Unmatched texts, texts matching several classes (ImageNet has two classes called ``crane``) and
two texts landing on one class (``Star/`` and ``star/``; allowed when both come from the class
map) are reported in one ``ValueError`` that names each offender with its closest class names
and says how to fix it: rename, or state the mapping in a class map (``--class-map FILE``,
``class_map=`` in Python; see :func:`read_class_map`).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MATCH_KINDS", "LabelMatch", "match_class_names", "read_class_map"]

MATCH_KINDS: tuple[str, ...] = ("class-map", "exact", "normalised", "wnid", "index-name", "index")
"""How a found text was matched, in rule order (the values of :attr:`LabelMatch.how`)."""

_SHOWN_AS = {
    "class-map": "from the class map",
    "exact": "exact",
    "normalised": "ignoring case and separators",
    "wnid": "by wnid",
    "index-name": "as NN_name",
    "index": "as class index",
}
_MAX_LISTED = 10
_SEPARATORS = re.compile(r"[\s_\-]+")
_INDEX_NAME = re.compile(r"([0-9]+)[_\- ](.+)", flags=re.S)
_DIGITS = re.compile(r"[0-9]+")
_MAP_FORMS = (
    'a JSON object {"found name": "class name" or class index} or a CSV file with a header row '
    "and columns found name, class"
)


@dataclass(frozen=True)
class LabelMatch:
    """How each found text was mapped to a class index.

    Attributes:
        label_of: Found text (folder name, list label) -> class index into the class names.
        how: Same keys -> the rule that matched, one of :data:`MATCH_KINDS`.
    """

    label_of: dict[str, int]
    how: dict[str, str]

    def counts(self) -> dict[str, int]:
        """Number of found texts per rule, in rule order, rules that matched nothing left out."""
        return {k: n for k in MATCH_KINDS if (n := sum(h == k for h in self.how.values()))}

    def describe(self) -> str:
        """One line for logs and ``label_source``, e.g.
        ``"matched to the given class names (6 exact, 2 as NN_name)"``."""
        parts = [f"{n} {_SHOWN_AS[k]}" for k, n in self.counts().items()]
        return f"matched to the given class names ({', '.join(parts) or 'none found'})"


# ---------------------------------------------------------------------- helpers
def _normalise(text: str) -> str:
    return _SEPARATORS.sub(" ", text.casefold()).strip()


def _quoted(items: Sequence[object]) -> str:
    return ", ".join(repr(x) for x in items)


def _listed(items: Sequence[str]) -> str:
    shown = "; ".join(items[:_MAX_LISTED])
    return shown + (f"; and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _at(where_of: Mapping[str, str] | None, text: str) -> str:
    return f" ({where_of[text]})" if where_of and text in where_of else ""


def _check_strings(values: object, name: str) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of strings, got {type(values).__name__}")
    out = list(values)
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(v).__name__}")
    return out


class _Names:
    """Lookup tables over the class names: exact, normalised and by wnid."""

    def __init__(self, class_names: Sequence[str], wnids: Sequence[str] | None) -> None:
        self.names = list(class_names)
        self.exact: dict[str, list[int]] = {}
        self.norm: dict[str, list[int]] = {}
        for i, name in enumerate(self.names):
            self.exact.setdefault(name, []).append(i)
            self.norm.setdefault(_normalise(name), []).append(i)
        self.wnids = None if wnids is None else list(wnids)
        self.wnid_of = {} if wnids is None else {w: i for i, w in enumerate(wnids)}

    def by_name(self, text: str) -> tuple[list[int], str]:
        """Candidate classes of ``text`` by rule 2, else rule 3: ``(indices, kind)``."""
        if text in self.exact:
            return self.exact[text], "exact"
        return self.norm.get(_normalise(text), []), "normalised"

    def closest(self, text: str) -> list[str]:
        """Up to three class names closest to ``text`` (difflib on normalised names)."""
        close = difflib.get_close_matches(_normalise(text), list(self.norm), n=3, cutoff=0.6)
        out: list[str] = []
        for key in close:
            out += [self.names[i] for i in self.norm[key] if self.names[i] not in out]
        return out[:3]

    def shown(self, idx: int) -> str:
        return f"{idx} {self.names[idx]!r}"

    def example(self) -> str:
        more = f" and {len(self.names) - 3} more" if len(self.names) > 3 else ""
        return f"class_names has {len(self.names)} classes: {_quoted(self.names[:3])}{more}"


def _class_map_index(key: str, value: object, names: _Names, prefix: str) -> int:
    """Class index of one class-map entry (rule 1), or a ``ValueError`` naming the entry."""
    entry = f"{prefix}class_map entry {key!r}: {value!r}"
    n = len(names.names)
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(
            f"{entry} must be a class name or a class index, not {type(value).__name__}"
        )
    if isinstance(value, int):
        if not 0 <= value < n:
            raise ValueError(f"{entry} is out of range; a class index is 0..{n - 1}")
        return value
    hits = names.exact.get(value, [])
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise ValueError(
            f"{entry} is the name of {len(hits)} classes ({_quoted(hits)}); map to the class "
            "index instead"
        )
    close = names.closest(value)
    hint = f"closest class names: {_quoted(close)}" if close else "no close class name"
    raise ValueError(
        f"{entry} is not a class name ({hint}); a class map gives the exact class name or the "
        f"class index; {names.example()}"
    )


# ---------------------------------------------------------------------- matching
def match_class_names(
    found: Sequence[str],
    class_names: Sequence[str],
    *,
    class_map: Mapping[str, int | str] | None = None,
    wnids: Sequence[str] | None = None,
    what: str = "class folder",
    where: str = "",
    where_of: Mapping[str, str] | None = None,
) -> LabelMatch:
    """Map each found text (folder name, list label) to a class index by the rules of this module.

    Args:
        found: The texts to label, e.g. the sub-folder names of a dataset (repeats are ignored).
        class_names: The label space, e.g. the model's class names; names may repeat (a text
            matching a repeated name is ambiguous and needs its index, wnid or a class map).
        class_map: Explicit ``found text -> class name or index`` entries, applied first (see
            :func:`read_class_map`); every entry is checked, also those not found.
        wnids: One WordNet id per class (same length as ``class_names``) to accept wnid names.
        what: What a found text is, for messages (``"class folder"``, ``"label"``).
        where: Where the texts were found, for messages (e.g. the dataset path).
        where_of: Optional location of each found text (e.g. ``"line 4"``), shown in messages.

    Returns:
        The match: :attr:`LabelMatch.label_of` holds every distinct found text.

    Raises:
        TypeError: ``found``, ``class_names`` or ``wnids`` is not a sequence of strings, or
            ``class_map`` is not a mapping with string keys.
        ValueError: ``class_names`` is empty; ``wnids`` has the wrong length or repeats; a
            class-map entry names no class or an index out of range; or a found text is
            unmatched, ambiguous, has a number that disagrees with its name, or lands on the same
            class as another text (one message lists every such problem, up to ten of each, with
            the closest class names).
    """
    prefix = f"{where}: " if where else ""
    texts = list(dict.fromkeys(_check_strings(found, "found")))
    names = _Names(
        _check_strings(class_names, "class_names"),
        None if wnids is None else _check_strings(wnids, "wnids"),
    )
    if not names.names:
        raise ValueError(f"{prefix}class_names is empty; pass the model's class names")
    if names.wnids is not None:
        if len(names.wnids) != len(names.names):
            raise ValueError(
                f"wnids has {len(names.wnids)} entries but class_names has {len(names.names)}; "
                "give one wnid per class, in class-index order"
            )
        if len(names.wnid_of) != len(names.wnids):
            repeated = sorted({w for w in names.wnids if names.wnids.count(w) > 1})
            raise ValueError(
                f"wnids repeats {_quoted(repeated[:5])}; each class needs its own wnid"
            )
    mapped: dict[str, int] = {}
    if class_map is not None:
        if not isinstance(class_map, Mapping):
            raise TypeError(f"class_map must be a mapping, got {type(class_map).__name__}")
        for key, value in class_map.items():
            if not isinstance(key, str):
                raise TypeError(f"class_map keys must be str, got {type(key).__name__} {key!r}")
            mapped[key] = _class_map_index(key, value, names, prefix)

    label_of: dict[str, int] = {}
    how: dict[str, str] = {}
    unmatched: list[tuple[str, str]] = []
    ambiguous: list[str] = []
    disagree: list[str] = []
    for t in texts:
        at = _at(where_of, t)
        if t in mapped:
            label_of[t], how[t] = mapped[t], "class-map"
            continue
        hits, kind = names.by_name(t)
        if len(hits) == 1:
            label_of[t], how[t] = hits[0], kind
            continue
        if hits:
            ambiguous.append(_ambiguous_text(t, at, hits, kind, names))
            continue
        if t in names.wnid_of:
            label_of[t], how[t] = names.wnid_of[t], "wnid"
            continue
        m = _INDEX_NAME.fullmatch(t)
        rest_hits = names.by_name(m.group(2))[0] if m else []
        if m and rest_hits:
            number = int(m.group(1))
            if number in rest_hits:
                label_of[t], how[t] = number, "index-name"
            else:
                disagree.append(_disagree_text(t, at, m.group(1), m.group(2), rest_hits, names))
            continue
        if _DIGITS.fullmatch(t) and int(t) < len(names.names):
            label_of[t], how[t] = int(t), "index"
            continue
        unmatched.append((f"{t!r}{at}", _unmatched_hint(t, m.group(2) if m else t, names)))

    conflicts = _conflicts(label_of, how, what, where_of, names)
    problems = _problems(what, unmatched, ambiguous, disagree, conflicts, names)
    if problems:
        raise ValueError(prefix + " ".join(problems))
    return LabelMatch(label_of=label_of, how=how)


def _unmatched_hint(t: str, probe: str, names: _Names) -> str:
    close = names.closest(probe)
    hint = f"closest class names: {_quoted(close)}" if close else "no close class name"
    if _DIGITS.fullmatch(t):
        hint += f"; as a class index it is out of range 0..{len(names.names) - 1}"
    return hint


def _ambiguous_text(t: str, at: str, hits: list[int], kind: str, names: _Names) -> str:
    if kind == "exact":
        times = "twice" if len(hits) == 2 else f"{len(hits)} times"
        why = f"the name appears {times} in class_names"
    else:
        why = "their names differ only in case or separators"
    fixes = []
    if names.wnids is not None:
        fixes.append(f"its wnid ({' or '.join(names.wnids[i] for i in hits)})")
    fixes.append(f"NN_name with the class index (e.g. '{hits[0]}_{t}')")
    fixes.append("the bare class index")
    shown = ", ".join(names.shown(i) for i in hits)
    return f"{t!r}{at} matches classes {shown} ({why}); name it by {' or '.join(fixes)}"


def _disagree_text(t: str, at: str, digits: str, rest: str, hits: list[int], names: _Names) -> str:
    number = int(digits)
    own = " or ".join(str(i) for i in hits)
    other = f" (class {number} is {names.names[number]!r})" if number < len(names.names) else ""
    renamed = [repr(f"{i:0{len(digits)}d}_{rest}") for i in hits]
    if len(hits) == 1:
        renamed.append(repr(rest))
    return (
        f"{t!r}{at} says class {number}{other} but its name {rest!r} is class {own}; if the name "
        f"is right, rename it {' or '.join(renamed)}"
    )


def _conflicts(
    label_of: Mapping[str, int],
    how: Mapping[str, str],
    what: str,
    where_of: Mapping[str, str] | None,
    names: _Names,
) -> list[str]:
    """Texts landing on one class (``Star`` and ``star``), unless all come from the class map."""
    by_class: dict[int, list[str]] = {}
    for t, idx in label_of.items():
        by_class.setdefault(idx, []).append(t)
    out = []
    for idx, ts in sorted(by_class.items()):
        if len(ts) > 1 and any(how[t] != "class-map" for t in ts):
            shown = " and ".join(f"{t!r}{_at(where_of, t)} [{how[t]}]" for t in ts)
            both = "both" if len(ts) == 2 else "all"
            out.append(f"{shown} {both} map to class {names.shown(idx)}")
    return out


def _plural(n: int, word: str) -> str:
    return word if n == 1 else f"{word}s"


def _problems(
    what: str,
    unmatched: list[tuple[str, str]],
    ambiguous: list[str],
    disagree: list[str],
    conflicts: list[str],
    names: _Names,
) -> list[str]:
    """The sentences of the error message: one per kind of problem, then how a class map helps."""
    out = []
    if unmatched:
        if len(unmatched) == 1:
            head = f"{what} {unmatched[0][0]} is not in class_names ({unmatched[0][1]})"
        else:
            listed = _listed([f"{t} ({hint})" for t, hint in unmatched])
            head = f"{len(unmatched)} {what}s are not in class_names: {listed}"
        out.append(
            f"{head}. {names.example()}. To fix, give each {what} a class name (case, spaces, '_' "
            "and '-' do not matter), 'NN_name' with the class index, or the bare class index."
        )
    if ambiguous:
        out.append(f"Ambiguous {_plural(len(ambiguous), what)}: {_listed(ambiguous)}.")
    if disagree:
        out.append(f"Number and name disagree: {_listed(disagree)}.")
    if conflicts:
        out.append(
            f"Several {what}s map to one class: {_listed(conflicts)}; merge them into one, or map "
            "each of them in a class map to merge them on purpose."
        )
    if out:
        out.append(
            f"Or state the mapping with --class-map FILE (Python: class_map=...): {_MAP_FORMS}."
        )
    return out


# ---------------------------------------------------------------------- class map files
def read_class_map(path: str | os.PathLike[str]) -> dict[str, int | str]:
    """Read a class map file: which class each found name (folder, list label) belongs to.

    - JSON (``.json``): one object, ``{"found name": "class name" or class index, ...}``.
    - CSV (``.csv``): a header row, then one row per entry whose first two columns are the found
      name and the class (name or index); further columns and blank lines are ignored.

    Digit strings in a CSV become ``int`` (class indices). Pass the result as ``class_map=`` to
    :func:`match_class_names` or the dataset readers.

    Args:
        path: The ``.json`` or ``.csv`` file.

    Returns:
        ``{found name: class name or index}``, in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a directory, another suffix, not UTF-8, invalid JSON (with line and column),
            JSON that is not an object or has a value that is neither a string nor an integer, a
            bad CSV row (with its line number), a name given twice, or no entries.
    """
    file = Path(os.path.expanduser(os.fspath(path)))
    if not file.exists():
        raise FileNotFoundError(
            f"class map {os.fspath(path)} does not exist (resolved: {file.resolve()})"
        )
    if file.is_dir():
        raise ValueError(f"class map {file} is a directory; expected {_MAP_FORMS}")
    suffix = file.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ValueError(
            f"class map {file}: unknown format {suffix or '(no suffix)'!r}; expected {_MAP_FORMS}"
        )
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"class map {file} is not UTF-8 text ({e.reason} at byte {e.start})"
        ) from e
    entries = _read_json_map(file, text) if suffix == ".json" else _read_csv_map(file, text)
    if not entries:
        raise ValueError(f"class map {file} has no entries; expected {_MAP_FORMS}")
    return entries


def _read_json_map(file: Path, text: str) -> dict[str, int | str]:
    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value in items:
            if key in out:
                raise ValueError(f"class map {file}: {key!r} is given twice")
            out[key] = value
        return out

    try:
        obj = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"class map {file} line {e.lineno} column {e.colno}: invalid JSON ({e.msg})"
        ) from e
    if not isinstance(obj, dict):
        raise ValueError(
            f"class map {file}: the JSON is a {type(obj).__name__}, expected an object "
            '{"found name": "class name" or class index}'
        )
    for key, value in obj.items():
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(
                f"class map {file}: {key!r} maps to {json.dumps(value)}; expected a class name "
                "(string) or a class index (integer)"
            )
    return dict(obj)


def _read_csv_map(file: Path, text: str) -> dict[str, int | str]:
    reader = csv.reader(io.StringIO(text, newline=""))
    out: dict[str, int | str] = {}
    first_line: dict[str, int] = {}
    try:
        header = next(reader, None)
        if header is None:
            return out
        if len(header) >= 2 and _DIGITS.fullmatch(header[1].strip()):
            raise ValueError(
                f"class map {file} line 1: {_quoted(header[:2])} looks like an entry, but the "
                "first row is a header (e.g. 'folder,class'); add one"
            )
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(
                    f"class map {file} line {line}: expected 'found name,class' (two non-empty "
                    f"columns), got {','.join(row)!r}"
                )
            key, value = row[0].strip(), row[1].strip()
            if key in first_line:
                raise ValueError(
                    f"class map {file} line {line}: {key!r} is given twice (first on line "
                    f"{first_line[key]})"
                )
            first_line[key] = line
            out[key] = int(value) if _DIGITS.fullmatch(value) else value
    except csv.Error as e:
        raise ValueError(f"class map {file} line {reader.line_num}: malformed CSV ({e})") from e
    return out
