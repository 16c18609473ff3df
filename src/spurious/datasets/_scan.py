"""Fast directory listing for image trees of millions of files.

``os.scandir`` recursion: the file type comes from the directory entry (no ``stat`` per regular
file), images are recognised by extension only (nothing is opened). Symlinks to files are followed;
symlinked directories are followed too, but a directory that is already on the current path (a
symlink loop) is skipped and reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ._images import IMAGE_EXTENSIONS

__all__ = ["Listing", "TopLevel", "is_ignored", "scan_tree", "top_level"]

# Folders created by macOS when zipping; they only hold "._name" resource forks.
_IGNORED_DIRS = frozenset({"__MACOSX"})


def is_ignored(name: str) -> bool:
    """True for entries every reader skips silently: dot-files/folders and ``__MACOSX``."""
    return name.startswith(".") or name in _IGNORED_DIRS


def _name_problem(name: str) -> str | None:
    """Why a file name cannot be used as a record id, or ``None`` when it can."""
    if name.isascii():
        return None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8 (rename the file)"
    return None


def _dir_key(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


@dataclass
class Listing:
    """Result of scanning: image ids (POSIX paths relative to the scan root) and skipped files."""

    images: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _scan_dir(
    path: str, prefix: str, ancestors: set[tuple[int, int]], out: Listing
) -> None:
    try:
        it = os.scandir(path)
    except OSError as e:
        out.skipped.append((prefix.rstrip("/"), f"cannot list directory ({e.strerror or e})"))
        return
    images = out.images
    with it:
        for entry in it:
            name = entry.name
            if is_ignored(name):
                continue
            rel = prefix + name
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                problem = _name_problem(name)
                if problem is not None:
                    out.skipped.append((rel, problem.replace("file", "folder")))
                    continue
                try:
                    key = _dir_key(entry.path)
                except OSError as e:
                    out.skipped.append((rel, f"cannot read directory ({e.strerror or e})"))
                    continue
                if key in ancestors:
                    out.skipped.append((rel, "symlink loop (points to one of its parent folders)"))
                    continue
                ancestors.add(key)
                try:
                    _scan_dir(entry.path, rel + "/", ancestors, out)
                finally:
                    ancestors.discard(key)
                continue
            ext = os.path.splitext(name)[1].lower()
            if ext not in IMAGE_EXTENSIONS:
                out.skipped.append((rel, f"not an image extension ({ext or 'no extension'})"))
                continue
            try:
                is_file = entry.is_file()  # follows symlinks
            except OSError:
                is_file = False
            if not is_file:
                reason = "broken symlink" if entry.is_symlink() else "not a regular file"
                out.skipped.append((rel, reason))
                continue
            problem = _name_problem(name)
            if problem is not None:
                out.skipped.append((rel, problem))
                continue
            images.append(rel)


def scan_tree(
    root: str, prefix: str = "", out: Listing | None = None, *, dataset_root: str | None = None
) -> Listing:
    """List every image file below ``root``, recursively.

    Args:
        root: Directory to scan.
        prefix: Prepended to every id (e.g. ``"class_a/"`` when ``root`` is a class folder of a
            larger dataset); must be empty or end with ``/``.
        out: Listing to append to (a new one when ``None``).
        dataset_root: The enclosing dataset folder when ``root`` is one of its class folders, so
            that a link back to it counts as a loop too.

    Returns:
        ``out`` with image ids (``prefix`` + POSIX path relative to ``root``, unsorted) appended,
        and non-image files, broken links, unreadable folders and symlink loops in ``skipped``.
    """
    if out is None:
        out = Listing()
    ancestors = {_dir_key(root)}
    if dataset_root is not None:
        ancestors.add(_dir_key(dataset_root))
    _scan_dir(root, prefix, ancestors, out)
    return out


@dataclass
class TopLevel:
    """Non-ignored entries directly inside a directory."""

    dirs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)


def top_level(root: str) -> TopLevel:
    """Sub-folders (sorted, symlinks followed) and files directly inside ``root``."""
    top = TopLevel()
    with os.scandir(root) as it:
        for entry in it:
            name = entry.name
            if is_ignored(name):
                continue
            problem = _name_problem(name)
            if problem is not None:
                top.other.append((name, problem))
                continue
            try:
                if entry.is_dir():
                    top.dirs.append(name)
                elif entry.is_file():
                    top.files.append(name)
                else:
                    top.other.append(
                        (name, "broken symlink" if entry.is_symlink() else "not a regular file")
                    )
            except OSError as e:
                top.other.append((name, f"cannot read ({e.strerror or e})"))
    top.dirs.sort()
    top.files.sort()
    return top
