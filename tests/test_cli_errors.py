"""Every command line answers a wrong invocation with one line naming the path or option: no traceback, exit != 0.

Most cases run in-process through click's CliRunner (an exception that escapes the command is the traceback a
user would see, so each case asserts that none escaped); three cases also run as real processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from glimpse.cli import main as glimpse_main
from glimpse.evaluate.cli import main as evaluate_main
from glimpse.extract.cli import main as extract_main
from glimpse.store.cli import main as store_main
from glimpse.store.layout import video_key
from glimpse.store.schema import VideoRecord
from glimpse.store.writer import create_store
from glimpse.train.cli import main as train_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    """A real (tiny, hand-written) store, the same store claiming another schema, a plain file, an empty folder."""
    base = tmp_path_factory.mktemp("cli")
    records = [VideoRecord(id=f"c{c}/v{i}", path=f"c{c}/v{i}.avi", labels=(c,), splits={"1": "train" if i else "test"})
               for c in range(2) for i in range(3)]
    store = base / "stores" / "tiny"
    writer = create_store(store, dataset="tiny", classes=["a", "b"], records=records, config={"size": 32},
                          streams={"rgb": {"frame_shape": [4, 2, 2]}})
    rng = np.random.default_rng(0)
    for record in records:
        writer.write_video(video_key(record.id), {"rgb": rng.random((3, 4, 2, 2))},
                           {"n_frames": 3, "frame_indices": [0, 1, 2], "timestamps": [0.0, 0.1, 0.2]})
    other = base / "other-schema"
    other.mkdir()
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["glimpse"]["schema_version"] = 0
    (other / "zarr.json").write_text(json.dumps(meta))
    a_file = base / "a-file"
    a_file.write_text("not a store\n")
    empty = base / "not-a-run"
    empty.mkdir()
    return {"store": store, "other": other, "file": a_file, "empty": empty, "missing": base / "missing",
            "root": base / "stores"}


#: (id, command, arguments with {placeholders} from ``places``, what the one line must name)
CASES = [
    ("extract-missing-root", extract_main, ["--dataset", "ucf11", "--root", "{missing}", "--out", "{empty}/x"],
     "{missing}"),
    ("extract-unknown-dataset", extract_main, ["--dataset", "nosuch", "--root", "{empty}", "--out", "{empty}/x"],
     "nosuch"),
    ("extract-unknown-backbone", extract_main, ["--dataset", "synthetic", "--root", "{empty}", "--out",
                                                "{empty}/x", "--backbone", "alexnet"], "backbone"),
    ("store-info-a-file", store_main, ["info", "{file}"], "{file}"),
    ("store-info-other-schema", store_main, ["info", "{other}"], "schema version 0"),
    ("store-verify-missing", store_main, ["verify", "{missing}"], "{missing}"),
    ("store-export-unknown-stream", store_main, ["export", "{store}", "{empty}/x.h5", "--stream", "audio"], "audio"),
    ("store-export-unknown-split", store_main, ["export", "{store}", "{empty}/x.h5", "--split", "9"], "'9'"),
    ("store-import-not-hdf5", store_main, ["import", "{file}", "{empty}/y", "--dataset", "x"], "{file}"),
    ("store-ls-missing", store_main, ["ls", "{missing}"], "{missing}"),
    ("train-unknown-model", train_main, ["--store", "{store}", "--model", "nosuch"], "nosuch"),
    ("train-bad-set", train_main, ["--store", "{store}", "--model", "softattn", "--set", "bogus=1"], "bogus"),
    ("train-bad-set-value", train_main, ["--store", "{store}", "--model", "softattn", "--set", "hidden=many"],
     "hidden"),
    ("train-a-file-as-store", train_main, ["--store", "{file}", "--model", "softattn", "--out", "{empty}/r"],
     "{file}"),
    ("train-unknown-split", train_main, ["--store", "{store}", "--model", "softmax", "--split", "9", "--out",
                                         "{empty}/r", "--workers", "0", "--quiet"], "9"),
    ("train-resume-not-a-run", train_main, ["--resume", "{empty}"], "{empty}"),
    ("train-dataset-not-under-root", train_main, ["--dataset", "ucf11", "--model", "softattn", "--store-root",
                                                  "{root}"], "ucf11"),
    ("evaluate-run-not-a-run", evaluate_main, ["--run", "{empty}"], "{empty}"),
    ("evaluate-compare-one-run", evaluate_main, ["compare", "--run", "{empty}"], "at least two runs"),
    ("table-missing-store", glimpse_main, ["table", "--store", "{missing}"], "{missing}"),
    ("table-bad-set", glimpse_main, ["table", "--store", "{store}", "--set", "bogus=1"], "--set"),
    ("table-dataset-not-under-root", glimpse_main, ["table", "--dataset", "nosuch", "--store-root", "{root}"],
     "nosuch"),
    ("protocol-unknown-model", glimpse_main, ["protocol", "--store", "{store}", "--model", "nosuch"], "nosuch"),
    ("glimpse-store-other-schema", glimpse_main, ["store", "verify", "{other}"], "{other}"),
    ("glimpse-train-missing-store", glimpse_main, ["train", "--store", "{missing}", "--model", "softattn"],
     "{missing}"),
]


def _fill(text: str, places: dict[str, Path]) -> str:
    return text.format(**{k: str(v) for k, v in places.items()})


@pytest.mark.parametrize(("command", "args", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_invocation_is_one_line_naming_the_path_or_option(places, command, args, named):
    result = CliRunner().invoke(command, [_fill(a, places) for a in args])
    escaped = result.exception if not isinstance(result.exception, SystemExit) else None
    assert escaped is None, f"a traceback: {type(escaped).__name__}: {escaped}"
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output
    assert _fill(named, places) in result.output, result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: ")


def test_debug_shows_the_traceback(places):
    result = CliRunner().invoke(store_main, ["info", "--debug", str(places["other"])])
    assert type(result.exception).__name__ == "StoreError"  # left to Python, which prints the traceback


#: Real processes, as the user's shell sees them (train and evaluate import torch for ~3 s each: in-process above).
PROCESSES = [
    (["glimpse.extract", "--dataset", "ucf11", "--root", "{missing}", "--out", "{empty}/x"], "{missing}"),
    (["glimpse.store", "info", "{file}"], "{file}"),
    (["glimpse", "store", "verify", "{other}"], "schema version 0"),
]


@pytest.mark.parametrize(("args", "named"), PROCESSES, ids=[p[0][0] for p in PROCESSES])
def test_each_entry_point_exits_cleanly_in_a_real_process(places, args, named):
    proc = subprocess.run([sys.executable, "-m", *(_fill(a, places) for a in args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and _fill(named, places) in lines[0], proc.stderr


def test_set_means_a_model_setting_in_table_as_in_train():
    """``glimpse table --set hidden=8`` sets the model field on every model that has it (softmax has no hidden
    size), typed by the model's config as ``train --set`` does; a setting no model has is refused."""
    from glimpse.cli import _model_settings
    from glimpse.train.options import model_settings

    per_model = _model_settings(["softmax", "softattn"], ("hidden=8", "dropout=0.25"))
    assert per_model == {"softmax": {"model_args": {"dropout": 0.25}},
                         "softattn": {"model_args": {"hidden": 8, "dropout": 0.25}}}
    assert model_settings("softattn", ("hidden=8", "dropout=0.25")) == per_model["softattn"]["model_args"]


@pytest.mark.parametrize("command", [train_main, glimpse_main], ids=["train", "table"])
def test_store_root_is_honoured_by_every_command_that_finds_stores(places, command, tmp_path):
    args = (["--dataset", "tiny", "--model", "softattn", "--set", "bogus=1"] if command is train_main
            else ["table", "--dataset", "tiny", "--no-train", "--runs", str(tmp_path)])
    result = CliRunner().invoke(command, args, env={"STORE_ROOT": str(places["missing"])})
    assert result.exit_code != 0 and str(places["missing"]) in result.output, result.output
    found = CliRunner().invoke(command, args, env={"STORE_ROOT": str(places["root"])})
    if command is train_main:  # found through $STORE_ROOT, the run then stops at the bad --set before training
        assert found.exit_code == 2 and "no setting 'bogus'" in found.output, found.output
    else:  # found through $STORE_ROOT, an empty table: no run exists and --no-train trains none
        assert found.exit_code == 0 and f"tiny: test split, store {places['store'].name}" in found.output, found.output
