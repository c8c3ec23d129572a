"""The stages meet only where the design says: grep-level checks over the source folders.

    extract -> store <- train <- evaluate;  glimpse.media and glimpse.errors beside them, importing no stage;
    glimpse.experiments (train, then evaluate) and the console group glimpse.cli above them all, imported by none.

Evaluation evaluates runs that exist: of the training stage it uses only what loads and predicts a saved run.

Only store/ knows where things live inside a store (its Zarr paths and attribute names): everyone else goes
through ``Store`` / ``StoreWriter`` methods.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: folder -> the stages its modules may not import (``cli`` is the console group glimpse/cli.py)
FORBIDDEN_IMPORTS = {
    "extract": ("train", "evaluate", "experiments", "cli"),
    "store": ("extract", "train", "evaluate", "experiments", "cli"),
    "train": ("extract", "evaluate", "experiments", "cli"),
    "evaluate": ("extract", "experiments", "cli"),
    "glimpse/media": ("extract", "store", "train", "evaluate", "experiments", "cli"),
}

#: All that evaluate/ may import of train/: loading and predicting a saved run, the model registry, the metric
#: helpers, the config's errors. Training (loop, run, setup, sweep, cli, data ...) is glimpse/experiments.py's.
EVALUATE_USES_OF_TRAIN = ("glimpse.train.predict", "glimpse.train.models", "glimpse.train.metrics",
                          "glimpse.train.config")

#: The calls that train a model (train/loop.py, train/sweep.py, glimpse/experiments.py).
TRAINING_CALLS = re.compile(r"\b(train_model|resume_run|run_sweep|ensure_trained|comparison_table|run_protocol)\b")

#: (file, module) imports that cross a boundary on purpose: the store CLI's repair hands the videos it reset to the
#: extraction stage's API (store's library modules import no stage); fine-tuning the temporal CNN trains the very
#: network extraction's flow_stack stream runs (its builder, input scaling and stacking are one definition).
EXEMPT = {("store/cli.py", "glimpse.extract.api"), ("train/flownet.py", "glimpse.extract.flow_stack")}

#: What naming a store's insides looks like: its layout constants, its metadata files, raw Zarr group access.
ZARR_PATHS = re.compile(r"VIDEOS_GROUP|VIDEO_ATTR|ROOT_ATTR|zarr\.json|[\"']videos/|zarr\.open|open_group")

#: Folders that must read and write stores only through store/'s API. train/ joins once its data path reads
#: through Store methods only (the line to add: "train",).
OUTSIDE_STORE = ("extract", "evaluate", "glimpse", "train")


#: The stage folders at the repository root; glimpse/<stage> is a symbolic link to each.
STAGES = ("extract", "store", "train", "evaluate")


def _sources(folder: str) -> list[Path]:
    """The folder's Python files, each once: glimpse/'s links to the stage folders are the stages' own files."""
    files = sorted(path for path in (REPO / folder).rglob("*.py")
                   if not any(parent.is_symlink() for parent in path.parents))
    assert files, f"no Python files under {folder}/"
    return files


def _imports(path: Path) -> list[str]:
    """Every module a file imports (``import a.b`` and ``from a.b import c``, at any indentation)."""
    found = []
    for line in path.read_text().splitlines():
        match = re.match(r"\s*(?:from\s+([\w.]+)\s+import|import\s+([\w.]+))", line)
        if match:
            found.append(match.group(1) or match.group(2))
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN_IMPORTS))
def test_a_stage_imports_only_what_the_design_allows(folder):
    banned = FORBIDDEN_IMPORTS[folder]
    offenders = [f"{path.relative_to(REPO)} imports {module}" for path in _sources(folder)
                 for module in _imports(path)
                 if any(module == f"glimpse.{stage}" or module.startswith(f"glimpse.{stage}.") for stage in banned)
                 and (str(path.relative_to(REPO)), module) not in EXEMPT]
    assert not offenders, "\n".join(offenders)


def _bare_stage_imports(path: Path) -> list[str]:
    """Imports of a stage folder by its bare name (``from store.reader import ...``): a second copy of the module."""
    return [f"{path.relative_to(path.parents[1])} imports {module}" for module in _imports(path)
            if module.split(".")[0] in STAGES]


def test_no_module_imports_a_stage_folder_by_its_bare_name():
    offenders = [offence for folder in (*STAGES, "glimpse", "tests", "bench") for path in _sources(folder)
                 for offence in _bare_stage_imports(path)]
    assert not offenders, "\n".join(offenders)


def test_a_stage_folder_imported_by_its_bare_name_refuses():
    """From the repository root the folders are importable by their bare names: each refuses, so an editor's
    suggestion of ``from store.reader import StoreError`` fails at once instead of catching nothing later."""
    for stage in STAGES:
        result = subprocess.run([sys.executable, "-c", f"import {stage}"], cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 1 and "import it by that name" in result.stderr, (stage, result.stderr[-300:])
        assert f"glimpse.{stage}" in result.stderr.splitlines()[-1]


def _training_in(path: Path) -> list[str]:
    """Where a file imports training code evaluation may not use, or names a call that trains."""
    found = [f"{path.name} imports {module}" for module in _imports(path)
             if (module == "glimpse.train" or module.startswith("glimpse.train."))
             and not any(module == m or module.startswith(f"{m}.") for m in EVALUATE_USES_OF_TRAIN)]
    return found + [f"{path.name}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
                    if TRAINING_CALLS.search(line)]


def test_evaluation_trains_nothing():
    offenders = [offence for path in _sources("evaluate") for offence in _training_in(path)]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("folder", OUTSIDE_STORE)
def test_nothing_outside_store_names_zarr_paths(folder):
    offenders = [f"{path.relative_to(REPO)}:{n}: {line.strip()}" for path in _sources(folder)
                 for n, line in enumerate(path.read_text().splitlines(), 1) if ZARR_PATHS.search(line)]
    assert not offenders, "\n".join(offenders)


def test_the_checks_see_a_violation(tmp_path):
    """The import matcher and the Zarr-path pattern catch what they are meant to (a check that cannot fail is none)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from glimpse.extract.decode import decode_video\n    return root['videos/' + k]\n")
    assert "glimpse.extract.decode" in _imports(bad)
    bare = tmp_path / "pkg" / "bare.py"
    bare.parent.mkdir()
    bare.write_text("import glimpse.store\n\ndef f():\n    from store.reader import StoreError\n    return 1\n")
    assert _bare_stage_imports(bare) == ["pkg/bare.py imports store.reader"]
    assert ZARR_PATHS.search(bad.read_text())
    trains = tmp_path / "trains.py"
    trains.write_text("from glimpse.train.predict import load_run\n\ndef f(s):\n    from glimpse.train import loop\n"
                      "    return loop.train_model(s, 'softattn', 'runs/x')\n")
    assert [offence.split(":")[0] for offence in _training_in(trains)] == ["trains.py imports glimpse.train",
                                                                          "trains.py"]


def test_one_atomic_write():
    """Files that must never be seen half-written go through glimpse.files (temporary file, fsync, rename)."""
    renames = re.compile(r"os\.replace|\.rename\(")
    offenders = [f"{path.relative_to(REPO)}:{n}" for folder in ("extract", "store", "train", "evaluate", "glimpse")
                 for path in _sources(folder) if path != REPO / "glimpse" / "files.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1) if renames.search(line)]
    assert not offenders, "\n".join(offenders)


def test_the_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    from glimpse.files import atomic_write_bytes, atomic_write_text

    target = atomic_write_text(tmp_path / "deep" / "result.json", "old\n")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # fails while writing the temporary file
    assert target.read_text() == "old\n" and sorted(p.name for p in target.parent.iterdir()) == ["result.json"]
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n" and len(list(target.parent.iterdir())) == 1
