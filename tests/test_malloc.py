"""glibc malloc thresholds (``spurious._malloc``): the kernel's page-fault counter is the oracle."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from spurious import _malloc
from spurious._malloc import MALLOC_ENV_VARS, tune_malloc

glibc = pytest.mark.skipif(not _malloc._is_glibc(), reason="mallopt(3) is glibc's; elsewhere tune_malloc() does nothing")

_SETTINGS_VARS = (*MALLOC_ENV_VARS, "SPURIOUS_MALLOC", "GLIBC_TUNABLES")  # every variable tune_malloc() reads

# Allocates and frees blocks of 8-28 MiB (below glibc's 32 MiB cap on the mmap threshold) in a pattern
# that leaves a large free top on the heap, then prints the minor page faults per round after the first
# (getrusage), measured in a fresh interpreter.
_PROBE = """
import os, resource, sys
import numpy as np
if sys.argv[1] == "tune":
    from spurious._malloc import tune_malloc
    assert tune_malloc()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def one_round():
    a = np.ones(1 << 20); b = np.ones(3 << 20); c = np.ones(2 << 20); del b; d = np.ones(7 << 19); del a, c, d
one_round()  # the first round faults every page in either case
f0 = faults()
for _ in range(40):
    one_round()
print((faults() - f0) / 40)
"""


def _faults_per_round(mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in _SETTINGS_VARS}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


@glibc
def test_tuned_process_reuses_its_pages() -> None:
    # each round touches 9.5 M float64s (76 MiB, 19 456 pages of 4 KiB); with glibc's defaults ~2000 of
    # them fault again every round (measured on the 2-vCPU VM), with the settings none
    plain = _faults_per_round("plain")
    if plain < 1000:  # e.g. transparent huge pages set to "always": nothing to save here
        pytest.skip(f"this kernel faults only {plain:.0f} times a round without the settings: nothing to measure")
    tuned = _faults_per_round("tune")
    assert tuned < plain / 10, (plain, tuned)


@glibc
@pytest.mark.parametrize(("var", "value"), [("MALLOC_TRIM_THRESHOLD_", "131072"), ("MALLOC_ARENA_MAX", "2"),
                                            ("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0"), ("SPURIOUS_MALLOC", "0")])
def test_users_settings_and_the_opt_out_win(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    for other in _SETTINGS_VARS:
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(var, value)
    assert tune_malloc() is False
    monkeypatch.delenv(var)
    assert tune_malloc() is True  # that variable alone was the reason (this sets the worker's malloc: harmless)


def _unknown_name(name: str) -> str:
    raise ValueError("unrecognized configuration name")  # os.confstr where the C library lacks the name (musl)


@pytest.mark.parametrize("confstr", [lambda name: None, _unknown_name])
def test_off_glibc_nothing_happens(monkeypatch: pytest.MonkeyPatch, confstr: object) -> None:
    for var in _SETTINGS_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(_malloc.os, "confstr", confstr)
    assert tune_malloc() is False


def test_the_cli_tunes_before_anything_else(monkeypatch: pytest.MonkeyPatch) -> None:
    from spurious._cli import _main

    calls: list[int] = []
    monkeypatch.setattr(_main, "tune_malloc", lambda: calls.append(1) or True)
    assert _main.main([]) == _main.EXIT_USAGE  # no command: help and exit 2
    assert calls == [1]
