"""Stage ``label``: people review components and curate retrieved images (DESIGN.md "Interfaces").

* :class:`LabelStore` (``WS/labels.sqlite``, no web imports): verdicts per labeler, the agreed
  spurious components (:meth:`LabelStore.agreed_components`, the sets ``S_k`` of SpuFix), the
  accepted benchmark images (:meth:`LabelStore.accepted_images`), the exports, and the identities
  (typed names, invited labelers with tokens, simulated labelers) with their sign-in sessions.
* :func:`create_app` / :func:`serve` (``spurious label WS``): the FastAPI web UI; imported lazily,
  so ``from spurious.label import LabelStore`` does not load the web stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spurious.label.store import (
    COMPONENT_VERDICTS,
    FILTERS,
    IDENTITY_KINDS,
    IMAGE_VERDICTS,
    SCHEMA_VERSION,
    ComponentRow,
    CurateRow,
    LabelCounts,
    Labeler,
    LabelStore,
    SyncResult,
    UnknownItemError,
    check_labeler,
)

if TYPE_CHECKING:  # at run time __getattr__ imports them on first use
    from spurious.label.app import create_app, serve

__all__ = [
    "COMPONENT_VERDICTS",
    "FILTERS",
    "IDENTITY_KINDS",
    "IMAGE_VERDICTS",
    "SCHEMA_VERSION",
    "ComponentRow",
    "CurateRow",
    "LabelCounts",
    "LabelStore",
    "Labeler",
    "SyncResult",
    "UnknownItemError",
    "check_labeler",
    "create_app",
    "serve",
]


def __getattr__(name: str) -> object:
    if name in ("create_app", "serve"):
        from spurious.label import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
