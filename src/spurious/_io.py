"""Small helpers shared by every stage: atomic writes, JSON, hashing, timestamps."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FINGERPRINT_SCHEME",
    "JSONDict",
    "atomic_path",
    "cache_dir",
    "make_temp_dir",
    "head_fingerprint",
    "write_json",
    "read_json",
    "save_npy",
    "sha256_strings",
    "slug",
    "utc_now",
]


JSONDict = dict[str, Any]
"""A JSON object: a manifest, a plan, a record or a Result's ``to_dict()``; its values are arbitrary JSON."""

FINGERPRINT_SCHEME = 2
"""Version of the model fingerprint: 1 hashed the head only; 2 all weights, the preprocessing and the class names."""


def _unique_name(directory: Path, prefix: str, create: Callable[[Path], None]) -> Path:
    """Create ``directory/prefix<random>`` with ``create(path)`` (which must fail if it exists)."""
    for _ in range(100):
        candidate = directory / f"{prefix}{secrets.token_hex(4)}"
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not create a temporary name {prefix}* in {directory} (100 names taken)")


def _create_file(path: Path) -> None:
    # mode 0666: the kernel applies the umask (and default ACLs), as for any file a tool writes;
    # tempfile.mkstemp would make it 0600 whatever the umask
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    os.close(os.open(path, flags, 0o666))


def make_temp_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """Create a new empty folder ``parent/prefix<random>`` with mode ``0777 & ~umask``; returns its path.

    Use it for a folder that is filled and then renamed into place: ``tempfile.mkdtemp`` would
    leave it (and the published folder) ``0700`` whatever the umask.
    """
    return _unique_name(Path(parent), prefix, lambda p: os.mkdir(p, 0o777))  # the kernel applies the umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    A crash (or SIGKILL) inside the block leaves ``path`` untouched: either the old file or no file,
    never a half-written one. Leftover ``.tmp-*`` files are harmless and overwritten by later runs.
    The file gets mode ``0666 & ~umask``, like any file a tool creates: the temporary file is created
    (empty) with it, and a writer that replaces the file with its own private one (safetensors'
    ``save_file`` writes ``0600``) gets it back before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _unique_name(path.parent, f".tmp-{path.name}.", _create_file)
    try:
        mode = stat.S_IMODE(os.stat(tmp_path).st_mode)  # 0666 & ~umask, applied by the kernel
        yield tmp_path
        if stat.S_IMODE(os.stat(tmp_path).st_mode) != mode:
            os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def cache_dir() -> Path:
    """The user cache folder: ``$SPURIOUS_CACHE``, else ``$XDG_CACHE_HOME/spurious``, else ``~/.cache/spurious``.

    Not created here.
    """
    env = os.environ.get("SPURIOUS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "spurious"


def write_json(path: str | os.PathLike[str], obj: object) -> None:
    """Write ``obj`` (anything ``json.dumps`` takes) as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike[str]) -> Any:  # Any: whatever JSON the file holds
    """Read a JSON file; a missing file raises ``FileNotFoundError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return json.loads(path.read_text(encoding="utf-8"))


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` atomically (no pickles)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_strings(items: Iterable[object]) -> str:
    """Stable hash of an iterable of strings (order matters); 16 hex digits."""
    h = hashlib.sha256()
    for s in items:
        h.update(str(s).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def slug(text: str, *, keep: str = "._-", limit: int = 60) -> str:
    """A file or folder name made from ``text``: runs of other characters than ASCII letters, digits
    and ``keep`` become one ``-``, leading and trailing ``-`` / ``.`` go, at most ``limit`` characters;
    ``"model"`` when nothing is left (``"demo:robust"`` -> ``"demo-robust"``)."""
    cleaned = re.sub(f"[^A-Za-z0-9{re.escape(keep)}]+", "-", text).strip("-.")
    return cleaned[:limit] or "model"


def utc_now() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def head_fingerprint(W: np.ndarray, b: np.ndarray) -> str:
    """16 hex digits identifying a linear head ``W`` [K, D], ``b`` [K]: sha256 of its shape and float32 bytes.

    Every stage records it and refuses to mix artifacts of different models. It hashes the head
    only (cheap), not the backbone.
    """
    W = np.ascontiguousarray(W, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    h = hashlib.sha256()
    h.update(f"K={W.shape[0]};D={W.shape[1]};".encode())
    h.update(W.tobytes())
    h.update(b.tobytes())
    return h.hexdigest()[:16]
