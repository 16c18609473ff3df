"""Shared fixtures: tiny deterministic models and generated image folders (all offline, seconds)."""

from __future__ import annotations

import gc
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# CPU threads per test process: 2 (the CI machine's cores) when serial, unless OMP_NUM_THREADS says
# otherwise; under pytest-xdist the cores are shared out among the workers (``make test``: two workers
# on 2 vCPUs, one thread each), whatever the environment says, since the controller's own conftest
# set it for one process: two workers of two threads each on two cores ran the suite 2x slower
# than one thread each (455 s vs 228 s: oversubscription). Set before numpy and torch make their thread pools;
# subprocesses of the tests inherit it.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, min(2, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
else:
    os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

threadpool_limits(int(os.environ["OMP_NUM_THREADS"]))  # in case a plugin loaded numpy's BLAS first
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

if TYPE_CHECKING:
    from spurious.demo.train import DemoModelInfo


def write_images(root: Path, per_class: dict[str, int], *, size: int = 40, seed: int = 0) -> Path:
    """Random-colour PNG/JPEG images in class folders; returns ``root``."""
    rng = np.random.default_rng(seed)
    for cls, n in per_class.items():
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = rng.integers(0, 256, size=3)
            arr = np.clip(base + rng.normal(0, 30, size=(size, size + 8, 3)), 0, 255).astype(np.uint8)
            ext = ".png" if i % 2 else ".jpg"
            Image.fromarray(arr).save(folder / f"img_{i:03d}{ext}")
    return root


class TinyNet(torch.nn.Module):
    """A 2-conv CNN with a linear head: phi has D=12, K classes."""

    def __init__(self, num_classes: int = 3, width: int = 12) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, width, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        )
        self.fc = torch.nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def tiny_classifier(num_classes: int = 3, seed: int = 0, spec: str = "test:tiny"):  # type: ignore[no-untyped-def]
    from spurious.models import Classifier, Preprocessing

    torch.manual_seed(seed)
    net = TinyNet(num_classes).eval()
    pre = Preprocessing(input_size=(32, 32), resize_size=32, crop_pct=1.0, interpolation="bilinear",
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return Classifier.from_module(net, pre, [chr(ord("a") + i) for i in range(num_classes)], spec)  # = folder names


def cli_in_process(argv: list[str], *, threads: int = 1) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``spurious ARGV`` run in this process on ``threads`` CPU threads.

    For a run that a test only compares against (e.g. the single-process side of a torchrun test): it
    gives what ``python -m spurious ARGV`` with ``OMP_NUM_THREADS=threads`` gives, without the seconds a
    new interpreter spends importing torch. Tests about the process itself still start one.
    """
    import contextlib
    import io

    from spurious.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(argv)
    finally:
        torch.set_num_threads(before)
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture
def tiny_model():  # type: ignore[no-untyped-def]
    return tiny_classifier()


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_images(tmp_path / "data", {"a": 7, "b": 6, "c": 5})


# ------------------------------------------------------------------------ built once per session
#
# Training the tiny demo models (seconds for the standard one, ~half a minute for the robust one) and
# running `spurious demo --fast` are the suite's most expensive steps; they are done once per session
# here. Tests that change what they get work on a copy (``copy_demo_out``), so the suite still passes
# in any order and any file alone.
#
# Under pytest-xdist (``make test`` runs ``-n 2``) every worker is its own session, so "once per session"
# would mean once per worker. The tiny models are therefore trained once per run, by whichever
# worker asks first, into the run's shared temporary folder (the parent of every worker's basetemp)
# under a file lock; the other workers wait for that lock and reuse what it built. Each worker still
# gets a private $SPURIOUS_CACHE (a copy of the shared one), so no two processes ever write one file.

_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... under xdist; None otherwise


def _shared_seed_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with both tiny demo models (and their planted data) trained once per xdist run.

    The first worker to take the lock trains them; the others wait for it and find the folder ready.
    """
    from filelock import FileLock

    from spurious.demo.train import train_demo_model

    shared = tmp_path_factory.getbasetemp().parent  # this run's folder, shared by its workers
    folder, ready = shared / "spurious-seed-cache", shared / "spurious-seed-cache.ready"
    with FileLock(str(shared / "spurious-seed-cache.lock")):
        if not ready.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a half-built one from a worker that crashed
            for variant in ("robust", "standard"):
                train_demo_model(variant, tiny=True, cache_dir=folder, progress=False)
            ready.touch()
    return folder


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``$SPURIOUS_CACHE`` for the whole session: a fresh folder, never the user's ``~/.cache/spurious``.

    Planted data, tiny demo checkpoints and checkpoint digests are written here on first use and reused
    by every later test (and by the subprocesses they start, which inherit the environment). A test
    that needs an empty cache still sets its own with ``monkeypatch.setenv``.
    """
    cache = tmp_path_factory.mktemp("spurious-cache")
    if _XDIST_WORKER:  # start from the tiny models that the first worker trained (see _shared_seed_cache)
        shutil.copytree(_shared_seed_cache(tmp_path_factory), cache, symlinks=True, dirs_exist_ok=True)
    old = os.environ.get("SPURIOUS_CACHE")
    os.environ["SPURIOUS_CACHE"] = str(cache)
    try:
        yield cache
    finally:
        if old is None:
            del os.environ["SPURIOUS_CACHE"]
        else:
            os.environ["SPURIOUS_CACHE"] = old


@pytest.fixture(scope="session")
def demo_models(session_cache: Path) -> dict[str, DemoModelInfo]:
    """``demo:robust-tiny`` and ``demo:standard-tiny`` trained into the session cache (once per session)."""
    from spurious.demo.train import train_demo_model

    return {v: train_demo_model(v, tiny=True, cache_dir=session_cache, progress=False) for v in ("robust", "standard")}


@dataclass(frozen=True)
class FastDemo:
    """One run of ``spurious demo --fast --out demo-out --json`` (from the session folder ``cwd``)."""

    argv: list[str]           # the command line after ``spurious``
    cwd: Path
    out: Path                 # cwd / "demo-out": shared, read only; copy it with copy_demo_out to change it
    summary: dict[str, Any]   # the --json summary as printed


@pytest.fixture(scope="session")
def fast_demo(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> FastDemo:
    """The fast demo, run once per session through the CLI, the README's way (a relative ``--out``).

    Under xdist each worker that needs it runs it in its own cache: its workspaces record that
    cache's model path, which a rerun from another worker's cache would refuse.

    It trains the tiny models into the session cache if no test has yet.
    """
    import contextlib
    import io
    import json

    from spurious.cli import main

    argv = ["demo", "--fast", "--out", "demo-out", "--json", "--no-progress"]
    cwd = tmp_path_factory.mktemp("fast-demo")
    stdout, stderr = io.StringIO(), io.StringIO()
    here = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(argv)
    finally:
        os.chdir(here)
    assert code == 0, stderr.getvalue()[-3000:]
    return FastDemo(argv, cwd, cwd / argv[argv.index("--out") + 1], json.loads(stdout.getvalue()))


@pytest.fixture(scope="session")
def planted_ws(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Path:
    """The tiny planted data with the tiny robust demo model (cached), train features and npca (L=6).

    Shared by the visualize tests and the torchrun test (tests/test_dist.py); copy it before writing
    anything but its ``visualize`` stage.
    """
    from spurious.datasets import image_folder
    from spurious.demo.planted import load_planted
    from spurious.demo.train import train_demo_model
    from spurious.extract import extract
    from spurious.models import load_model
    from spurious.npca import npca

    info = train_demo_model("robust", tiny=True, progress=False)
    planted = load_planted(info.planted_root)
    ws = tmp_path_factory.mktemp("vis-planted") / "ws"
    extract(ws, model=load_model(info.spec), data=image_folder(planted.train, class_names=planted.class_folders),
            num_workers=0, progress=False)
    npca(ws, n_components=6, progress=False)
    return ws


def copy_demo_out(demo: FastDemo, dest: Path) -> Path:
    """A private copy of the fast demo's output at ``dest`` (symlinks, such as ``planted``, kept as links)."""
    shutil.copytree(demo.out, dest, symlinks=True)
    return dest


# ------------------------------------------------------------------------ which worker runs what
#
# ``make test`` runs ``--dist loadfile``: each file goes to one worker whole, so module fixtures are built
# once. The files that need one of the costly session fixtures below are further handed out as one unit,
# so that one worker builds that fixture once for all of them instead of each worker building its own
# (the fast demo is ~11 s of a worker's time). The controller sees only node ids, not fixtures, hence the
# list; every worker checks it against the fixtures its tests ask for, and a file that uses one but is
# not listed under it stops the run at collection with a message saying so. (A listed file that no
# longer uses its fixture is not caught: a run of a few of its tests cannot tell, and it costs only
# some balance between the workers; ``--dist loadgroup`` with ``xdist_group`` marks would say the same,
# but pytest-xdist 3.8 under pytest 9 sends marked tests of one group to several workers.)
SHARED_FIXTURE_FILES: dict[str, tuple[str, ...]] = {
    "fast_demo": ("test_counterfactual.py", "test_counterfactual_shown.py", "test_demo.py", "test_dvce.py",
                  "test_groups_dfr.py", "test_readme.py"),
    "planted_ws": ("test_dist.py", "test_visualize.py"),
}
_UNIT_OF_FILE = {f"tests/{name}": fixture for fixture, names in SHARED_FIXTURE_FILES.items() for name in names}


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``--dist loadfile``: a file is a work unit, except the files of ``SHARED_FIXTURE_FILES``."""
    if config.getoption("dist", None) != "loadfile":
        return None  # pytest-xdist's own scheduler
    from xdist.scheduler import LoadFileScheduling

    class SharedFixtureScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return _UNIT_OF_FILE.get(file, file)

    return SharedFixtureScheduling(config, log)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Hand every object left alive to the permanent GC generation once the session is over.

    At exit the interpreter runs a full garbage collection over the whole heap (torch, timm,
    diffusers and every test module's objects): 1.4 s for a process that only imported torch and
    timm, 0.2 s after ``gc.freeze()``. The xdist workers pay it side by side, then the controller, before
    the run ends, and the reports are all written by now, so nothing is lost by skipping it.
    """
    gc.freeze()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run when a file uses a shared fixture that ``SHARED_FIXTURE_FILES`` does not list it under."""
    used: dict[str, set[str]] = {}
    for item in items:
        file = item.nodeid.split("::", 1)[0]
        for fixture in SHARED_FIXTURE_FILES:
            if fixture in getattr(item, "fixturenames", ()):
                used.setdefault(file, set()).add(fixture)
    for file, fixtures in used.items():
        listed = _UNIT_OF_FILE.get(file)
        if listed not in fixtures:
            raise pytest.UsageError(
                f"tests/conftest.py SHARED_FIXTURE_FILES is out of date for {file}: it uses {sorted(fixtures)}, "
                f"listed under {listed!r}; list the file under one fixture it uses so that one xdist worker "
                f"builds that fixture for all its users")
