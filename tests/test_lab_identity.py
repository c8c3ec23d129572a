"""A store is what its path says: another dataset, another split seed, other classes or changed source files never
share a store, under a lab root or under --out; verify --sources finds a source file changed since extraction."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY
from extraction import extract
from test_extract import REPO, TINY_OPTS

from glimpse.extract.api import manifest_digest, restrict_classes
from glimpse.extract.datasets import load_dataset
from glimpse.extract.synth import make_synthetic
from glimpse.store import open_store
from glimpse.store.verify import run_verify


@pytest.fixture(scope="module")
def other_seed(tmp_path_factory):
    """The tiny synthetic dataset made again with another seed: the same video ids, other pixels."""
    return make_synthetic(tmp_path_factory.mktemp("other") / "data", dataclasses.replace(TINY, seed=TINY.seed + 1))


def test_two_datasets_with_the_same_ids_get_two_stores_under_one_lab_root(tiny_synthetic, other_seed, dask_client,
                                                                          tmp_path):
    lab = tmp_path / "lab"
    first = extract("synthetic", str(tiny_synthetic), lab=str(lab), client=dask_client, **TINY_OPTS)
    second = extract("synthetic", str(other_seed), lab=str(lab), client=dask_client, **TINY_OPTS)
    ids = [v.id for v in open_store(first.store).videos]
    assert ids == [v.id for v in open_store(second.store).videos]  # the same ids ...
    assert second.store != first.store  # ... but other files: another store
    assert (first.done, second.done, second.skipped, second.by_others) == (12, 12, 0, 0)
    assert not first.failed and not second.failed
    a, b = open_store(first.store), open_store(second.store)
    assert all(v.status == "done" for v in b.videos)  # every video extracted here, none reused or left unrecorded
    assert not np.array_equal(a.read(ids[0], "rgb"), b.read(ids[0], "rgb"))
    again = extract("synthetic", str(other_seed), lab=str(lab), client=dask_client, **TINY_OPTS)
    assert again.store == second.store and again.skipped == 12  # the same dataset asked again: its own store


@pytest.mark.slow
def test_out_onto_another_datasets_store_is_refused_in_one_line(tiny_synthetic, other_seed, dask_client, tmp_path):
    out = tmp_path / "store"
    extract("synthetic", str(tiny_synthetic), str(out), client=dask_client, **TINY_OPTS)
    before = sorted(p.name for p in (out / "videos").iterdir())
    args = [sys.executable, "-m", "glimpse.extract", "--dataset", "synthetic", "--root", str(other_seed), "--out",
            str(out), "--workers", "1", "--quiet", *(f"--{k.replace('_', '-')}={v}" for k, v in TINY_OPTS.items())]
    refused = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and len(lines) == 1, refused.stderr[-2000:]
    assert str(out) in lines[0] and "another dataset" in lines[0], lines[0]
    assert sorted(p.name for p in (out / "videos").iterdir()) == before  # nothing written


def test_the_manifest_digest_follows_splits_labels_classes_and_files(tiny_synthetic, other_seed, tmp_path):
    base = load_dataset("synthetic", tiny_synthetic)
    printed = dataclasses.replace(base, videos=tuple(dataclasses.replace(v, fingerprint="x") for v in base.videos))
    digest = manifest_digest(printed)
    first, *rest = printed.videos
    swapped = {k: "test" if role == "train" else "train" for k, role in first.splits.items()}
    resplit = dataclasses.replace(first, splits=swapped)
    changed_file = dataclasses.replace(first, fingerprint="y")
    for video in (resplit, changed_file):
        assert manifest_digest(dataclasses.replace(printed, videos=(video, *rest))) != digest
    assert manifest_digest(restrict_classes(printed, printed.classes[:2])) != digest
    assert manifest_digest(dataclasses.replace(printed, videos=printed.videos)) == digest


@pytest.mark.slow
def test_classes_restrict_the_store_to_a_subset(tiny_synthetic, dask_client, tmp_path):
    dataset = load_dataset("synthetic", tiny_synthetic)
    chosen = (dataset.classes[2], dataset.classes[0])  # labels follow this order
    summary = extract("synthetic", str(tiny_synthetic), str(tmp_path / "s"), client=dask_client,
                      classes=chosen, **TINY_OPTS)
    store = open_store(summary.store)
    assert store.classes == chosen and summary.done == 8
    by_id = {v.id: dataset.classes[v.label] for v in dataset.videos}
    assert all(chosen[v.label] == by_id[v.id] for v in store.videos)
    args = [sys.executable, "-m", "glimpse.extract", "--dataset", "synthetic", "--root", str(tiny_synthetic),
            "--out", str(tmp_path / "t"), "--classes", "NoSuchClass", "--quiet"]
    refused = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "NoSuchClass" in refused.stderr and "Traceback" not in refused.stderr


def test_verify_sources_names_a_source_file_changed_since_extraction(tiny_synthetic, dask_client, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_synthetic, root)
    summary = extract("synthetic", str(root), str(tmp_path / "s"), client=dask_client, **TINY_OPTS)
    assert run_verify(summary.store, sources=True).ok
    victim = open_store(summary.store).videos[3]
    with open(victim.path, "ab") as f:
        f.write(b"\0" * 16)  # the same name, other bytes
    found = run_verify(summary.store, sources=True)
    assert [vid for vid, _ in found.bad] == [victim.id] and "changed since extraction" in found.bad[0][1]
    moved = tmp_path / "moved"
    shutil.move(root, moved)
    assert len(run_verify(summary.store, sources=True).bad) == 12  # every file missing where it was
    assert [vid for vid, _ in run_verify(summary.store, sources=True, root=str(moved)).bad] == [victim.id]
