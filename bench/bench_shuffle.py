"""The shuffle buffer, side by side in one run: shuffle-8 (clips shuffled inside groups of 8 videos, before) against
the default (a buffer of train.loader.SHUFFLE_BYTES, the whole training set here): the mix of videos and classes in
a batch, a dense epoch's time from the same store, the host bytes the loader copies against a plain window cutter
(the same batches), and the accuracy effect over 3 seeds on the synthetic dataset's extracted store. Issue 22's
"at most 1.2x today's time" is measured against the loader before the whole-set shuffle landed: the code of commit
:data:`PARENT` (checked out of git into a temporary folder) and today's each time a dense epoch from the same store
in a subprocess of its own, in turn.

The timing store is written directly (random ReLU-like float16 cubes) with long videos; the accuracy store is the
synthetic videos (decoys acting out the other classes) through the real extraction stage (random GoogLeNet).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.bench_loading import make_store
from glimpse.store import open_store
from glimpse.train.clips import role_videos
from glimpse.train.data import ClipDataset, FeatureReader, targets_for
from glimpse.train.loader import SHUFFLE_BYTES, EpochLoader
from glimpse.train.sampling import Windows

FULL = {"videos": 32, "frames": 160, "channels": 1024, "size": 7, "clip": 30, "batch": 128, "rounds": 2,
        "per_class": 12, "synth_frames": 48, "synth_size": 64, "T": 8, "train_batch": 32, "hidden": 32, "epochs": 4}
QUICK = {"videos": 8, "frames": 20, "channels": 16, "size": 4, "clip": 6, "batch": 8, "rounds": 1,
         "per_class": 2, "synth_frames": 12, "synth_size": 32, "T": 4, "train_batch": 4, "hidden": 8, "epochs": 1}
BUFFERS = {"shuffle-8 (--shuffle-videos 8)": 8, "whole-set shuffle (default)": 0}
SEEDS = (0, 1, 2)
#: the commit before the whole-set shuffle landed: the first parent of 640c192 ("Merge branch 'loader'")
PARENT = "d80fc33"
#: one process's first and second dense epoch (seconds, JSON on stdout), with whichever glimpse is on PYTHONPATH:
#: the parent's loader yields (cubes, targets) cut on the host, today's a Batch whose clips cubes() gathers
EPOCHS_SCRIPT = """
import json, sys, time
import torch
from glimpse.store import open_store
from glimpse.train.clips import role_videos
from glimpse.train.data import ClipDataset, FeatureReader, targets_for
from glimpse.train.loader import EpochLoader
from glimpse.train.sampling import Windows
torch.set_num_threads(1)
store = open_store(sys.argv[1])
videos = role_videos(store, "1", "train")
policy = Windows(int(sys.argv[2]))
dataset = ClipDataset(FeatureReader(store.path).open(videos, ["rgb"]), videos, ["rgb"], policy,
                      targets_for(videos, len(store.classes), False), None)
loader = EpochLoader(dataset, policy, seed=0, batch_size=int(sys.argv[3]), workers=0)
seconds = []
for number in (0, 1):
    loader.set_epoch(number)
    start = time.perf_counter()
    for batch in loader:
        cubes = batch.cubes() if hasattr(batch, "cubes") else batch[0]
    seconds.append(time.perf_counter() - start)
print(json.dumps(seconds))
"""


def epoch(loader: EpochLoader, number: int) -> tuple[int, int]:
    """One epoch, each batch's clips gathered as the model gathers them: (host bytes the loader copied, bytes a
    window cutter copies for the same batches)."""
    loader.set_epoch(number)
    held, copied, cut = set(), 0, 0
    for batch in loader:
        cut += sum(c.nbytes for c in batch.cubes())
        for frames, rows in batch.parts:
            copied += rows.nbytes + sum(f.nbytes for f in frames if id(f) not in held)
            held.update(id(f) for f in frames)
    return copied, cut


def timing(tmp: Path, shape: dict) -> dict[str, Any]:
    """Per buffer: medians of videos and classes per batch, seconds of a first and a second dense epoch (best of
    the rounds, taken in turn, each round a fresh loader), host bytes copied per epoch and a cutter's."""
    store = open_store(make_store(tmp / "store", shape))
    videos = role_videos(store, "1", "train")
    policy = Windows(shape["clip"])
    targets = targets_for(videos, len(store.classes), False)
    out: dict[str, dict[str, Any]] = {name: {"seconds": [[], []]} for name in BUFFERS}
    for _ in range(shape["rounds"]):
        for name, cap in BUFFERS.items():
            dataset = ClipDataset(FeatureReader(store.path).open(videos, ["rgb"]), videos, ["rgb"], policy, targets,
                                  None)
            loader = EpochLoader(dataset, policy, seed=0, batch_size=shape["batch"], workers=0, videos=cap)
            for number in (0, 1):
                start = time.perf_counter()
                out[name]["bytes"] = epoch(loader, number)
                out[name]["seconds"][number].append(time.perf_counter() - start)
            out[name]["mix"] = loader.mix(0)
            out[name]["groups"] = len(loader.plan(0))
            out[name]["batches"] = loader.batches
    return {"videos": len(videos), **out}


def parent_timing(tmp: Path, shape: dict) -> dict[str, list[list[float]]] | None:
    """Seconds of a first and a second dense epoch from the timing store (:func:`timing` wrote it), per round, with
    the loader of commit PARENT and with today's, each in a fresh process, taken in turn; None where git or the
    commit is not at hand (an installed copy)."""
    root = Path(__file__).resolve().parent.parent
    parent = tmp / "parent"
    parent.mkdir()
    archive = subprocess.run(["git", "-C", str(root), "archive", PARENT], capture_output=True)
    if archive.returncode:
        return None
    subprocess.run(["tar", "-x", "-C", str(parent)], input=archive.stdout, check=True)
    trees = {"before the whole-set shuffle (parent)": parent, "today's": root}
    out: dict[str, list[list[float]]] = {name: [[], []] for name in trees}
    for _ in range(shape["rounds"]):
        for name, tree in trees.items():
            done = subprocess.run([sys.executable, "-c", EPOCHS_SCRIPT, str(tmp / "store"), str(shape["clip"]),
                                   str(shape["batch"])], capture_output=True, text=True, check=True,
                                  env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree)
            for number, seconds in enumerate(json.loads(done.stdout.strip().splitlines()[-1])):
                out[name][number].append(seconds)
    return out


def ablation(tmp: Path, shape: dict) -> dict[str, Any]:
    """softattn on the synthetic dataset's extracted store, dense windows, per buffer and seed: (test accuracy,
    median distinct videos per batch)."""
    from distributed import Client, LocalCluster

    from glimpse.extract.api import FeatureRequest, RunOptions, extract_dataset
    from glimpse.extract.synth import SynthConfig, make_synthetic
    from glimpse.train.loop import train_model

    data = make_synthetic(tmp / "synth", SynthConfig(classes=4, per_class=shape["per_class"],
                                                    frames=shape["synth_frames"], size=112, seed=3))
    request = FeatureRequest("synthetic", str(data), weights="none", size=shape["synth_size"],
                             frames=shape["synth_frames"])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        assert not extract_dataset(request, RunOptions(out=str(tmp / "synth-store"), batch_size=16), client).failed
    out: dict[str, Any] = {}
    torch.set_num_threads(1)
    for name, cap in BUFFERS.items():
        for seed in SEEDS:
            run = tmp / f"run-{cap}-{seed}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = train_model(tmp / "synth-store", "softattn", run, epochs=shape["epochs"],
                                     batch_size=shape["train_batch"], frames=shape["T"], sampling="windows",
                                     lr=1e-3, seed=seed, workers=0, progress=False, val_fraction=0,
                                     shuffle_videos=cap, model_args={"hidden": shape["hidden"]})
            line = [e for e in (run / "events.log").read_text().splitlines() if "distinct videos" in e][-1]
            out.setdefault(name, []).append((result.test_accuracy, float(line.split("median ")[1].split()[0])))
    config = json.loads((tmp / f"run-0-{SEEDS[0]}" / "config.json").read_text())
    out["train videos"] = config["data"]["train"]
    return out


def run(quick: bool = False) -> str:
    """Markdown section: the shuffle buffer's mix, time, host bytes and accuracy, side by side."""
    shape = QUICK if quick else FULL
    tmp = Path(tempfile.mkdtemp(prefix="bench_shuffle_"))
    try:
        times = timing(tmp, shape)
        parent = parent_timing(tmp, shape)
        accuracy = ablation(tmp, shape)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    before, after = (times[n] for n in BUFFERS)
    rows = []
    for name in BUFFERS:
        t = times[name]
        first, second = (min(s) for s in t["seconds"])
        copied, cut = t["bytes"]
        rows.append(f"| {name} | {t['groups']} | {t['mix'][0]:g} | {t['mix'][1]:g} | {first:.2f} | {second:.2f} | "
                    f"{copied / 1e6:.1f} | {cut / 1e6:.1f} | {copied / cut:.3f} |")
    if parent is None:
        against = "The parent commit's loader could not be checked out (no git here): no comparison with it. "
    else:
        old, new = (parent[name] for name in parent)
        ratio = [min(new[i]) / min(old[i]) for i in (0, 1)]
        against = (f"Against the loader before the whole-set shuffle landed (commit {PARENT}, 8 videos per group, "
                   "clips cut on the host), same store and batches, each in its own process with 1 torch thread, "
                   f"best of {shape['rounds']}: first epoch {min(old[0]):.2f} s then, {min(new[0]):.2f} s today "
                   f"(**{ratio[0]:.2f}x**); second epoch {min(old[1]):.2f} s then, {min(new[1]):.2f} s today "
                   f"(**{ratio[1]:.2f}x**; a training set that is one group is read once and held: later epochs read "
                   "nothing). ")
    acc_rows = [f"| {name} | {' / '.join(f'{a:.3f}' for a, _ in accuracy[name])} | "
                f"{np.mean([a for a, _ in accuracy[name]]):.3f} | {' / '.join(f'{v:g}' for _, v in accuracy[name])} |"
                for name in BUFFERS]
    dims = f"{shape['channels']} x {shape['size']} x {shape['size']}"
    return "\n".join([
        "## Shuffle buffer: batches from the whole training set",
        "",
        f"{times['videos']} training videos of {shape['frames']} frames of {dims} float16 in 4 classes (written "
        f"directly), every {shape['clip']}-frame window at stride 1, batches of {shape['batch']} (softattn's), read "
        f"from the store (zstd, 0 workers: a thread reads the next group ahead); each batch's clips gathered from "
        f"the group's frames as the model gathers them (on the CPU here). The default buffer holds "
        f"{SHUFFLE_BYTES / 2**30:g} GiB of frames. Best of {shape['rounds']} rounds taken in turn, each a fresh "
        "loader. No GPU was lent: CPU numbers on a shared machine.",
        "",
        "| buffer | groups | median videos per batch | median classes per batch | first epoch s | second epoch s | "
        "host MB copied per epoch | a window cutter's MB | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        against + "The loader "
        f"copies {after['bytes'][0] / after['bytes'][1]:.3f} of the bytes a window cutter copies for the same batches "
        "(each frame once per epoch instead of once per window that holds it; the cutter is what the loader did "
        "before, and what the gather does on the training device now).",
        "",
        f"**Accuracy effect** (softattn, hidden {shape['hidden']}, {shape['epochs']} epochs of every "
        f"{shape['T']}-frame window, batches of {shape['train_batch']}, Adam 1e-3, no validation) on the synthetic "
        f"dataset ({4 * shape['per_class']} videos of {shape['synth_frames']} frames, decoys acting out the other "
        f"classes) extracted by a random GoogLeNet at {shape['synth_size']} px, {accuracy['train videos']} training "
        f"videos; test accuracy per training seed {', '.join(map(str, SEEDS))}:",
        "",
        "| buffer | test accuracy per seed | mean | median videos per batch per seed |",
        "|---|---|---|---|",
        *acc_rows,
    ])


if __name__ == "__main__":
    print(run(quick=True))
