"""Shared fixtures: a tiny synthetic dataset, a copy with the bad-input corpus in it, and a real Dask cluster."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import Case, add_corpus, corpus_ids

from extract.synth import SynthConfig, make_synthetic, write_video

#: Tiny but real: 3 classes x 4 clips of 10 frames at 64 x 64.
TINY = SynthConfig(classes=3, per_class=4, frames=10, size=64, seed=3)

@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """The synthetic dataset at TINY's size (read-only for tests: copy it before changing it)."""
    return make_synthetic(tmp_path_factory.mktemp("synthetic") / "data", TINY)


@pytest.fixture(scope="session")
def tiny_with_bad_files(tiny_synthetic, tmp_path_factory) -> Path:
    """A copy of the tiny dataset whose train list also names the whole bad-input corpus (tests/bad_inputs.py)."""
    root = tmp_path_factory.mktemp("bad") / "data"
    shutil.copytree(tiny_synthetic, root)
    add_corpus(root)
    return root


@pytest.fixture(scope="session")
def bad_corpus(tiny_with_bad_files) -> dict[str, Case]:
    """Video id -> corpus case, for the videos tiny_with_bad_files added."""
    return corpus_ids(tiny_with_bad_files)


@pytest.fixture(scope="session")
def dask_client():
    """A real LocalCluster: two worker processes on loopback, one thread each."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
    )
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="session")
def translating_video(tmp_path_factory) -> tuple[Path, tuple[int, int]]:
    """A textured 96 x 96 video whose content moves 3 px right and 2 px up per frame."""
    import cv2

    rng = np.random.default_rng(7)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (160, 160, 3)).astype(np.float32), (0, 0), 2.0)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    dx, dy = 3, -2
    # frame t shows the window at (row 30 - dy t, column 50 - dx t): content moves by (+dx, +dy) per frame
    frames = np.stack([texture[30 - dy * t : 126 - dy * t, 50 - dx * t : 146 - dx * t] for t in range(8)])
    return write_video(tmp_path_factory.mktemp("flow") / "translate.mp4", frames), (dx, dy)


def pytest_sessionfinish(session, exitstatus):
    """Write docs/reliability.md when reliability cases ran (a whole-suite run writes all of them)."""
    from reliability_log import RECORDS, write_report

    if RECORDS:
        write_report()
