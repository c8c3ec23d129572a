"""Shared fixtures (a tiny synthetic dataset, a copy with the bad-input corpus in it, a heavier one, a real Dask
cluster) and the session hooks that write docs/reliability.md after a complete run asked for it with
``--reliability-report`` (``make reliability``; tests/reliability_log.py): an ordinary run leaves the tree as it was.

The suite runs on the CPU, where its exactness tests and thresholds hold: CUDA is hidden from the test
process, its subprocesses and Dask workers (``CUDA_VISIBLE_DEVICES=""``) unless the run selects the
``cuda`` marker (``pytest -m cuda``); a ``cuda`` test is skipped where torch then sees no device.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import Case, add_corpus, corpus_ids
from reliability_log import MARKER, RECORDS, blockers, unmarked_recorders, write_report

from glimpse.extract.synth import SynthConfig, make_synthetic
from glimpse.media.encode import write_video

#: Dask workers sample their threads' stacks every 10 ms for the dashboard's profile, which no test reads; the
#: workers of every cluster the tests start (inheriting this environment) leave it off.
os.environ.setdefault("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", "False")

#: Tiny but real: 3 classes x 4 clips of 10 frames at 64 x 64.
TINY = SynthConfig(classes=3, per_class=4, frames=10, size=64, seed=3)

#: Enough work (24 videos x 16 frames; tests/test_reliability.py's HEAVY_OPTS extract them at 112 px) that a
#: kill or a reader lands in the middle of an extraction.
HEAVY = SynthConfig(classes=3, per_class=8, frames=16, size=64, seed=11)


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """The synthetic dataset at TINY's size (read-only for tests: copy it before changing it)."""
    return make_synthetic(tmp_path_factory.mktemp("synthetic") / "data", TINY)


@pytest.fixture(scope="session")
def heavy(tmp_path_factory) -> Path:
    """The synthetic dataset at HEAVY's size (read-only for tests)."""
    return make_synthetic(tmp_path_factory.mktemp("heavy") / "data", HEAVY)


@pytest.fixture(scope="session")
def heavy_reference(heavy, dask_client, tmp_path_factory) -> Path:
    """The heavy dataset extracted by one uninterrupted run with the CLI runs' torch thread count (workers=1), what
    the crash and concurrency tests' stores must equal (read-only)."""
    from extraction import HEAVY_OPTS, extract

    out = tmp_path_factory.mktemp("reference") / "heavy"
    assert not extract("synthetic", str(heavy), str(out), client=dask_client, workers=1, **HEAVY_OPTS).failed
    return out


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


@pytest.fixture(autouse=True)
def threads_left_as_found(request):
    """A test that changes torch's or OpenCV's thread count in this process puts it back: every later test would
    otherwise run at another speed (and another conv summation order)."""
    import cv2
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads()
    yield
    after = torch.get_num_threads(), cv2.getNumThreads()
    if after != before:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
        pytest.fail(f"{request.node.nodeid} left (torch, OpenCV) threads at {after}, found {before}")


@pytest.fixture
def worker_threads():
    """For a test that runs a worker's task in this process (glimpse.extract.pipeline.worker_setup pins torch's and
    OpenCV's threads): puts both back afterwards."""
    import cv2
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads()
    yield
    torch.set_num_threads(before[0])
    cv2.setNumThreads(before[1])


def selects_cuda(markexpr: str) -> bool:
    """Whether a ``-m`` expression asks for the cuda tests (``cuda``, ``cuda or slow``; not ``not cuda``)."""
    return "cuda" in markexpr and "not cuda" not in markexpr


def pytest_configure(config):
    """Hide CUDA before torch initialises it, unless this run selects the cuda tests."""
    if not selects_cuda(config.option.markexpr or ""):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def pytest_runtest_setup(item):
    """A cuda test needs a device torch sees."""
    if item.get_closest_marker("cuda"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device: run `pytest -m cuda` on a machine with one")


#: What this session saw of the reliability cases: node ids collected with the marker, whether every test file
#: was collected, how many items were deselected, node id -> passed so far, and why no report was written.
SEEN: dict = {"marked": set(), "whole": False, "deselected": 0, "ok": {}, "blockers": None}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    """Note every reliability case and test file collected, before -k / -m / --deselect leave some out."""
    SEEN["marked"] = {item.nodeid for item in items if item.get_closest_marker(MARKER)}
    collected = {Path(item.path).resolve() for item in items}
    every_file = all(path.resolve() in collected for path in Path(__file__).parent.glob("test_*.py"))
    SEEN["whole"] = every_file and not any("::" in str(arg) for arg in config.args)


def pytest_deselected(items):
    """Count what -k, -m and --deselect left out: such a run is partial."""
    SEEN["deselected"] += len(items)


def pytest_runtest_logreport(report):
    """A test passed when its setup, call and teardown all did (a skip is no pass)."""
    ok = SEEN["ok"]
    if report.when == "call":
        ok[report.nodeid] = ok.get(report.nodeid, True) and report.passed
    elif not report.passed:
        ok[report.nodeid] = False


def pytest_addoption(parser):
    parser.addoption("--reliability-report", action="store_true",
                     help="Rewrite docs/reliability.md after a complete run in which every reliability case passed.")


def pytest_sessionfinish(session, exitstatus):
    """Rewrite docs/reliability.md, when asked, only after a complete run in which every reliability case passed."""
    passed = {node for node, good in SEEN["ok"].items() if good}
    SEEN["blockers"] = blockers(SEEN["whole"], SEEN["deselected"], SEEN["marked"], passed)
    if not session.config.getoption("--reliability-report"):
        SEEN["blockers"].insert(0, "not asked for (make reliability, or pytest --reliability-report)")
    elif not SEEN["blockers"]:
        write_report()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say whether docs/reliability.md was written, and why not."""
    if SEEN["blockers"] is None or not (SEEN["marked"] or RECORDS):
        return
    if SEEN["blockers"]:
        terminalreporter.write_line(f"docs/reliability.md left untouched: {'; '.join(SEEN['blockers'])}")
    else:
        terminalreporter.write_line(f"docs/reliability.md written: {len(RECORDS)} rows from {len(SEEN['marked'])} "
                                    "reliability cases")
    unmarked = unmarked_recorders(SEEN["marked"])
    if unmarked:
        terminalreporter.write_line(f"reliability: record() called from tests without @pytest.mark.{MARKER}: "
                                    f"{', '.join(unmarked)}", yellow=True)
