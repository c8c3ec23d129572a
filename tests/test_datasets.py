"""Dataset adapters: the real official split files, and small fake trees of tiny real videos."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from pathlib import Path

import av
import numpy as np
import pytest
from fake_datasets import (
    HMDB_CLASSES,
    SMALL_TREES,
    SPLIT_FILES,
    UCF_CLASSES,
    copy_reference,
    make_hollywood2,
    make_olympic,
    make_synthetic,
    make_ucf11,
    make_ucf_layout,
    make_ucfsports,
    reference_dir,
    touch,
    ucf_lists,
    write_text,
)

from glimpse.extract.datasets import DATASETS, Dataset, DatasetError, load_dataset, read_boxes, resolve_inside, ucf11
from glimpse.store.schema import TEST, TRAIN, UNUSED

REFERENCE = reference_dir()
needs_reference = pytest.mark.skipif(
    REFERENCE is None, reason="official split files not found: no shared/reference beside the repo, "
                              "and $GLIMPSE_REFERENCE is unset")


# --------------------------------------------------------------------------- real official split files

@pytest.fixture(scope="module")
def ucf101_reference(tmp_path_factory) -> Dataset:
    """UCF-101 from the real ucfTrainTestlist, with an empty placeholder at every listed video path."""
    root = tmp_path_factory.mktemp("ucf101")
    names = ["classInd.txt"] + [f"{kind}list0{k}.txt" for kind in ("train", "test") for k in (1, 2, 3)]
    copy_reference(REFERENCE / "ucf101", root / "ucfTrainTestlist", names)
    listed = set()
    for name in names[1:]:
        listed.update(line.split()[0] for line in (REFERENCE / "ucf101" / name).read_text().splitlines() if line)
    for folder in {rel.split("/")[0] for rel in listed}:
        (root / "UCF-101" / folder).mkdir(parents=True)
    for rel in listed:
        (root / "UCF-101" / rel).touch()
    return load_dataset("ucf101", root)


@needs_reference
def test_ucf101_reference_counts_and_classes(ucf101_reference):
    ds = ucf101_reference
    class_index = (REFERENCE / "ucf101" / "classInd.txt").read_text().split()
    assert ds.classes == tuple(class_index[1::2]) and len(ds.classes) == 101
    assert ds.splits == ("1", "2", "3") and len(ds.videos) == 13320 and ds.missing == ()
    for split, (n_train, n_test) in {"1": (9537, 3783), "2": (9586, 3734), "3": (9624, 3696)}.items():
        train, test = ds.split(split, TRAIN), ds.split(split, TEST)
        assert (len(train), len(test)) == (n_train, n_test)
        assert not {v.id for v in train} & {v.id for v in test}
        assert ds.split(split, UNUSED) == []  # every video is in exactly one of train / test


@needs_reference
def test_ucf101_reference_labels_match_class_index(ucf101_reference):
    by_id = {v.id: v for v in ucf101_reference.videos}
    for k in (1, 2, 3):
        for line in (REFERENCE / "ucf101" / f"trainlist0{k}.txt").read_text().splitlines():
            rel, label = line.split()
            assert by_id[rel.rsplit(".", 1)[0]].labels == (int(label) - 1,)
    quirk = by_id["HandstandPushups/v_HandStandPushups_g01_c01"]
    assert ucf101_reference.classes[quirk.label] == "HandstandPushups"


@needs_reference
def test_ucf101_reference_groups(ucf101_reference):
    groups = defaultdict(set)
    for video in ucf101_reference.videos:
        folder, name = video.id.split("/")
        assert video.group == folder + "/" + re.search(r"_(g\d\d)_c\d\d$", name).group(1)
        groups[folder].add(video.group)
    assert all(len(found) == 25 for found in groups.values()) and len(groups) == 101
    for split in ucf101_reference.splits:  # the official splits are group-wise
        train = {v.group for v in ucf101_reference.split(split, TRAIN)}
        assert not train & {v.group for v in ucf101_reference.split(split, TEST)}


@pytest.fixture(scope="module")
def hmdb51_reference(tmp_path_factory) -> Dataset:
    """HMDB-51 from the real 153 split files, with an empty placeholder at every listed video path."""
    root = tmp_path_factory.mktemp("hmdb51")
    names = sorted(p.name for p in (REFERENCE / "hmdb51").glob("*_test_split*.txt"))
    copy_reference(REFERENCE / "hmdb51", root / "testTrainMulti_7030_splits", names)
    for name in names:
        folder = root / name.rsplit("_test_split", 1)[0]
        folder.mkdir(exist_ok=True)
        for line in (REFERENCE / "hmdb51" / name).read_text().splitlines():
            (folder / line.split()[0]).touch()
    return load_dataset("hmdb51", root)


@needs_reference
def test_hmdb51_reference_counts_and_classes(hmdb51_reference):
    ds = hmdb51_reference
    class_list = (REFERENCE / "hmdb51" / "class_list.txt").read_text().split()
    assert ds.classes == tuple(sorted(class_list)) and len(ds.classes) == 51
    assert len(ds.videos) == len({v.id for v in ds.videos}) == 6766 and ds.missing == ()
    for split in ("1", "2", "3"):
        counts = Counter(v.splits[split] for v in ds.videos)
        assert counts == {TRAIN: 3570, TEST: 1530, UNUSED: 1666}
        per_class = Counter((v.label, v.splits[split]) for v in ds.videos)
        assert all(per_class[label, TRAIN] == 70 and per_class[label, TEST] == 30 for label in range(51))
    for video in ds.videos:
        assert video.id.split("/")[0] == ds.classes[video.label] and video.group is None


# --------------------------------------------------------------------------- every adapter on a small real tree

@pytest.mark.parametrize("name", list(DATASETS))
def test_small_tree_loads(name, tmp_path):
    ds = load_dataset(name, SMALL_TREES[name](tmp_path / name))
    assert ds.name == name and ds.videos and ds.missing == ()
    assert ds.root == tmp_path / name
    for video in ds.videos:
        assert Path(video.path).is_file() and Path(video.path).is_relative_to(ds.root)
        assert not Path(video.id).is_absolute() and not Path(video.id).suffix
        assert set(video.splits) == set(ds.splits) and all(0 <= lab < len(ds.classes) for lab in video.labels)
    for split in ds.splits:
        parts = [ds.split(split, role) for role in (TRAIN, TEST, UNUSED)]
        assert sum(map(len, parts)) == len(ds.videos) and parts[0] and parts[1]
    with av.open(ds.videos[0].path) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4


@pytest.mark.parametrize("name", list(DATASETS))
def test_missing_root_is_named(name, tmp_path):
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "absent"))):
        load_dataset(name, tmp_path / "absent")


@pytest.mark.parametrize("name", list(DATASETS))
def test_empty_root_names_what_was_expected(name, tmp_path):
    with pytest.raises(DatasetError, match=r"expected .* at " + re.escape(str(tmp_path))):
        load_dataset(name, tmp_path)


def test_unknown_dataset_lists_known_names(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'ucf102'") as err:
        load_dataset("ucf102", tmp_path)
    assert all(name in str(err.value) for name in DATASETS)


@pytest.mark.parametrize("name", list(SPLIT_FILES))
@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd"])
def test_split_file_paths_outside_root_are_rejected(name, bad, tmp_path):
    root = SMALL_TREES[name](tmp_path / name)
    relative, template = SPLIT_FILES[name]
    with (root / relative).open("a") as file:
        file.write(template.format(path=bad) + "\n")
    with pytest.raises(DatasetError, match=re.escape(relative.split("/")[-1])) as err:
        load_dataset(name, root)
    assert bad in str(err.value)


MISSING_SPLIT_FILES = [
    ("ucf101", "ucfTrainTestlist/testlist02.txt"),
    ("ucf101", "ucfTrainTestlist/classInd.txt"),
    ("hmdb51", "testTrainMulti_7030_splits/wave_test_split3.txt"),
    ("hollywood2", "ClipSets/Kiss_test.txt"),
    ("olympic", "test/vault.txt"),
    ("synthetic", "ucfTrainTestlist/testlist01.txt"),
    ("synthetic", "synthetic.json"),
]


@pytest.mark.parametrize(("name", "relative"), MISSING_SPLIT_FILES)
def test_missing_split_file_is_named(name, relative, tmp_path):
    root = SMALL_TREES[name](tmp_path / name)
    (root / relative).unlink()
    with pytest.raises(DatasetError, match=re.escape(f"at {root / relative}, but it does not exist")):
        load_dataset(name, root)


def test_listed_but_absent_videos_are_kept_and_reported(tmp_path, caplog):
    lists = ucf_lists()
    absent = sorted(lists[1]["train"])[:7]
    root = make_ucf_layout(tmp_path, lists, UCF_CLASSES, absent=set(absent))
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("ucf101", root)
    ids = sorted(rel.rsplit(".", 1)[0] for rel in absent)
    assert ds.missing == tuple(ids) and len(ds.videos) == 18
    assert {v.id for v in ds.videos if not Path(v.path).exists()} == set(ids)
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "7 of 18" in warning and all(i in warning for i in ids[:5]) and ids[5] not in warning


# --------------------------------------------------------------------------- shared pieces

def test_resolve_inside_keeps_paths_in_root(tmp_path):
    source = tmp_path / "list.txt"
    assert resolve_inside(tmp_path, "a/b.avi", source) == tmp_path / "a" / "b.avi"
    assert resolve_inside(tmp_path, "a/../b.avi ", source) == tmp_path / "b.avi"
    for bad in ("../x.avi", "a/../../x.avi", "/etc/passwd", f"../{tmp_path.name}2/x.avi", ".", ""):
        with pytest.raises(DatasetError, match=re.escape(f"{source}, line 3")):
            resolve_inside(tmp_path, bad, source, 3)


def test_dataset_split_rejects_unknown_names(tmp_path):
    ds = load_dataset("hollywood2", make_hollywood2(tmp_path))
    with pytest.raises(DatasetError, match="no split '2'"):
        ds.split("2", TRAIN)
    with pytest.raises(DatasetError, match="role"):
        ds.split("1", "validation")


def test_read_boxes_synthetic_json(tmp_path):
    path = tmp_path / "v.boxes.json"
    path.write_text(json.dumps({"width": 64, "height": 64, "fps": 25, "boxes": [[1, 2, 3, 4], None, [0, 0, 64, 64]]}))
    boxes = read_boxes(path)
    assert boxes.dtype == np.float32 and boxes.shape == (3, 4)
    np.testing.assert_array_equal(boxes[[0, 2]], [[1, 2, 3, 4], [0, 0, 64, 64]])
    assert np.isnan(boxes[1]).all()
    path.write_text(json.dumps({"boxes": [[1, 2, 3]]}))
    with pytest.raises(DatasetError, match="frame 0"):
        read_boxes(path)
    with pytest.raises(DatasetError, match="does not exist"):
        read_boxes(tmp_path / "absent.boxes.json")


def test_read_boxes_ucfsports_gt_folder(tmp_path):
    gt = make_ucfsports(tmp_path) / "Diving-Side" / "001" / "gt"
    boxes = read_boxes(gt)
    assert boxes.dtype == np.float32 and boxes.shape == (4, 4)
    np.testing.assert_array_equal(boxes[[0, 1, 3]], [[10, 20, 40, 60], [0, 20, 40, 60], [5, 6, 12, 14]])
    assert np.isnan(boxes[2]).all()


def test_read_boxes_gt_counts_frames_from_the_first_jpg(tmp_path):
    folder = tmp_path / "Walk-Front" / "001"
    for frame in (70133, 70134, 70135):
        touch(folder / f"4456-16_{frame}.jpg")
    write_text(folder / "gt" / "4456-16_70134.tif.txt", ["1 2 3 4"])
    boxes = read_boxes(folder / "gt")
    assert boxes.shape == (2, 4) and np.isnan(boxes[0]).all()
    np.testing.assert_array_equal(boxes[1], [1, 2, 4, 6])
    write_text(folder / "gt" / "4456-16_70100.tif.txt", ["1 2 3 4"])
    with pytest.raises(DatasetError, match="before the first frame"):
        read_boxes(folder / "gt")


# --------------------------------------------------------------------------- one dataset at a time

@pytest.fixture(scope="module")
def ucf11_root(tmp_path_factory) -> Path:
    return make_ucf11(tmp_path_factory.mktemp("ucf11"), clips_per_group=2)


def test_ucf11_records_and_group_splits(ucf11_root):
    ds = load_dataset("ucf11", ucf11_root)
    assert ds.classes == ucf11.CLASSES and ds.splits == ("1", "2", "3", "4", "5")
    assert len(ds.videos) == 11 * 25 * 2  # Annotation folders and notes.txt are not videos
    first = ds.videos[0]
    assert first.id == "basketball/v_shooting_01/v_shooting_01_01" and first.group == "basketball/01"
    for split in ds.splits:
        roles = defaultdict(set)
        for video in ds.videos:
            assert video.group.split("/")[0] == ds.classes[video.label]
            roles[video.group].add(video.splits[split])
        assert all(len(found) == 1 for found in roles.values())  # a group never straddles train and test
        per_class = Counter((group.split("/")[0], role.pop()) for group, role in roles.items())
        assert all(per_class[name, TRAIN] == 15 and per_class[name, TEST] == 10 for name in ds.classes)


def test_ucf11_splits_are_seeded(ucf11_root):
    def groups(ds: Dataset) -> list[frozenset[str]]:
        return [frozenset(v.group for v in ds.split(split, TRAIN)) for split in ds.splits]

    seed0 = groups(ucf11.load(ucf11_root))
    assert groups(load_dataset("ucf11", ucf11_root, seed=0)) == seed0
    assert groups(ucf11.load(ucf11_root, seed=1)) != seed0
    assert len(set(seed0)) == 5  # the five splits differ


def test_ucf11_rejects_a_stray_group_folder(tmp_path):
    root = make_ucf11(tmp_path)
    (root / "diving" / "extras").mkdir()
    with pytest.raises(DatasetError, match=re.escape(str(root / "diving" / "extras"))):
        load_dataset("ucf11", root)


def test_ucf101_small_tree_parses_labels_groups_and_crlf(tmp_path):
    ds = load_dataset("ucf101", make_ucf_layout(tmp_path, ucf_lists(), UCF_CLASSES))
    assert ds.classes == tuple(UCF_CLASSES)
    video = {v.id: v for v in ds.videos}["HandstandPushups/v_HandStandPushups_g02_c01"]
    assert video.label == 1 and video.group == "HandstandPushups/g02"
    assert video.splits == {"1": TRAIN, "2": TEST, "3": TRAIN}


def test_ucf101_label_disagreeing_with_folder_is_rejected(tmp_path):
    root = make_ucf_layout(tmp_path, ucf_lists(), UCF_CLASSES)
    with (root / "ucfTrainTestlist" / "trainlist03.txt").open("a") as file:
        file.write("YoYo/v_YoYo_g01_c01.avi 1\r\n")
    with pytest.raises(DatasetError, match=r"trainlist03.txt, line 13: label 1 disagrees"):
        load_dataset("ucf101", root)


def test_hmdb51_small_tree_roles(tmp_path):
    ds = load_dataset("hmdb51", SMALL_TREES["hmdb51"](tmp_path))
    assert ds.classes == tuple(HMDB_CLASSES)
    video = {v.id: v for v in ds.videos}["wave/wave_clip_1"]
    assert video.label == 1 and video.splits == {"1": TRAIN, "2": TEST, "3": TRAIN}
    assert {v.splits["1"] for v in ds.videos if v.id.endswith("_3")} == {UNUSED}


def test_hollywood2_multilabel(tmp_path):
    ds = load_dataset("hollywood2", make_hollywood2(tmp_path))
    assert ds.multilabel and ds.splits == ("1",) and len(ds.classes) == 12
    clip = {v.id: v for v in ds.videos}["actioncliptrain00002"]
    assert [ds.classes[i] for i in clip.labels] == ["HugPerson", "Kiss"] and clip.splits == {"1": TRAIN}
    assert {v.id for v in ds.split("1", TEST)} == {"actioncliptest00001", "actioncliptest00002"}


@pytest.mark.parametrize(("clips", "message"), [
    ({"a": ("train", {"Run"}), "b": ("test", set())}, "marked 1 in no action"),
    ({"a": ("train", {"Run"}), "b": ("test", {"Eat"})}, None),
])
def test_hollywood2_rejects_unlabeled_and_doubly_listed_clips(clips, message, tmp_path):
    root = make_hollywood2(tmp_path, clips)
    if message is None:  # list clip "a" in a test set too
        message = "in both train and test"
        with (root / "ClipSets" / "Eat_test.txt").open("a") as file:
            file.write("a  1\n")
    with pytest.raises(DatasetError, match=message):
        load_dataset("hollywood2", root)


def test_ucfsports_classes_boxes_and_missing_video(tmp_path, caplog):
    root = make_ucfsports(tmp_path)
    (root / "Lifting" / "001").mkdir()  # a folder of frames without its .avi
    ds = load_dataset("ucfsports", root)
    assert len(ds.classes) == 10 and ds.missing == ("Lifting/001",) and "Lifting/001" in caplog.text
    by_id = {v.id: v for v in ds.videos}
    golf = [v for v in ds.videos if v.id.startswith("Golf-Swing-")]
    assert len(golf) == 2 and {ds.classes[v.label] for v in golf} == {"Golf-Swing"}
    diving = by_id["Diving-Side/001/diving-side_001"]
    assert diving.boxes == str(root / "Diving-Side" / "001" / "gt")
    assert by_id["Walk-Front/001/walk-front_001"].boxes is None


def test_ucfsports_split_is_stratified_and_seeded(tmp_path):
    root = make_ucfsports(tmp_path, {"Walk-Front": 8, "Kicking-Front": 2, "Kicking-Side": 2, "Lifting": 1})

    def test_ids(seed: int) -> set[str]:
        return {v.id for v in load_dataset("ucfsports", root, seed=seed).split("1", TEST)}

    ids = test_ids(0)
    per_class = Counter(i.split("/")[0].split("-")[0] for i in ids)
    assert per_class == {"Walk": 2, "Kicking": 1}  # round(8/4), round(4/4), round(1/4)
    assert test_ids(0) == ids and any(test_ids(seed) != ids for seed in range(1, 6))


def test_olympic_suffixes_missing_and_seq(tmp_path, caplog):
    root = make_olympic(tmp_path, suffixes={"bowl_b": ".mp4", "vault_b": None})
    ds = load_dataset("olympic", root)
    assert ds.classes == ("bowling", "vault") and ds.missing == ("vault/vault_b",) and "vault/vault_b" in caplog.text
    by_id = {v.id: v for v in ds.videos}
    assert by_id["bowling/bowl_b"].path.endswith("bowl_b.mp4") and by_id["bowling/bowl_c"].splits == {"1": TEST}
    seq_root = make_olympic(tmp_path / "seq", suffixes={"bowl_a": ".seq", "vault_a": ".seq"})
    with pytest.raises(DatasetError, match="Norpix .seq") as err:
        load_dataset("olympic", seq_root)
    assert str(seq_root / "bowling" / "bowl_a.seq") in str(err.value)


def test_synthetic_boxes_match_decoded_frames(tmp_path):
    ds = load_dataset("synthetic", make_synthetic(tmp_path))
    assert ds.splits == ("1",) and len(ds.videos) == 18
    video = ds.videos[0]
    assert video.boxes == video.path[: -len(".mp4")] + ".boxes.json"
    with av.open(video.path) as container:
        n_frames = sum(1 for _ in container.decode(video=0))
    boxes = read_boxes(video.boxes)
    assert boxes.shape == (n_frames, 4) and not np.isnan(boxes).any()


def test_synthetic_reads_optional_splits(tmp_path):
    ds = load_dataset("synthetic", make_synthetic(tmp_path, splits=(1, 2)))
    assert ds.splits == ("1", "2")
    (tmp_path / "ucfTrainTestlist" / "testlist02.txt").unlink()
    with pytest.raises(DatasetError, match="testlist02.txt"):
        load_dataset("synthetic", tmp_path)


def test_generator_output_loads(tiny_synthetic):
    """The contract with extract/synth.py: what the generator writes, this adapter reads (conftest fixture)."""
    ds = load_dataset("synthetic", tiny_synthetic)
    assert ds.missing == () and ds.videos and ds.split("1", TRAIN) and ds.split("1", TEST)
    video = ds.videos[0]
    with av.open(video.path) as container:
        n_frames = sum(1 for _ in container.decode(video=0))
    assert read_boxes(video.boxes).shape == (n_frames, 4)


def test_ucf11_reads_only_the_classes_asked_for_without_the_others_folders(ucf11_root, tmp_path):
    """A lab trying two classes copies only their folders: ``--classes`` reads those, and the splits are the ones
    the whole dataset draws (the other classes' folders need not exist)."""
    import shutil

    from glimpse.extract.api import restrict_classes

    root = tmp_path / "two"
    for name in ("biking", "diving"):
        shutil.copytree(ucf11_root / name, root / name)
    with pytest.raises(DatasetError, match="basketball"):
        load_dataset("ucf11", root)
    part = restrict_classes(load_dataset("ucf11", root, classes=("diving", "biking")), ("diving", "biking"))
    whole = {v.id: v for v in load_dataset("ucf11", ucf11_root).videos}
    assert part.classes == ("diving", "biking") and len(part.videos) == 2 * 25 * 2
    assert all(v.splits == whole[v.id].splits and part.classes[v.label] == v.id.split("/")[0] for v in part.videos)
