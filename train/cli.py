"""Command line of the train stage (`python -m glimpse.train`).

    python -m glimpse.train --store stores/ucf11 --model regattn --out runs/ucf11-regattn [--set hidden=1024 ...]
    python -m glimpse.train --dataset ucf11 --model softattn          # the store found under --store-root by dataset
    python -m glimpse.train --resume runs/ucf11-regattn               # continue after an interruption
    python -m glimpse.train models                                    # every registered model and its defaults
    python -m glimpse.train sweep --store stores/ucf11 --model regattn --grid lambda=1e-5,1e-4 --grid blocks=2,4
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from glimpse.errors import Group
from glimpse.store.catalog import default_root


def find_store(dataset: str, root: str, backbone: str | None = None) -> str:
    """The one store of ``dataset`` (of ``backbone`` when given) under ``root`` (the store catalog), or a clear
    error naming the candidates."""
    from glimpse.store.catalog import resolve_store
    from glimpse.store.reader import StoreError

    try:
        return resolve_store(root, dataset, backbone).path
    except StoreError as err:
        raise click.UsageError(f"--dataset {dataset}: {err}") from None


def training_options(model: str, lam: float | None, blocks: int | None, sets: tuple[str, ...],
                     normalize: bool, cache_ram: str | None, quiet: bool, **plain) -> dict:
    """TrainConfig keyword arguments from the command line's options (None ones left to the defaults)."""
    from glimpse.train.config import ConfigError, parse_model_args
    from glimpse.train.data import parse_bytes

    try:
        model_args = parse_model_args(model, list(sets))
        if lam is not None:
            model_args.update(parse_model_args(model, [f"lam={lam!r}"]))
        if blocks is not None:
            model_args.update(parse_model_args(model, [f"blocks={blocks}"]))
        options = {k: v for k, v in plain.items() if v is not None}
        if cache_ram:
            options["cache_ram"] = parse_bytes(cache_ram)
    except (ConfigError, ValueError) as err:
        raise click.UsageError(str(err)) from None
    return {**options, "model_args": model_args, "normalize": normalize, "progress": not quiet}


@click.group(cls=Group, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"],
                                                            "show_default": True})
@click.option("--store", type=click.Path(),
              help="The feature store to train from; with --resume, where the run's store is now if it moved.")
@click.option("--dataset", help="Find the store of this dataset under --store-root instead of --store.")
@click.option("--store-root", default=default_root, show_default="$STORE_ROOT or stores/",
              help="Where --dataset looks for stores.")
@click.option("--backbone", help="With --dataset: the store of this backbone (when the dataset has several).")
@click.option("--model", help="A registered model (python -m glimpse.train models).")
@click.option("--out", type=click.Path(), help="The new run directory. [runs/<dataset>-<model>]")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this directory.")
@click.option("--split", help="Official split K of the dataset. [1]")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs to train. [30; 2,000 steps from 40 videos]")
@click.option("--batch-size", type=click.IntRange(min=1), help="Clips per step. [the model's paper, <= 1/8 epoch]")
@click.option("--lr", type=float, help="Learning rate. [the model's paper]")
@click.option("--optimizer", type=click.Choice(["adam", "adadelta", "sgd"]), help="[the model's paper]")
@click.option("--lambda", "lam", type=float, help="Attention penalty weight (the model's `lam`).")
@click.option("--blocks", type=click.IntRange(min=1), help="regattn: N x N group-sparsity blocks.")
@click.option("--seed", type=int, help="Random seed: the same seed gives the same metrics. [0]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="[auto]")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Any model setting, e.g. --set hidden=1024.")
@click.option("--sampling", type=click.Choice(["windows", "segments", "random", "spread"]),
              help="Clip policy: every window, Quan's segments, random windows, frames spread over the video. "
                   "[the model's paper]")
@click.option("--frames", type=click.IntRange(min=1), help="Clip length T in frames. [the model's paper]")
@click.option("--stride", type=click.IntRange(min=1),
              help="Frames between two clip starts: training stride s, segment spacing d. [the model's paper]")
@click.option("--clips-per-video", type=click.IntRange(min=0),
              help="Clips of a video per epoch: random windows drawn, or a random subset of the dense ones (0 all).")
@click.option("--steps", type=click.IntRange(min=0), help="Iteration budget: sets --epochs (rounded up). [0: off]")
@click.option("--shuffle-videos", type=click.IntRange(min=1), help="Videos whose clips are shuffled together. [8]")
@click.option("--aggregation", type=click.Choice(["mean", "vote"]), help="Video score from clips. [the model's]")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True),
              help="Held out by group. [0.15, or 0 where that is < 20 videos]")
@click.option("--patience", type=click.IntRange(min=0), help="Early stopping after N epochs, 0 never. [5]")
@click.option("--normalize/--no-normalize", default=True, help="Standardize channels with training statistics.")
@click.option("--norm-videos", type=click.IntRange(min=1), help="Videos the statistics are taken on. [256]")
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader worker processes (spawned). [2]")
@click.option("--cache-ram", help="Hold the store in RAM if it fits this budget, e.g. 8GB.")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Keep a decompressed copy of the run's videos here (a local disk), shared between runs.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), help="Also checkpoint every N steps. [0]")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def main(ctx: click.Context, store, dataset, store_root, backbone, model, out, resume, lam, blocks, sets, normalize,
         cache_ram, quiet, **plain) -> None:
    """Train an attention model from a feature store, or continue a run (--resume)."""
    if ctx.invoked_subcommand is not None:
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from glimpse.train.loop import resume_run, train_model

    if resume:
        changes = {k: v for k, v in plain.items() if v is not None}
        if cache_ram:
            from glimpse.train.data import parse_bytes

            changes["cache_ram"] = parse_bytes(cache_ram)
        if quiet:
            changes["progress"] = False
        result = resume_run(resume, store, **changes)
        click.echo(result.summary())
        return
    if not model:
        raise click.UsageError("--model is required (or --resume RUN_DIR); python -m glimpse.train models lists them")
    from glimpse.train.models import MODELS

    if model not in MODELS:
        raise click.UsageError(f"unknown model {model!r}; registered models: {', '.join(MODELS)}")
    if not store and not dataset:
        raise click.UsageError("give --store PATH or --dataset NAME")
    store = store or find_store(dataset, store_root, backbone)
    if out is None:
        from glimpse.store import open_store

        out = str(Path("runs") / f"{open_store(store).dataset}-{model}")
    options = training_options(model, lam, blocks, sets, normalize, cache_ram, quiet, **plain)
    result = train_model(store, model, out, **options)
    click.echo(result.summary())


@main.command("models")
def models_command() -> None:
    """List every registered model with its paper, equations and defaults."""
    from glimpse.train.models import MODELS  # imports torch: only when the command runs

    click.echo("\n\n".join(spec.describe() for spec in MODELS.values()))


@main.command("sweep")
@click.option("--store", required=True, type=click.Path(), help="The feature store every run trains from.")
@click.option("--model", required=True, help="A registered model.")
@click.option("--grid", "grids", multiple=True, required=True, metavar="NAME=V1,V2,...",
              help="Values of one setting (lambda, blocks, lr, hidden, ...); repeat for a grid.")
@click.option("--out", type=click.Path(), help="Folder of the sweep's runs and table. [runs/sweep-<dataset>-<model>]")
@click.option("--scheduler", help="A running Dask scheduler's address (or DASK_SCHEDULER_ADDRESS). [a LocalCluster]")
@click.option("--n-workers", type=click.IntRange(min=1), help="LocalCluster workers. [one per GPU, else 2]")
@click.option("--threads", type=click.IntRange(min=1), help="torch threads per run. [cores / workers]")
@click.option("--split", help="Official split K. [1]")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs per run. [30]")
@click.option("--batch-size", type=click.IntRange(min=1), help="Clips per step. [16]")
@click.option("--lr", type=float, help="Learning rate. [the model's paper]")
@click.option("--optimizer", type=click.Choice(["adam", "adadelta", "sgd"]), help="[the model's paper]")
@click.option("--seed", type=int, help="Random seed of every run. [0]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="cuda: one GPU per run.")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="A model setting shared by every run.")
@click.option("--frames", type=click.IntRange(min=1), help="Clip length T. [the model's paper]")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), help="[0.15]")
@click.option("--patience", type=click.IntRange(min=0), help="[5]")
def sweep_command(store, model, grids, out, scheduler, n_workers, threads, sets, device, **plain) -> None:
    """Train one run per grid point as tasks on a Dask cluster; print and save the table of results."""
    import os

    from glimpse.train.models import MODELS
    from glimpse.train.sweep import parse_grid, point_options, sweep

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if model not in MODELS:
        raise click.UsageError(f"unknown model {model!r}; registered models: {', '.join(MODELS)}")
    options = training_options(model, None, None, sets, True, None, True, **plain)
    options["workers"] = 0  # Dask worker processes are daemons: they may not start DataLoader workers
    try:
        grid = parse_grid(grids)
        point_options(model, options, dict(zip(grid, (v[0] for v in grid.values()), strict=True)))  # fail early
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    if out is None:
        from glimpse.store import open_store

        out = str(Path("runs") / f"sweep-{open_store(store).dataset}-{model}")
    out = str(Path(out).resolve())  # the tasks may run elsewhere: absolute paths only
    gpus = 1 if device == "cuda" else 0
    options["device"] = device
    from glimpse.cluster import ClusterError, dask_client, plan_cluster, visible_gpus

    try:  # with cuda, one worker per visible GPU, each pinned to its device
        plan = plan_cluster(None if gpus else n_workers, -1 if gpus else None, os.cpu_count() or 1,
                            visible_gpus() if gpus else 0, default_workers=n_workers or 2)
    except ClusterError as err:
        raise click.UsageError(str(err)) from None
    if not (scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")):  # an existing cluster's runs keep their threads
        threads = threads or plan.threads
    with dask_client(scheduler, plan) as client:
        rows, table = sweep(str(Path(store).resolve()), model, out, grid, options, client, gpus, threads)
    click.echo(table)
    failed = [r for r in rows if "error" in r]
    click.echo(f"sweep: {len(rows) - len(failed)}/{len(rows)} runs done -> {Path(out) / 'results.md'}")
    if failed:
        raise click.ClickException("; ".join(f"{r['run_dir']}: {r['error']}" for r in failed))
