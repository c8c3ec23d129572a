"""bench/gpu_check.sh end to end in its dry mode (tiny sizes on the CPU): the same script a GPU machine runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_in_its_dry_mode(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    env.pop("WHEELS", None)
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr + "".join(p.read_text() for p in out.glob("*.txt"))
    assert (out / "status.txt").read_text() == "ok\n"
    tests = (out / "cuda_tests.txt").read_text()
    assert "skipped" in tests and "failed" not in tests and "error" not in tests.lower(), tests  # no CUDA here
    results = json.loads((out / "gpu_measure.json").read_text())
    assert results["dry"] and results["extraction"]["frames"] > 0
    assert results["extraction"]["bare_frames_per_s"] > 0 and results["extraction"]["whole_frames_per_s"] > 0
    assert results["training"]["steps_per_s"] > 0
    assert "frames/s" in (out / "gpu_measure.md").read_text()
    bad = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--wet"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "usage:" in bad.stderr
