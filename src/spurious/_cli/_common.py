"""What every sub-command shares: the common options, defaults read from the public functions, the summary.

Option defaults are never restated here: an option that stands for a parameter of a public function
gets ``default=defaults_of("module:function")("parameter")``, a :class:`FunctionDefault` that reads the
value from the function's signature only when it is shown (``%(default)s`` in ``-h``) or resolved.
A handler passes :func:`given` options only, so an option left out leaves the function's own default
in force. The stage module is imported only then, so ``spurious --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TextIO, TypeVar, cast

__all__ = ["FunctionDefault", "Result", "common_options", "defaults_of", "emit", "emit_result",
           "given", "is_given", "resolve", "summary_stream"]

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]  # what ``register(sub)`` receives


class Result(Protocol):
    """What every stage's Result has: its ``--json`` summary and the lines a person reads."""

    def to_dict(self) -> dict[str, Any]: ...

    def summary_lines(self) -> list[str]: ...


class FunctionDefault:
    """The default of ``parameter`` of the public function ``target`` (``"module:qualname"``).

    Used as an argparse ``default``: it stays in the namespace when the option is not given
    (:func:`given` drops it), and ``str()`` of it, which ``%(default)s`` in a help text calls, is the
    value in the function's signature.
    """

    def __init__(self, target: str, parameter: str) -> None:
        self.target = target
        self.parameter = parameter

    def function(self) -> Callable[..., object]:
        module, _, qualname = self.target.partition(":")
        obj: object = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"{self.target} is not a function")
        return obj

    @property
    def value(self) -> object:
        """The default in the function's signature (imports the function's module)."""
        param = inspect.signature(self.function()).parameters.get(self.parameter)
        if param is None or param.default is inspect.Parameter.empty:
            raise LookupError(f"{self.target} has no parameter {self.parameter!r} with a default")
        return param.default

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        return f"FunctionDefault({self.target!r}, {self.parameter!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, FunctionDefault) and (self.target, self.parameter)
                == (other.target, other.parameter))

    def __hash__(self) -> int:
        return hash((self.target, self.parameter))


def defaults_of(target: str) -> Callable[[str], FunctionDefault]:
    """``defaults_of("spurious.retrieve:retrieve")("top_n")``: the option default that is that parameter's."""
    return lambda parameter: FunctionDefault(target, parameter)


def is_given(value: object) -> bool:
    """Whether an option was given: not left at ``None``, ``False``, ``[]`` or a :class:`FunctionDefault`."""
    return not (value is None or value is False or isinstance(value, FunctionDefault)
                or (isinstance(value, list) and not value))


_T = TypeVar("_T")


def given(**options: _T) -> dict[str, _T]:
    """The keyword arguments whose option was given (a :class:`FunctionDefault` left in place is dropped)."""
    return {k: v for k, v in options.items() if not isinstance(v, FunctionDefault)}


def resolve(value: _T) -> _T:
    """The option's value, with a :class:`FunctionDefault` replaced by the function's default."""
    return cast(_T, value.value) if isinstance(value, FunctionDefault) else value


def common_options(p: argparse.ArgumentParser) -> None:
    """``--json``, ``-v`` and ``--no-progress``: every sub-command has them."""
    p.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def emit(args: argparse.Namespace, summary: Mapping[str, object], lines: Sequence[str]) -> None:
    """Print ``summary`` as JSON with ``--json``, else the human ``lines``, on the summary stream."""
    out = summary_stream(args)
    if args.json:
        print(json.dumps(summary, indent=2, default=str), file=out)
    else:
        for line in lines:
            print(line, file=out)


def emit_result(args: argparse.Namespace, result: Result) -> None:
    """Print a stage's Result: its ``to_dict()`` with ``--json``, else its own ``summary_lines()``."""
    emit(args, result.to_dict(), result.summary_lines())


def summary_stream(args: argparse.Namespace) -> TextIO:
    """Where the summary goes: the real stdout (while a command runs, ``sys.stdout`` is stderr; see ``_main``)."""
    stream: TextIO | None = getattr(args, "summary_stream", None)
    return stream or sys.stdout
