"""The demo report: pictures of every found component (relative links, alt text, missing files noted), model names.

The visualize output is written here by hand (components.json + PNG files, in the layout of
``spurious.visualize``), so the expected files are known independently of the report code.
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from spurious.demo import DemoResult, FoundComponent, ModelSummary
from spurious.demo._report import write_report

ROBUST = "demo:robust@/root/.cache/spurious/models/demo-robust-ef9804dea281125a.pt"
STANDARD = "demo:standard@/root/.cache/spurious/models/demo-standard-1c22f85c564fccef.pt"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str]] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.imgs.append(a)
        elif tag == "a" and "href" in a:
            self.hrefs.append(a["href"])


def report_images(report: Path) -> list[dict[str, str]]:
    """The ``<img>`` attributes of an HTML page, in page order."""
    tags = _Tags()
    tags.feed(report.read_text(encoding="utf-8"))
    return tags.imgs


def report_links(report: Path) -> list[str]:
    tags = _Tags()
    tags.feed(report.read_text(encoding="utf-8"))
    return tags.hrefs


def resolve(report: Path, src: str) -> Path:
    """Where a relative ``src``/``href`` of ``report`` points; fails on absolute or URL links."""
    assert src and "://" not in src and not src.startswith("/") and not PurePosixPath(src).is_absolute(), src
    return (report.parent / src).resolve()


def assert_pictures_of(report: Path, ws: Path, found: list[tuple[int, int]]) -> None:
    """Every found (class, component) has its NPFV, NPFV heatmap and each top image + heatmap
    (from its ``components.json``) as an ``<img>`` with a relative src that exists, and alt text."""
    imgs = report_images(report)
    shown = {resolve(report, i["src"]): i["alt"] for i in imgs}
    for k, l in found:
        folder = ws / "visualize" / f"class_{k:05d}"
        data = json.loads((folder / "components.json").read_text())
        comp = next(c for c in data["components"] if c["component"] == l)
        want = [comp["npfv_png"], comp["npfv_heatmap_png"]]
        for t in comp["top_images"][:8]:
            want += [t["png"], t["heatmap_png"]]
        for name in want:
            path = (folder / name).resolve()
            assert path.is_file(), path
            assert path in shown, f"class {k} component {l}: no <img> for {name}"
            assert shown[path].strip(), f"no alt text for {name}"
        assert "NPFV" in shown[(folder / comp["npfv_png"]).resolve()]
    for i in imgs:
        assert resolve(report, i["src"]).is_file(), i["src"]


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def _visualized_class(ws: Path, k: int, components: list[int], tops: int = 3) -> Path:
    """A class folder as ``visualize`` writes it (components.json last), with real PNG files."""
    folder = ws / "visualize" / f"class_{k:05d}"
    comps = []
    for l in components:
        _png(folder / f"npfv_l{l:04d}.png", 10)
        _png(folder / f"npfv_l{l:04d}_cam.png", 20)
        top = []
        for j in range(tops):
            _png(folder / f"top_l{l:04d}_{j}.png", 30 + j)
            _png(folder / f"top_l{l:04d}_{j}_cam.png", 60 + j)
            top.append({"id": f"0{k}_c/{j:05d}.png", "row": j, "alpha": 1.0 / (j + 1), "probability": 0.5,
                        "png": f"top_l{l:04d}_{j}.png", "heatmap_png": f"top_l{l:04d}_{j}_cam.png", "error": None})
        comps.append({"rank": len(comps) + 1, "component": l, "eigenvalue": 1.0, "npfv_probability": 0.9,
                      "npfv_alpha": 2.0, "npfv_top3": [], "npfv_png": f"npfv_l{l:04d}.png",
                      "npfv_heatmap_png": f"npfv_l{l:04d}_cam.png", "top_images": top})
    (folder / "index.html").write_text("<html></html>")
    (folder / "components.json").write_text(json.dumps({"class": k, "name": f"c{k}", "input_size": [3, 32, 32],
                                                        "components": comps}))
    return folder


def _result(out: Path, found: list[FoundComponent]) -> DemoResult:
    def model(spec: str, kind: str) -> ModelSummary:
        return ModelSummary(model=spec, val_accuracy=0.8, val_accuracy_fixed=0.8, mauc_benchmark=0.6,
                            mauc_benchmark_fixed=0.7, mauc_planted=0.6, mauc_planted_fixed=0.7, fix_kind=kind,
                            logit_identity_max_abs_error=0.0)

    return DemoResult(out=str(out), fast=True, labelers="simulated", planted_root="planted", found=found,
                      models=[model(ROBUST, "plain"), model(STANDARD, "transferred")], timings={"npca": 1.0})


def test_report_shows_the_pictures_of_each_found_component(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ws = out / "ws-robust"
    _visualized_class(ws, 0, [0, 4])
    _visualized_class(ws, 3, [1])
    found = [FoundComponent(0, "star", 4, "feeder", 1.0, 0.9), FoundComponent(3, "triangle", 1, "water", 0.95, 0.8)]
    report = write_report(out, _result(out, found), {})
    assert_pictures_of(report, ws, [(0, 4), (3, 1)])
    # exactly those: 2 components x (NPFV + its GradCAM + 3 top images x 2), nothing of component 0
    imgs = report_images(report)
    assert len(imgs) == 2 * (2 + 3 * 2)
    assert not any("l0000" in i["src"] for i in imgs)
    assert all('alt="' in line for line in report.read_text().splitlines() if "<img " in line)
    # the class sheets are linked
    assert {resolve(report, h) for h in report_links(report)} >= {(ws / "visualize" / "class_00000" / "index.html")
                                                                 .resolve()}

    # moved (renamed and re-parented): every picture and link still resolves
    moved = tmp_path / "elsewhere" / "copy-of-out"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    report = moved / "report" / "index.html"
    assert_pictures_of(report, moved / "ws-robust", [(0, 4), (3, 1)])
    for href in report_links(report):
        assert resolve(report, href).exists(), href


def test_missing_pictures_are_skipped_with_a_note(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ws = out / "ws-robust"
    folder = _visualized_class(ws, 0, [2])
    (folder / "top_l0002_1_cam.png").unlink()
    (folder / "npfv_l0002.png").unlink()
    bad = ws / "visualize" / "class_00004"
    bad.mkdir(parents=True)
    (bad / "components.json").write_text("{not json")
    found = [FoundComponent(0, "star", 2, "feeder", 1.0, 0.9),       # two files missing
             FoundComponent(0, "star", 7, "frame", 1.0, 0.9),        # component not visualized
             FoundComponent(1, "ring", 0, "frame", 1.0, 0.9),        # class not visualized
             FoundComponent(4, "crescent", 0, None, 0.0, 0.1)]       # components.json unreadable
    report = write_report(out, _result(out, found), {})
    html = report.read_text()
    imgs = report_images(report)
    assert len(imgs) == 2 + 3 * 2 - 2
    for i in imgs:
        assert resolve(report, i["src"]).is_file()
    assert "2 picture(s) missing" in html and "top_l0002_1_cam.png" in html and "npfv_l0002.png" in html
    assert "component 7 is not among the components visualized for class 0" in html
    assert "ws-robust/visualize/class_00001/components.json does not exist" in html
    assert "ws-robust/visualize/class_00004/components.json could not be read" in html
    assert str(tmp_path) not in html.split("Time")[0].split("Planted features found")[1]  # no absolute paths


def test_no_found_component_says_so(tmp_path: Path) -> None:
    report = write_report(tmp_path, _result(tmp_path, []), {})
    assert "agreed on no component" in report.read_text() and report_images(report) == []


def test_report_names_models_by_spec_name(tmp_path: Path) -> None:
    report = write_report(tmp_path, _result(tmp_path, []), {})
    html = report.read_text()
    score_table = html.split("Spurious score before / after SpuFix")[1].split("Sanity check")[0]
    cells = [c.split("</td>")[0] for c in score_table.split("<td")[1:]]
    assert any(c.endswith(">demo:robust</span>") for c in cells)
    assert any(c.endswith(">demo:standard</span>") for c in cells)
    # the full specs are still there: the name -> spec table and the tooltips
    assert f"<td class=\"l\">{ROBUST}</td>" in html and f'title="{STANDARD}"' in html
