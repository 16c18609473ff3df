"""The ``spurious`` command line, one module per command (or command group); entry point in ``_main``.

Every public module here defines ``register(sub)``, which adds its sub-parser(s) to the argparse
sub-parser action ``sub`` and sets ``func`` to a handler taking the parsed ``argparse.Namespace``
and returning an exit status. A handler parses, calls one public function with the options given
(defaults come from that function's signature, see ``_common``) and prints the Result's own
``summary_lines()`` or, with ``--json``, its ``to_dict()``. Modules import heavy libraries (torch,
the stage module) only inside their handlers so that ``spurious --help`` stays fast.
:func:`register_all` discovers the modules, so a new command never has to edit a shared list.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spurious._cli._common import SubParsers

__all__ = ["register_all"]

# the commands `spurious -h` lists first, in pipeline order; any other module follows in name order
_FIRST = ("extract", "npca", "model", "demo", "data", "train")


def register_all(sub: SubParsers) -> None:
    """Call ``register(sub)`` of every public module of this package."""
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    names = [n for n in _FIRST if n in found] + [n for n in found if n not in _FIRST]
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        register = getattr(module, "register", None)
        if register is None:
            raise RuntimeError(f"CLI plugin {module.__name__} defines no register(sub) function")
        register(sub)
