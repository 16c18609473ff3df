"""Small helpers shared by every stage: atomic writes, JSON, hashing, timestamps."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FINGERPRINT_SCHEME",
    "atomic_path",
    "cache_dir",
    "head_fingerprint",
    "write_json",
    "read_json",
    "save_npy",
    "sha256_strings",
    "utc_now",
]


FINGERPRINT_SCHEME = 2
"""Version of the model fingerprint: 1 hashed the head only; 2 all weights, the preprocessing and the class names."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    A crash (or SIGKILL) inside the block leaves ``path`` untouched: either the old file or no file,
    never a half-written one. Leftover ``.tmp-*`` files are harmless and overwritten by later runs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
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


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike[str]) -> Any:
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


def sha256_strings(items: Any) -> str:
    """Stable hash of an iterable of strings (order matters); 16 hex digits."""
    h = hashlib.sha256()
    for s in items:
        h.update(str(s).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


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
