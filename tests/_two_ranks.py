"""Run several ``spurious`` commands in one torchrun launch: each rank runs every job in turn.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/_two_ranks.py JOBS.json OUT_DIR

``JOBS.json`` is a list of ``{"name": ..., "argv": [...]}``. For each job every rank writes
``OUT_DIR/<name>.rank<r>.json`` with ``code`` (the CLI's exit code), ``stdout``, ``stderr`` and
``seconds``. The process group is set up by the first command and kept for the later ones
(``spurious._dist.init_distributed`` joins an existing group), so one launch pays the interpreter
and import start-up of the three processes once instead of once per command (tests/test_dist.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    jobs_file, out = Path(sys.argv[1]), Path(sys.argv[2])
    from spurious.cli import main as spurious_main

    rank = int(os.environ.get("RANK", "0"))
    for job in json.loads(jobs_file.read_text()):
        stdout, stderr = io.StringIO(), io.StringIO()
        began = time.perf_counter()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = spurious_main(job["argv"])
        record = {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(),
                  "seconds": time.perf_counter() - began}
        tmp = out / f".{job['name']}.rank{rank}.json.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(out / f"{job['name']}.rank{rank}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
