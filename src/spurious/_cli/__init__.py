"""Sub-command plugins of the ``spurious`` CLI, one module per stage.

Every module here defines ``register(sub)``, which adds its sub-parser(s) to the argparse
sub-parser action ``sub`` and sets ``func`` to a handler taking the parsed ``argparse.Namespace``
and returning an exit status. Modules must import heavy libraries (torch, the stage module) only
inside their handlers so that ``spurious --help`` stays fast. :func:`register_all` discovers the
modules, in name order, so a new stage never has to edit a shared list.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

__all__ = ["register_all"]


def register_all(sub: Any) -> None:
    """Call ``register(sub)`` of every module of this package (sorted by module name)."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        register = getattr(module, "register", None)
        if register is None:
            raise RuntimeError(f"CLI plugin {module.__name__} defines no register(sub) function")
        register(sub)
