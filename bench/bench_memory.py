"""Peak memory of ``extract`` and ``npca`` does not grow with the number of images.

Runs each stage in a fresh child process on N and on 2N images and prints the peak RSS of the
main process (and, for extract, of the largest decoding worker) side by side with the ratio.
``--malloc tuned`` first calls ``spurious._malloc.tune_malloc()`` in each child, as the CLI does
(freed memory is kept for reuse); ``default`` leaves glibc's settings.

    python bench/bench_memory.py --images 400 --classes 8
    python bench/bench_memory.py --images 400 --classes 8 --malloc tuned
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, simulate_features  # noqa: E402


def _probe(argv: list[str]) -> None:
    """Child side: run one stage, print own and children's peak RSS in MiB."""
    malloc, stage, ws = argv[0], argv[1], argv[2]
    argv = argv[1:]
    if malloc == "tuned":
        from spurious._malloc import tune_malloc

        assert tune_malloc(), "tune_malloc() did nothing here (not glibc, or a MALLOC_* variable is set)"
    if stage == "extract":
        from spurious.extract import extract

        extract(ws, model="efficientnet_lite0", data=f"folder:{argv[2]}", batch_size=32, progress=False)
    else:
        from spurious.npca import npca

        npca(ws, n_components=128, device="cpu", progress=False)
    print(json.dumps({"self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def _run_probe(malloc: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--probe", malloc, *args], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        _probe(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=400, help="N for extract (JPEGs)")
    p.add_argument("--classes", type=int, default=8, help="classes x 1300 x 2048 for npca (N)")
    p.add_argument("--malloc", choices=["default", "tuned"], default="default",
                   help="glibc's malloc settings in the children: as they are, or tune_malloc() (the CLI's)")
    args = p.parse_args()
    from bench_extract import make_jpegs

    from spurious.workspace import Workspace, import_features

    result: dict = {"benchmark": "memory", "malloc": args.malloc}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ext = {}
        for mult in (1, 2):
            data = make_jpegs(tmp / f"jpeg{mult}", args.images * mult)
            ext[mult] = _run_probe(args.malloc, "extract", str(tmp / f"ws_e{mult}"), str(data))
        result["extract"] = {
            "images": [args.images, 2 * args.images],
            "main_peak_mib": [round(ext[1]["self_mib"], 1), round(ext[2]["self_mib"], 1)],
            "worker_peak_mib": [round(ext[1]["children_mib"], 1), round(ext[2]["children_mib"], 1)],
            "ratio_main": round(ext[2]["self_mib"] / ext[1]["self_mib"], 3),
        }
        npc = {}
        for name, classes, per_class in (("N", args.classes, 1300), ("2N classes", 2 * args.classes, 1300),
                                         ("2N per class", args.classes, 2600)):
            phi, labels, W, b = simulate_features(tmp / f"phi_{classes}_{per_class}.npy", classes, per_class, 2048)
            ws = tmp / f"ws_n_{classes}_{per_class}"
            Workspace.create_from_head(ws, W, b, spec="bench:simulated")
            import_features(ws, phi, labels, [f"i{j}" for j in range(len(labels))])
            del phi
            npc[name] = {"images": classes * per_class, "peak_mib": round(_run_probe(args.malloc, "npca", str(ws))["self_mib"], 1)}
        base = npc["N"]["peak_mib"]
        result["npca"] = {**npc, "ratio_2N_classes": round(npc["2N classes"]["peak_mib"] / base, 3),
                          "ratio_2N_per_class": round(npc["2N per class"]["peak_mib"] / base, 3)}
    emit(result)


if __name__ == "__main__":
    main()
