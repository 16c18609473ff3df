"""``spurious npca WS``: class-wise neural PCA of the training features -> WS/npca."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from spurious._cli._common import (
    common_options,
    defaults_of,
    emit_result,
    given,
    is_given,
)

if TYPE_CHECKING:
    from spurious._cli._common import SubParsers

__all__ = ["register"]

_default = defaults_of("spurious.npca:npca")


def register(sub: SubParsers) -> None:
    """Add the ``npca`` sub-command to the argparse sub-parser action ``sub``."""
    p = sub.add_parser("npca", help="class-wise neural PCA of the training features -> WS/npca",
                       description="Fit mu_k and the top-L eigenpairs of cov(w_k * phi) per class.")
    p.add_argument("workspace")
    p.add_argument("--split", default=_default("split"), help="labelled feature split (default: %(default)s)")
    p.add_argument("--components", default=_default("n_components"), help="L per class (default %(default)s) or 'all'")
    p.add_argument("--classes", nargs="+", default=_default("classes"), help="class indices or names (default: all)")
    p.add_argument("--device", default=_default("device"), help="auto | cpu | cuda | cuda:N (default %(default)s)")
    p.add_argument("--precision", choices=["float32", "float64"], default=_default("precision"),
                   help="dtype of the fit (default %(default)s)")
    p.add_argument("--overwrite", action="store_true")
    common_options(p)
    p.set_defaults(func=_cmd_npca)


def _n_components(text: str) -> int | str:
    """``--components``: a positive integer or ``all`` (checked by :func:`spurious.npca.npca`)."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--components must be a positive integer or 'all', got {text!r}") from None


def _cmd_npca(args: argparse.Namespace) -> int:
    from spurious.npca import npca

    comps = _n_components(args.components) if is_given(args.components) else args.components
    r = npca(args.workspace, overwrite=args.overwrite, progress=not args.no_progress,
             **given(split=args.split, n_components=comps, classes=args.classes, device=args.device,
                     precision=args.precision))
    emit_result(args, r)
    return 0
