"""Training as a service: one run per grid point, each a task on a Dask cluster, and the table of results.

    python -m glimpse.train sweep --store stores/ucf11 --model regattn --grid lambda=1e-6,1e-5,1e-4 --grid blocks=2,4,6

Each point trains into SWEEP/<point>/ (a normal run directory). A task whose worker dies is run again
by the scheduler (Dask resubmits the tasks of a lost worker) and resumes from the run's last
checkpoint; running the same sweep again resumes or just reports every run. On a machine with GPUs
(``--device cuda``, or ``auto`` where torch sees one, or ``--gpus N``) the local cluster is one worker per
GPU, pinned to it, and every run asks for one; on an existing cluster (``--scheduler``) the runs ask for
the GPUs its workers declare, checked before anything is submitted. The table is printed and
saved as SWEEP/results.csv and SWEEP/results.md: with a two-name grid, rows are the first name's values
and columns the second's (as Quan et al.'s Tables 3 and 4), each cell the test accuracy in percent.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from glimpse.cluster import (
    GPU,
    ClusterError,
    ClusterPlan,
    check_gpu_workers,
    gpu_resources,
    parse_gpus,
    plan_cluster,
    visible_gpus,
    worker_device,
)
from glimpse.train.config import parse_model_args
from glimpse.train.run import RunDir, atomic_write_text

log = logging.getLogger("train")

#: grid names that set a TrainConfig field, with the field's type; any other name is a model setting
TRAIN_FIELDS = {"epochs": int, "batch_size": int, "seed": int, "frames": int, "stride": int, "patience": int,
                "lr": float, "val_fraction": float, "momentum": float, "optimizer": str, "aggregation": str,
                "split": str, "sampling": str, "clips_per_video": int, "steps": int, "shuffle_videos": int,
                "cache_dir": str, "lr_drop_step": int, "lr_drop_to": float}


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["lambda=1e-6,1e-5", "blocks=2,4"]`` -> {"lambda": ["1e-6", "1e-5"], "blocks": ["2", "4"]}, in order."""
    grid: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip()
        parts = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name or not parts:
            raise ValueError(f"--grid takes NAME=V1,V2,..., got {item!r}")
        if name in grid:
            raise ValueError(f"--grid {name} is given twice")
        grid[name] = parts
    if not grid:
        raise ValueError("a sweep needs at least one --grid NAME=V1,V2,...")
    return grid


def grid_points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, the first name varying slowest."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def point_name(point: dict[str, str]) -> str:
    """A folder name for a grid point, e.g. ``lambda=1e-05_blocks=4``."""
    return "_".join(re.sub(r"[^A-Za-z0-9.=+-]", "-", f"{k}={v}") for k, v in point.items())


def point_options(model: str, base: dict[str, Any], point: dict[str, str]) -> dict[str, Any]:
    """TrainConfig keyword arguments for one point: ``base`` with the point's values set (typed).

    ``lambda`` is the model's ``lam``; names that are not TrainConfig fields are model settings.
    """
    options = {**base, "model_args": dict(base.get("model_args", {}))}
    for name, text in point.items():
        field = name.replace("-", "_")
        if field in TRAIN_FIELDS:
            options[field] = TRAIN_FIELDS[field](text)
        else:
            options["model_args"].update(parse_model_args(model, [f"{name}={text}"]))
    return options


def sweep_cluster(device: str, gpus: str | int | None, workers: int | None, remote: bool, cores: int,
                  visible: Callable[[], int] = visible_gpus) -> tuple[ClusterPlan, int | None]:
    """The local cluster of a sweep and the GPUs each run asks for (None: one where the cluster declares GPUs).

    Locally, ``device`` "cuda", "auto" on a machine where torch sees GPUs, or ``gpus`` start one worker per
    GPU (all of them, or ``gpus``), pinned to it; otherwise ``workers`` CPU workers (default 2). On an
    existing cluster (``remote``) nothing starts here and this machine need not see CUDA: "cuda" asks each
    run for one GPU, "auto" for one where the cluster's workers declare GPUs, "cpu" for none.
    """
    count = parse_gpus(gpus)
    if count and device == "cpu":
        raise ClusterError("--gpus runs on CUDA devices; it does not go with --device cpu")
    if remote:
        if count:
            raise ClusterError("--gpus starts local workers; with --scheduler the cluster's own workers run the sweep")
        return ClusterPlan(workers or 2, 1), {"cpu": 0, "cuda": 1}.get(device)
    seen = visible() if device != "cpu" else 0
    if device == "cuda" or count or (device == "auto" and seen):
        return plan_cluster(None, count or -1, cores, seen, default_workers=seen), 1
    return plan_cluster(workers, None, cores, 0, default_workers=2), 0


def run_point(store: str, model: str, out: str, options: dict[str, Any], threads: int | None = None) -> dict:
    """One sweep task: train into ``out``, or resume the run already there; returns its result as a dict.

    A run on "cuda" trains on this worker's own device (:func:`glimpse.cluster.worker_device`).
    """
    import torch

    from glimpse.train.loop import resume_run, train_model

    if threads:
        torch.set_num_threads(threads)
    if options.get("device") == "cuda":
        options = {**options, "device": worker_device()}
    resumable = RunDir(out).exists  # a resubmitted task (its worker was lost) or a sweep run again
    result = resume_run(out, progress=False) if resumable else train_model(store, model, out, **options)
    return dataclasses.asdict(result)


def results_table(grid: dict[str, list[str]], rows: list[dict[str, Any]]) -> str:
    """Markdown: a two-name grid as a matrix of test scores (%), any other grid one row per point."""
    metric = next((r["metric"] for r in rows if "metric" in r), "accuracy")  # failed points have none
    names = list(grid)
    if len(names) == 2:
        first, second = names
        cells = {(r["point"][first], r["point"][second]): r for r in rows}
        lines = [f"test {metric} (%) | " + " | ".join(f"{second}={v}" for v in grid[second]),
                 "|".join(["---"] * (len(grid[second]) + 1))]
        for a in grid[first]:
            values = [f"{100 * cells[(a, b)]['test_score']:.1f}" if (a, b) in cells else "failed" for b in grid[second]]
            lines.append(f"{first}={a} | " + " | ".join(values))
        return "\n".join(f"| {line} |" if not line.startswith("---") else f"|{line}|" for line in lines)
    header = [*names, f"test {metric} (%)", "best val (%)", "best epoch", "epochs", "stopped"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        val = "n/a" if r.get("best_val_score") is None else f"{100 * r['best_val_score']:.1f}"
        values = [r["point"][n] for n in names]
        if "error" in r:
            values += ["failed", "", "", "", r["error"][:80]]
        else:
            values += [f"{100 * r['test_score']:.1f}", val, str(r["best_epoch"]), str(r["epochs"]), r["stopped"]]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def write_results(out: Path, grid: dict[str, list[str]], rows: list[dict[str, Any]]) -> str:
    """SWEEP/results.csv (one row per point) and SWEEP/results.md (the table); returns the table."""
    buffer = io.StringIO()
    columns = [*grid, "test_score", "test_accuracy", "best_val_score", "best_epoch", "epochs", "stopped", "run_dir",
               "error"]
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, **r["point"]})
    atomic_write_text(out / "results.csv", buffer.getvalue())
    table = results_table(grid, [r for r in rows if "error" not in r] if len(grid) == 2 else rows)
    atomic_write_text(out / "results.md", table + "\n")
    return table


def sweep(store: str, model: str, out: str | Path, grid: dict[str, list[str]], options: dict[str, Any], client,
          gpus_per_run: int | None = 0, threads: int | None = None) -> tuple[list[dict[str, Any]], str]:
    """Submit one run per grid point to ``client``, wait for all, write and return (rows, table).

    ``gpus_per_run`` > 0 asks for workers with that many "GPU" resources, and is refused in one line
    (:class:`glimpse.cluster.ClusterError`) before anything is submitted when no worker has them; None asks
    for one GPU where the cluster declares GPUs and trains on it. A failed run is reported in its row (with
    its error), not raised, so that the other points still make the table.
    """
    from distributed import as_completed

    if gpus_per_run is None:
        resources = gpu_resources(client)
    else:
        if gpus_per_run:
            check_gpu_workers(client, gpus_per_run, client.scheduler.address)
        resources = {GPU: gpus_per_run} if gpus_per_run else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    points = grid_points(grid)
    futures = {}
    for point in points:
        run_dir = str(out / point_name(point))
        opts = {**point_options(model, options, point), "progress": False}
        if resources:
            opts["device"] = "cuda"
        future = client.submit(run_point, store, model, run_dir, opts, threads, key=f"train-{point_name(point)}",
                               pure=False, resources=resources)
        futures[future] = (point, run_dir)
    rows = []
    for future in as_completed(futures):
        point, run_dir = futures[future]
        try:
            row = {**future.result(), "point": point}
            log.info("sweep: %s -> test %s %.3f", point_name(point), row["metric"], row["test_score"])
        except Exception as err:  # one broken point must not lose the others
            row = {"point": point, "run_dir": run_dir, "error": f"{type(err).__name__}: {err}"}
            log.error("sweep: %s failed: %s", point_name(point), row["error"])
        rows.append(row)
    order = {point_name(p): i for i, p in enumerate(points)}
    rows.sort(key=lambda r: order[point_name(r["point"])])
    return rows, write_results(out, grid, rows)
