"""A store nobody may write to (immutable, even for root) still trains and evaluates."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from extraction import extract

from glimpse.evaluate.report import evaluate_run
from glimpse.store import open_store
from glimpse.store.verify import verify_store
from glimpse.train.loop import train_model

FAST = {"epochs": 2, "batch_size": 4, "frames": 6, "workers": 0, "progress": False, "model_args": {"hidden": 16}}


@pytest.fixture
def immutable_store(tiny_synthetic, dask_client, tmp_path):
    """A freshly extracted store with `chattr +i` on every file and folder: no process, root included, can write."""
    out = tmp_path / "store"
    extract("synthetic", str(tiny_synthetic), str(out), client=dask_client, backbone="googlenet",
                    weights="none", size=64, frames=6, batch_size=8)
    shutil.rmtree(out / ".glimpse-claims")  # extraction's lock files: a finished store needs none
    if shutil.which("chattr") is None or subprocess.run(["chattr", "-R", "+i", str(out)]).returncode != 0:
        pytest.skip("this file system has no immutable attribute (chattr +i)")
    try:
        probe = out / "probe"
        with pytest.raises(PermissionError):
            probe.write_text("x")  # proves the store really cannot be written, even by root
        yield out
    finally:
        subprocess.run(["chattr", "-R", "-i", str(out)], check=True)


def test_an_immutable_store_trains_and_evaluates(immutable_store, tmp_path):
    assert sum(v.status == "done" for v in open_store(immutable_store).videos) == 12
    assert verify_store(immutable_store) == []
    result = train_model(immutable_store, "softattn", tmp_path / "run", **FAST)
    assert result.epochs == 2
    metrics = evaluate_run(tmp_path / "run", figures=1)
    assert metrics["videos"] == 6 and metrics["localization"]["videos"] == 6
