"""Tests for spurious.datasets._labels: class folders and list labels follow class *names*.

Each test plants folders (or list rows) whose true class index is written out by hand in the
test, then checks the reader's labels against that planted truth, never against the matcher.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import pytest
from PIL import Image

from spurious import imagenet
from spurious.datasets import (
    LabelMatch,
    file_list,
    image_folder,
    image_pool,
    imagenet_folder,
    match_class_names,
    open_dataset,
    read_class_map,
    spurious_imagenet,
)

NAMES = ["star", "ring", "cross", "triangle", "heart", "hexagon", "moon", "square"]


def _folders(root: Path, folders: list[str], per_folder: int = 2) -> Path:
    """Make ``root/<folder>/img_<k>.png`` (4x4 PNGs) for each folder, in the given order."""
    for folder in folders:
        (root / folder).mkdir(parents=True)
        for k in range(per_folder):
            Image.new("RGB", (4, 4), (k * 40, 90, 200)).save(root / folder / f"img_{k}.png")
    return root


def _labels_by_folder(ds) -> dict[str, set[int]]:  # noqa: ANN001
    out: dict[str, set[int]] = {}
    for r in ds.records:
        out.setdefault(r.id.split("/", 1)[0], set()).add(r.label)
    return out


# ---------------------------------------------------------------------- image_folder by name
def test_subset_of_classes_gets_model_indices_not_sorted_positions(tmp_path: Path) -> None:
    root = _folders(tmp_path, ["heart", "triangle"], per_folder=3)
    ds = image_folder(root, class_names=NAMES)
    assert _labels_by_folder(ds) == {"heart": {4}, "triangle": {3}}
    assert ds.labels().tolist() == [4, 4, 4, 3, 3, 3]  # ids sorted: heart/* before triangle/*
    assert ds.class_names == NAMES
    assert ds.label_source == "folder names matched to the given class names (2 exact)"
    # the old ImageFolder convention would have given heart 0 and triangle 1
    assert _labels_by_folder(image_folder(root)) == {"heart": {0}, "triangle": {1}}


def test_all_classes_in_shuffled_folder_order(tmp_path: Path) -> None:
    folders = list(NAMES)
    random.Random(3).shuffle(folders)
    root = _folders(tmp_path, folders)
    truth = {"star": 0, "ring": 1, "cross": 2, "triangle": 3, "heart": 4, "hexagon": 5, "moon": 6,
             "square": 7}
    assert _labels_by_folder(image_folder(root, class_names=NAMES)) == {f: {i} for f, i in truth.items()}


def test_case_and_separators_do_not_matter(tmp_path: Path) -> None:
    names = ["great white shark", "tiger shark", "hammerhead"]
    root = _folders(tmp_path, ["Great_White_Shark", "HAMMERHEAD", "tiger--shark "])
    ds = image_folder(root, class_names=names)
    assert _labels_by_folder(ds) == {"Great_White_Shark": {0}, "HAMMERHEAD": {2}, "tiger--shark ": {1}}
    assert "3 ignoring case and separators" in ds.label_source


def test_nn_name_form(tmp_path: Path) -> None:
    root = _folders(tmp_path, ["00_star", "03_triangle", "4-Heart", "7 square"])
    ds = image_folder(root, class_names=NAMES)
    assert _labels_by_folder(ds) == {"00_star": {0}, "03_triangle": {3}, "4-Heart": {4}, "7 square": {7}}
    assert ds.label_source == "folder names matched to the given class names (4 as NN_name)"


def test_exact_class_names_win_over_nn_name(tmp_path: Path) -> None:
    """The planted dataset passes its own folder names (``00_star``) as class names."""
    names = ["01_ring", "00_star"]  # deliberately not in numeric order
    root = _folders(tmp_path, ["00_star", "01_ring"])
    assert _labels_by_folder(image_folder(root, class_names=names)) == {"00_star": {1}, "01_ring": {0}}


def test_nn_name_with_wrong_number_is_an_error(tmp_path: Path) -> None:
    root = _folders(tmp_path, ["03_star", "heart"])
    with pytest.raises(
        ValueError,
        match=r"'03_star' says class 3 \(class 3 is 'triangle'\) but its name 'star' is class 0; "
        r"if the name is right, rename it '00_star' or 'star'.*--class-map FILE",
    ):
        image_folder(root, class_names=NAMES)


def test_bare_index_folders_with_class_names(tmp_path: Path) -> None:
    root = _folders(tmp_path, ["5", "007"])
    ds = image_folder(root, class_names=NAMES)
    assert _labels_by_folder(ds) == {"5": {5}, "007": {7}}
    assert "2 as class index" in ds.label_source
    with pytest.raises(ValueError, match=r"'12'.*out of range 0\.\.7"):
        image_folder(_folders(tmp_path / "big", ["12"]), class_names=NAMES)


def test_wnid_folders_with_wnids(tmp_path: Path) -> None:
    wnids = ["n00000010", "n00000020", "n00000030"]
    root = _folders(tmp_path, ["n00000030", "n00000010"])
    ds = image_folder(root, class_names=["star", "ring", "cross"], wnids=wnids)
    assert _labels_by_folder(ds) == {"n00000030": {2}, "n00000010": {0}}
    assert "2 by wnid" in ds.label_source
    with pytest.raises(ValueError, match="2 class folders are not in class_names"):
        image_folder(root, class_names=["star", "ring", "cross"])
    with pytest.raises(ValueError, match="wnids has 2 entries but class_names has 3"):
        image_folder(root, class_names=["star", "ring", "cross"], wnids=wnids[:2])
    with pytest.raises(ValueError, match="wnids repeats 'n00000010'"):
        image_folder(root, class_names=["star", "ring", "cross"], wnids=[wnids[0]] * 3)


def test_imagenet_repeated_short_name_needs_wnid_or_index(tmp_path: Path) -> None:
    names, wnids = imagenet.class_names(), imagenet.wnids()
    assert names[134] == names[517] == "crane"
    root = _folders(tmp_path / "a", ["crane", "goldfish"])
    with pytest.raises(
        ValueError,
        match=r"'crane' matches classes 134 'crane', 517 'crane' \(the name appears twice in "
        rf"class_names\); name it by its wnid \({wnids[134]} or {wnids[517]}\) or NN_name with the "
        r"class index \(e.g. '134_crane'\).*--class-map FILE",
    ):
        image_folder(root, class_names=names, wnids=wnids)
    fixed = _folders(tmp_path / "b", [wnids[517], "517_crane", "goldfish"])
    ds = image_folder(fixed, class_names=names, wnids=wnids, class_map={"517_crane": 134})
    assert _labels_by_folder(ds) == {wnids[517]: {517}, "517_crane": {134}, "goldfish": {1}}
    ds = image_folder(_folders(tmp_path / "c", ["134_crane"]), class_names=names)
    assert _labels_by_folder(ds) == {"134_crane": {134}}


def test_duplicate_class_names_error_only_when_a_folder_hits_them(tmp_path: Path) -> None:
    names = ["crane", "dog", "crane"]
    root = _folders(tmp_path, ["dog"])
    assert _labels_by_folder(image_folder(root, class_names=names)) == {"dog": {1}}
    _folders(tmp_path, ["Crane"])
    with pytest.raises(ValueError, match=r"Ambiguous class folder: 'Crane' matches classes 0 'crane', 2"):
        image_folder(root, class_names=names)


def test_unknown_folder_lists_it_with_closest_names(tmp_path: Path) -> None:
    root = _folders(tmp_path, ["heart", "hexagn"])
    with pytest.raises(ValueError) as err:
        image_folder(root, class_names=NAMES)
    msg = str(err.value)
    assert msg.startswith(f"{root.resolve()}: class folder 'hexagn' is not in class_names")
    assert "(closest class names: 'hexagon')" in msg
    assert "class_names has 8 classes: 'star', 'ring', 'cross' and 5 more" in msg
    assert "--class-map FILE (Python: class_map=...)" in msg
    assert "'heart'" not in msg.split("class_names has")[0]  # the matched folder is not blamed

    _folders(tmp_path, ["mooon", "zzz"])
    with pytest.raises(
        ValueError,
        match=r"3 class folders are not in class_names: 'hexagn' \(closest class names: 'hexagon'\); "
        r"'mooon' \(closest class names: 'moon'\); 'zzz' \(no close class name\)",
    ):
        image_folder(root, class_names=NAMES)


def test_two_folders_onto_one_class(tmp_path: Path) -> None:
    root = _folders(tmp_path, ["Star", "star"])
    with pytest.raises(
        ValueError,
        match=r"'Star' \[normalised\] and 'star' \[exact\] both map to class 0 'star'; merge them",
    ):
        image_folder(root, class_names=NAMES)
    ds = image_folder(root, class_names=NAMES, class_map={"Star": "star", "star": 0})
    assert _labels_by_folder(ds) == {"Star": {0}, "star": {0}}
    with pytest.raises(ValueError, match="both map to class 0"):  # one from the map is not enough
        image_folder(root, class_names=NAMES, class_map={"Star": "star"})


# ---------------------------------------------------------------------- numeric folders, no names
def test_numeric_folders_without_class_names_are_indices(tmp_path: Path) -> None:
    root = _folders(tmp_path, ["2", "10"])
    ds = image_folder(root)
    assert _labels_by_folder(ds) == {"2": {2}, "10": {10}}
    assert ds.class_names == [str(i) for i in range(11)]
    assert ds.label_source == "numeric folder names are class indices"
    _folders(tmp_path, ["02"])
    with pytest.raises(ValueError, match=r"folders '02' and '2' are both class 2"):
        image_folder(root)


def test_huge_numeric_folders_fall_back_to_sorted_names(tmp_path: Path) -> None:
    root = _folders(tmp_path, ["20240101", "20240102"])
    with pytest.warns(UserWarning, match="too large to be class indices"):
        ds = image_folder(root)
    assert _labels_by_folder(ds) == {"20240101": {0}, "20240102": {1}}
    assert ds.label_source.startswith("sorted folder names (ImageFolder convention")


def test_class_map_or_wnids_need_class_names(tmp_path: Path) -> None:
    root = _folders(tmp_path, ["a"])
    with pytest.raises(ValueError, match="class_map needs class_names"):
        image_folder(root, class_map={"a": 0})
    with pytest.raises(ValueError, match="wnids needs class_names"):
        image_folder(root, wnids=["n00000001"])


# ---------------------------------------------------------------------- class maps
def test_class_map_json_and_csv_fix_an_unmatched_folder(tmp_path: Path) -> None:
    root = _folders(tmp_path / "data", ["hart", "triangle"])
    with pytest.raises(ValueError, match="'hart' is not in class_names"):
        image_folder(root, class_names=NAMES)
    files = {
        "by_name.json": json.dumps({"hart": "heart"}),
        "by_index.json": json.dumps({"hart": 4}),
        "by_name.csv": "folder,class\nhart,heart\n",
        "by_index.csv": "folder,class,comment\n\nhart,4,typo in the folder name\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        class_map = read_class_map(tmp_path / name)
        ds = image_folder(root, class_names=NAMES, class_map=class_map)
        assert _labels_by_folder(ds) == {"hart": {4}, "triangle": {3}}, name
        assert "1 from the class map, 1 exact" in ds.label_source
        again = open_dataset(f"folder:{root}", class_names=NAMES, class_map=class_map)
        assert again.fingerprint() == ds.fingerprint()
    assert read_class_map(tmp_path / "by_index.csv") == {"hart": 4}
    assert read_class_map(tmp_path / "by_name.csv") == {"hart": "heart"}


def test_class_map_wins_over_names(tmp_path: Path) -> None:
    root = _folders(tmp_path, ["star", "ring"])  # e.g. the folders were swapped on purpose
    ds = image_folder(root, class_names=NAMES, class_map={"star": "ring", "ring": "star"})
    assert _labels_by_folder(ds) == {"star": {1}, "ring": {0}}


@pytest.mark.parametrize(
    ("class_map", "match"),
    [
        ({"hart": "hearts"}, r"class_map entry 'hart': 'hearts' is not a class name "
                             r"\(closest class names: 'heart'"),
        ({"hart": 8}, r"class_map entry 'hart': 8 is out of range; a class index is 0\.\.7"),
        ({"hart": "8"}, r"class_map entry 'hart': '8' is out of range"),
        ({"hart": 1.5}, r"class_map entry 'hart': 1\.5 must be a class name or a class index, not float"),
        ({"hart": True}, r"must be a class name or a class index, not bool"),
        ({"unused": "nope", "hart": "heart"}, r"class_map entry 'unused': 'nope' is not a class name"),
    ],
)
def test_bad_class_map_values(tmp_path: Path, class_map: dict, match: str) -> None:
    root = _folders(tmp_path, ["hart"])
    with pytest.raises(ValueError, match=match):
        image_folder(root, class_names=NAMES, class_map=class_map)


def test_class_map_to_a_repeated_name_needs_the_index() -> None:
    with pytest.raises(ValueError, match=r"'x': 'crane' is the name of 2 classes \(0, 2\); map to the class index"):
        match_class_names(["x"], ["crane", "dog", "crane"], class_map={"x": "crane"})
    assert match_class_names(["x"], ["crane", "dog", "crane"], class_map={"x": 2}).label_of == {"x": 2}


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("bad.json", '{"a": "star",\n "b" "ring"}', r"bad.json line 2 column 6: invalid JSON"),
        ("list.json", '["star"]', r"the JSON is a list, expected an object"),
        ("value.json", '{"a": ["star"]}', r"'a' maps to \[\"star\"\]; expected a class name"),
        ("float.json", '{"a": 1.5}', r"'a' maps to 1.5"),
        ("twice.json", '{"a": 1, "a": 2}', r"'a' is given twice"),
        ("empty.json", "{}", r"has no entries"),
        ("short.csv", "folder,class\na,star\nb\n", r"short.csv line 3: expected 'found name,class'"),
        ("blank.csv", "folder,class\na,\n", r"line 2: expected 'found name,class' \(two non-empty"),
        ("twice.csv", "folder,class\na,star\na,ring\n", r"line 3: 'a' is given twice \(first on line 2\)"),
        ("noheader.csv", "a,3\nb,4\n", r"line 1: 'a', '3' looks like an entry.*header"),
        ("header_only.csv", "folder,class\n", r"has no entries"),
        ("map.txt", "a star\n", r"unknown format '.txt'; expected a JSON object"),
    ],
)
def test_bad_class_map_files(tmp_path: Path, name: str, text: str, match: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=match):
        read_class_map(tmp_path / name)


def test_class_map_file_missing_dir_or_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"class map .*nope.json does not exist"):
        read_class_map(tmp_path / "nope.json")
    (tmp_path / "d.json").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        read_class_map(tmp_path / "d.json")
    (tmp_path / "latin.csv").write_bytes(b"folder,class\ncaf\xe9,star\n")
    with pytest.raises(ValueError, match="is not UTF-8"):
        read_class_map(tmp_path / "latin.csv")


# ---------------------------------------------------------------------- file lists
def test_file_list_name_labels_use_the_same_rules(tmp_path: Path) -> None:
    rows = [("a.png", "Heart"), ("b.png", "03_triangle"), ("c.png", "7"), ("d.png", "star"),
            ("e.png", ""), ("f.png", "hexa"), ("g.png", "n00000006")]
    (tmp_path / "l.csv").write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    wnids = [f"n0000000{i}" for i in range(len(NAMES))]
    ds = file_list(tmp_path / "l.csv", class_names=NAMES, class_map={"hexa": "hexagon"}, wnids=wnids)
    truth = {"a.png": 4, "b.png": 3, "c.png": 7, "d.png": 0, "e.png": -1, "f.png": 5, "g.png": 6}
    assert {r.id: r.label for r in ds.records} == truth
    assert ds.label_source == (
        "labels from the list file (names matched to the given class names (1 from the class map, "
        "1 exact, 1 ignoring case and separators, 1 by wnid, 1 as NN_name), integers)"
    )
    ds = open_dataset(tmp_path / "l.csv", class_names=NAMES, class_map={"hexa": 5}, wnids=wnids)
    assert {r.id: r.label for r in ds.records} == truth


def test_file_list_name_label_errors_give_lines(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("path,label\na.png,star\nb.png,hexagn\nc.png,hexagn\n")
    with pytest.raises(
        ValueError,
        match=r"l.csv: label 'hexagn' \(line 3\) is not in class_names \(closest class names: 'hexagon'\)",
    ):
        file_list(tmp_path / "l.csv", class_names=NAMES)
    (tmp_path / "two.csv").write_text("path,label\na.png,star\nb.png,Star\n")
    with pytest.raises(ValueError, match=r"'star' \(line 2\) \[exact\] and 'Star' \(line 3\) \[normalised\] both"):
        file_list(tmp_path / "two.csv", class_names=NAMES)
    with pytest.raises(ValueError, match="class_map needs class_names"):
        file_list(tmp_path / "two.csv", class_map={"Star": 0})


def test_file_list_integer_labels_stay_indices(tmp_path: Path) -> None:
    (tmp_path / "l.jsonl").write_text('{"path": "a.png", "label": 3}\n{"path": "b.png", "label": "5"}\n')
    ds = file_list(tmp_path / "l.jsonl", class_names=NAMES)
    assert ds.labels().tolist() == [3, 5]
    assert ds.label_source == "labels from the list file (integers)"
    assert file_list(tmp_path / "l.jsonl").label_source == "labels from the list file (integers)"
    (tmp_path / "none.csv").write_text("path\na.png\n")
    assert file_list(tmp_path / "none.csv").label_source == "labels from the list file (none: all unlabeled)"


# ---------------------------------------------------------------------- open_dataset, label_source
def test_open_dataset_rejects_class_map_for_fixed_label_spaces(tmp_path: Path) -> None:
    _folders(tmp_path / "inet", ["n01440764"])
    _folders(tmp_path / "spur", ["spurious_imagenet_281_cat_3"])
    _folders(tmp_path / "pool", ["x"])
    cases = {
        "imagenet": "its labels come from the wnid folder names",
        "spurious-imagenet": "its labels are the class index in each folder name",
        "pool": "its pool images are unlabeled",
    }
    for (kind, why), folder in zip(cases.items(), ("inet", "spur", "pool")):
        with pytest.raises(ValueError, match=rf"class_map cannot be given for a '{kind}' dataset: {why}"):
            open_dataset(f"{kind}:{tmp_path / folder}", class_map={"x": 0})
    with pytest.raises(ValueError, match="wnids cannot be given for a 'imagenet' dataset"):
        open_dataset(tmp_path / "inet", wnids=["n01440764"])


def test_label_source_of_every_reader_survives_subset_and_pickle(tmp_path: Path) -> None:
    _folders(tmp_path / "inet", ["n01440764"])
    _folders(tmp_path / "spur", ["spurious_imagenet_281_cat_3"])
    _folders(tmp_path / "named", ["b", "a"])
    assert imagenet_folder(tmp_path / "inet").label_source == "ImageNet-1k wnid folders"
    assert spurious_imagenet(tmp_path / "spur").label_source == (
        "Spurious ImageNet folder names (token 2 = class index)"
    )
    assert image_pool(tmp_path / "inet").label_source == "unlabeled pool"
    ds = image_folder(tmp_path / "named")
    assert ds.label_source == "sorted folder names (ImageFolder convention: no class names were given)"
    assert ds.subset([1]).label_source == ds.label_source
    assert ds.with_transform(None).label_source == ds.label_source
    assert pickle.loads(pickle.dumps(ds)).label_source == ds.label_source


# ---------------------------------------------------------------------- match_class_names itself
def test_match_counts_and_describe() -> None:
    m = match_class_names(["heart", "Ring", "02_cross", "7", "x"], NAMES, class_map={"x": "moon"})
    assert isinstance(m, LabelMatch)
    assert m.label_of == {"heart": 4, "Ring": 1, "02_cross": 2, "7": 7, "x": 6}
    assert m.how == {"heart": "exact", "Ring": "normalised", "02_cross": "index-name", "7": "index",
                     "x": "class-map"}
    assert m.counts() == {"class-map": 1, "exact": 1, "normalised": 1, "index-name": 1, "index": 1}
    assert m.describe() == (
        "matched to the given class names (1 from the class map, 1 exact, 1 ignoring case and "
        "separators, 1 as NN_name, 1 as class index)"
    )
    assert match_class_names(["star", "star"], NAMES).label_of == {"star": 0}


def test_match_lists_at_most_ten_offenders() -> None:
    found = [f"zz{i:02d}" for i in range(12)]
    with pytest.raises(ValueError, match=r"12 labels are not in class_names: 'zz00' .*'zz09' \(no close class name\); and 2 more\."):
        match_class_names(found, NAMES, what="label")


def test_match_argument_types() -> None:
    with pytest.raises(TypeError, match="class_names must be a sequence of strings"):
        match_class_names(["a"], "abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"found\[0\] must be a str"):
        match_class_names([1], NAMES)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="class_map must be a mapping"):
        match_class_names(["a"], NAMES, class_map=[("a", 0)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="class_names is empty"):
        match_class_names(["a"], [])


def test_dataset_kind_names_the_reader(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from spurious.datasets import dataset_kind

    from conftest import write_images

    write_images(tmp_path / "folders", {"a": 1, "b": 1})
    write_images(tmp_path / "in", {"n01440764": 1})
    assert dataset_kind(tmp_path / "folders") == "folder"
    assert dataset_kind(str(tmp_path / "in")) == "imagenet"
    assert dataset_kind(f"pool:{tmp_path / 'folders'}") == "pool"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dataset_kind(tmp_path / "missing")
