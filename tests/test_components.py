"""The component set (``spurious.components``) and the inspection-sheet table reader
(``spurious.visualize.read_sheet_table``).

Expected values are written out by hand or come from the fixtures the tests generate (a pickled
``.npy`` in the published layout, JSON files in both sheet-table layouts), never from the code under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spurious.components import (
    COMPONENTS_FORMAT,
    ComponentSet,
    agreed_component_set,
    components_from_labels,
    import_components,
    labelled_components,
    load_components,
)
from spurious.label import LabelStore
from spurious.visualize import SheetTable, read_sheet_table, sheet_classes, sheet_folder
from spurious.workspace import IncompatibleArtifactError, Workspace

NAMES = ["cat", "dog", "boat"]


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    rng = np.random.default_rng(0)
    return Workspace.create_from_head(tmp_path / "ws", rng.normal(size=(3, 4)), rng.normal(size=3),
                                      spec="test:components", class_names=NAMES)


# ---------------------------------------------------------------------------- the component-set file


def test_round_trip_keeps_classes_names_fingerprint_and_source(tmp_path: Path) -> None:
    cs = ComponentSet({2: [5, 0], "dog": [1]}, "f" * 16, "labels of ann+bob")
    path = cs.save(tmp_path / "sub" / "comps.json")
    assert json.loads(path.read_text()) == {
        "format": "spurious-components", "version": 1, "model_fingerprint": "f" * 16,
        "classes": {"2": [5, 0], "dog": [1]}, "source": "labels of ann+bob"}
    back = load_components(path)
    assert back == cs and back.path == str(path) and back.num_components == 3
    assert load_components(back) == cs  # a ComponentSet is re-checked, not trusted
    assert COMPONENTS_FORMAT == "spurious-components"


def test_spurious_fix_keeps_the_public_names() -> None:
    from spurious.fix import ComponentSet as CS, components_from_labels as cfl, import_components as ic, \
        load_components as lc

    assert (CS, cfl, ic, lc) == (ComponentSet, components_from_labels, import_components, load_components)


def test_component_file_forms(tmp_path: Path) -> None:
    (tmp_path / "plain.json").write_text('{"0": [1, 2], "3": []}')
    assert load_components(tmp_path / "plain.json").classes == {0: [1, 2], 3: []}
    full = {"format": "spurious-components", "version": 1, "model_fingerprint": "abc", "classes": {"2": [0]},
            "source": "labels of alice+bob"}
    (tmp_path / "full.json").write_text(json.dumps(full))
    cs = load_components(tmp_path / "full.json")
    assert (cs.classes, cs.model_fingerprint, cs.source) == ({2: [0]}, "abc", "labels of alice+bob")
    assert ComponentSet({2: [0]}, "abc", "labels of alice+bob").to_dict() == full
    assert load_components({"1": np.array([3, 4])}).classes == {1: [3, 4]}


def test_a_component_listed_twice_is_kept_once_with_a_warning() -> None:
    with pytest.warns(UserWarning, match=r"class 0 lists a component twice \(\[3, 1, 3\]\)"):
        assert load_components({0: [3, 1, 3]}).classes == {0: [1, 3]}


@pytest.mark.parametrize("text, match", [
    ("not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"format": "other", "classes": {}}', "has format 'other'"),
    ('{"format": "spurious-components", "version": 9, "classes": {"0": [1]}}', "has version 9"),
    ('{"format": "spurious-components", "version": 1, "classes": [1]}', 'needs a "classes" object'),
    ('{"format": "spurious-components", "version": 1, "model_fingerprint": 3, "classes": {"0": [1]}}',
     "model_fingerprint must be a string or null"),
    ('{"0": 3}', "must be a list of 0-based component indices"),
    ('{"0": [-1]}', "is not a 0-based component index"),
    ('{"0": [1.5]}', "is not a 0-based component index"),
    ('{"0": [true]}', "is not a 0-based component index"),
    ('{"": [1]}', "is not a class index or name"),
    ('{"0": []}', "the component set is empty"),
])
def test_bad_component_files(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "c.json").write_text(text)
    with pytest.raises(ValueError, match=match):
        load_components(tmp_path / "c.json")


def test_load_errors_name_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="component file .*nope.json does not exist"):
        load_components(tmp_path / "nope.json")
    (tmp_path / "spurious_components.npy").write_bytes(b"x")
    with pytest.raises(ValueError, match="read only by the explicit import: `spurious fix import-components"):
        load_components(tmp_path / "spurious_components.npy")
    with pytest.raises(TypeError, match="a file path, a mapping or a ComponentSet, got int"):
        load_components(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="class 1 appears twice"):
        load_components({1: [0], "1": [2]})


# ---------------------------------------------------------------------------- the published .npy


def test_import_components_from_pickled_npy(tmp_path: Path) -> None:
    ref = {5: [0, 3], 17: [1], 999: [2, 4, 7]}
    np.save(tmp_path / "spurious_components.npy", np.array(ref, dtype=object), allow_pickle=True)
    comps = import_components(tmp_path / "spurious_components.npy", tmp_path / "comps.json")
    assert comps.classes == ref and comps.model_fingerprint is None
    data = json.loads((tmp_path / "comps.json").read_text())
    assert data == {"format": "spurious-components", "version": 1, "model_fingerprint": None,
                    "classes": {"5": [0, 3], "17": [1], "999": [2, 4, 7]},
                    "source": "imported from spurious_components.npy"}
    assert load_components(tmp_path / "comps.json").classes == ref
    before = (tmp_path / "comps.json").read_bytes()
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        import_components(tmp_path / "spurious_components.npy", tmp_path / "comps.json")
    assert (tmp_path / "comps.json").read_bytes() == before
    assert import_components(tmp_path / "spurious_components.npy", tmp_path / "comps.json", overwrite=True).classes == ref
    np.save(tmp_path / "bad.npy", np.arange(3))
    with pytest.raises(ValueError, match="must hold a pickled dict"):
        import_components(tmp_path / "bad.npy")


def test_import_components_sorts_classes_and_refuses_names_and_non_pickles(tmp_path: Path) -> None:
    # the reference file in its published shape: numpy integer keys, lists in any class order
    ref = {np.int64(999): [np.int64(2)], np.int64(5): [0, 3]}
    np.save(tmp_path / "a.npy", np.array(ref, dtype=object), allow_pickle=True)
    assert list(import_components(tmp_path / "a.npy").classes.items()) == [(5, [0, 3]), (999, [2])]
    np.save(tmp_path / "names.npy", np.array({"cat": [1]}, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"keys must be class indices, got \['cat'\]"):
        import_components(tmp_path / "names.npy")
    (tmp_path / "text.npy").write_text("not a pickle")
    with pytest.raises(ValueError, match="is not a readable .npy file or pickle"):
        import_components(tmp_path / "text.npy")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_components(tmp_path / "missing.npy")


# ---------------------------------------------------------------------------- against a workspace


def test_resolve_by_name_and_index(ws: Workspace) -> None:
    cs = ComponentSet({"dog": [4, 1], 0: [2], "boat": []})
    assert cs.resolve(ws) == {0: [2], 1: [4, 1]}  # sorted by class, each class in the set's order
    with pytest.raises(ValueError, match=r"class 'dog' is listed twice in the component set \(as class 1\)"):
        ComponentSet({1: [0], "dog": [2]}).resolve(ws)
    with pytest.raises(ValueError, match=r"unknown class 'dgo'; did you mean: dog"):
        ComponentSet({"dgo": [0]}).resolve(ws)
    with pytest.raises(ValueError, match=r"unknown class 7: this model has classes 0..2"):
        ComponentSet({7: [0]}).resolve(ws)


def test_fingerprint_refusal(ws: Workspace, tmp_path: Path) -> None:
    other = "0123456789abcdef"
    assert other != ws.model_fingerprint
    path = ComponentSet({0: [1]}, other, "labels of ann+bob").save(tmp_path / "c.json")
    cs = load_components(path)
    with pytest.raises(IncompatibleArtifactError,
                       match=rf"component set {path} \(labels of ann\+bob\) was made for the model with fingerprint "
                             rf"{other} .* but workspace ws has model 'test:components' \(fingerprint "
                             rf"{ws.model_fingerprint}\); .*label this model's components"):
        cs.check_model(ws.model_fingerprint, ws.model_spec, used_with="workspace ws")
    ComponentSet({0: [1]}, ws.model_fingerprint).check_model(ws.model_fingerprint, ws.model_spec, used_with="x")
    ComponentSet({0: [1]}, None).check_model(ws.model_fingerprint, ws.model_spec, used_with="x")  # not checked


# ---------------------------------------------------------------------------- from the label store


def _table(ws: Workspace, k: int, content: object) -> Path:
    path = ws.root / "visualize" / f"class_{k:05d}" / "components.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def test_components_from_labels_and_the_store_export_agree(ws: Workspace, tmp_path: Path) -> None:
    assert labelled_components(ws).classes == {}  # no label store: nothing, no error
    with pytest.raises(FileNotFoundError, match="no label store in"):
        components_from_labels(ws.root)
    _table(ws, 1, [{"l": 4}, {"l": 2}])  # the earlier layout, read by the store through the same reader
    store = LabelStore(ws.root, sync=True)
    with pytest.raises(ValueError, match="no component of .* has 2 agreeing 'spurious' verdicts yet"):
        components_from_labels(ws.root)
    for who in ("ann", "bob"):
        store.set_component_verdict(who, 1, 4, "spurious")
    store.set_component_verdict("ann", 1, 2, "spurious")
    cs = components_from_labels(ws.root)
    assert (cs.classes, cs.model_fingerprint) == ({1: [4]}, ws.model_fingerprint)
    assert cs.source == "labels: 2 labelers, min_agree=2" and cs.path == str(ws.root / "labels.sqlite")
    assert components_from_labels(ws, min_agree=1).classes == {1: [2, 4]}
    agreed_component_set(store).save(tmp_path / "export.json")
    assert load_components(tmp_path / "export.json") == cs  # the label UI's file is a component-set file


# ---------------------------------------------------------------------------- the inspection-sheet table


def test_sheet_table_current_layout(ws: Workspace) -> None:
    recs = [{"rank": 1, "component": 7, "npfv_png": "npfv_l0007.png", "top_images": [{"id": "a.png"}]},
            {"rank": 2, "component": 0, "npfv_png": "npfv_l0000.png", "top_images": []}]
    path = _table(ws, 2, {"format": "spurious-visualize-class", "version": 1, "plan": "p1", "class": 2,
                          "name": "boat", "input_size": [3, 8, 8], "components": recs})
    t = read_sheet_table(ws, 2)
    assert isinstance(t, SheetTable) and (t.k, t.path, t.folder) == (2, path, path.parent)
    assert t.selected == [7, 0] and t.plan == "p1" and t.document["input_size"] == [3, 8, 8]
    assert t.components[0] == {**recs[0], "class": 2}
    assert t.component(0) == {**recs[1], "class": 2} and t.component(3) is None
    assert read_sheet_table(ws.root, 2) == t and read_sheet_table(str(ws.root), 2) == t


def test_sheet_table_earlier_layout(ws: Workspace) -> None:
    _table(ws, 0, [{"l": 3, "npfv_png": "x.png"}, {"component": "5", "rank": 9}])
    t = read_sheet_table(ws, 0)
    assert t.selected == [3, 5] and t.document == {} and t.plan is None
    assert [(r["class"], r["component"], r["rank"]) for r in t.components] == [(0, 3, 0), (0, 5, 9)]
    assert t.components[0]["l"] == 3 and t.components[0]["npfv_png"] == "x.png"


def test_sheet_classes_lists_tables_only(ws: Workspace) -> None:
    assert sheet_classes(ws) == []
    _table(ws, 12, {"components": []})
    _table(ws, 3, [])
    (ws.root / "visualize" / "class_00004").mkdir()  # not finished: no table yet
    (ws.root / "visualize" / "index.html").write_text("")
    assert sheet_classes(ws) == [3, 12]
    assert sheet_folder(ws, 12) == ws.root / "visualize" / "class_00012"


@pytest.mark.parametrize("content, match", [
    ("{not json", r"class_00001/components.json: not JSON"),
    ({"components": 3}, r"expected a list of components"),
    ({"class": 1}, r"expected a list of components"),
    ({"components": [{"rank": 1}]}, r"class_00001/components.json: component record 0 has no component index"),
    ([5], r"component record 0 has no component index"),
    ([{"component": -1}], r"component record 0 has component -1 and rank 0; expected a 0-based component index"),
    ([{"component": 1, "rank": "first"}], r"component record 0 has component 1 and rank 'first'"),
    ({"class": 4, "components": []}, r"the table says class 4 but lies in the folder of class 1"),
])
def test_sheet_table_errors(ws: Workspace, content: object, match: str) -> None:
    path = ws.root / "visualize" / "class_00001" / "components.json"
    path.parent.mkdir(parents=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=match):
        read_sheet_table(ws, 1)


def test_sheet_table_missing(ws: Workspace) -> None:
    with pytest.raises(FileNotFoundError, match=r"class_00006/components.json does not exist \(visualize has not run "
                                                r"for class 6\)"):
        read_sheet_table(ws, 6)


def test_reading_tables_loads_no_torch() -> None:
    code = ("import sys; import spurious.label.store, spurious.components; "
            "from spurious.visualize import read_sheet_table; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
