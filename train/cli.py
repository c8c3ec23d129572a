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

from glimpse.choices import DEVICES, RegistryChoice
from glimpse.errors import Group, OptionError
from glimpse.store.catalog import default_root
from glimpse.train.config import ConfigError, describe_protocol
from glimpse.train.models import MODELS
from glimpse.train.options import config_options, config_values, model_settings


def find_store(dataset: str, root: str, backbone: str | None = None) -> str:
    """The one store of ``dataset`` (of ``backbone`` when given) under ``root`` (the store catalog), or a clear
    error naming the candidates."""
    from glimpse.store.catalog import resolve_store
    from glimpse.store.reader import StoreError

    try:
        return resolve_store(root, dataset, backbone).path
    except StoreError as err:
        raise click.UsageError(f"--dataset {dataset}: {err}") from None


#: The TrainConfig fields train takes as options, and the fewer a sweep shares with every run.
TRAIN_FIELDS = ("split", "epochs", "batch_size", "lr", "optimizer", "seed", "device", "sampling", "frames", "stride",
                "clips_per_video", "steps", "shuffle_videos", "aggregation", "val_fraction", "patience",
                "standardize", "norm_videos", "workers", "cache_dir", "checkpoint_every", "amp", "preset")
SWEEP_FIELDS = ("split", "epochs", "batch_size", "lr", "optimizer", "seed", "frames", "val_fraction", "patience")


def model_settings_or_usage(model: str, sets: tuple[str, ...], lam: float | None = None,
                            blocks: int | None = None) -> dict:
    """:func:`glimpse.train.options.model_settings`, its errors usage errors."""
    try:
        return model_settings(model, sets, lam, blocks)
    except ConfigError as err:
        raise OptionError(str(err)) from None


@click.group(cls=Group, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"],
                                                            "show_default": True})
@click.option("--store", type=click.Path(),
              help="The feature store to train from; with --resume, where the run's store is now if it moved.")
@click.option("--dataset", help="Find the store of this dataset under --store-root instead of --store.")
@click.option("--store-root", default=default_root, show_default="$STORE_ROOT or stores/",
              help="Where --dataset looks for stores.")
@click.option("--backbone", help="With --dataset: the store of this backbone (when the dataset has several).")
@click.option("--model", type=RegistryChoice(MODELS), help="A registered model (python -m glimpse.train models).")
@click.option("--out", type=click.Path(), help="The new run directory. [runs/<dataset>-<model>]")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this directory.")
@click.option("--lambda", "lam", type=float, help="Attention penalty weight (the model's `lam`).")
@click.option("--blocks", type=click.IntRange(min=1), help="regattn: N x N group-sparsity blocks.")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Any model setting, e.g. --set hidden=1024.")
@config_options(TRAIN_FIELDS)
@click.option("--normalize/--no-normalize", default=True, help="Standardize channels with training statistics.")
@click.option("--cache-ram", help="Hold the store in RAM if it fits this budget, e.g. 8GB.")
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
        result = resume_run(resume, store, **config_values(plain, cache_ram, quiet))
        click.echo(result.summary())
        return
    if not model:
        raise click.UsageError("--model is required (or --resume RUN_DIR); python -m glimpse.train models lists them")
    if not store and not dataset:
        raise click.UsageError("give --store PATH or --dataset NAME")
    store = store or find_store(dataset, store_root, backbone)
    if out is None:
        from glimpse.store import open_store

        out = str(Path("runs") / f"{open_store(store).dataset}-{model}")
    options = {**config_values(plain, cache_ram, quiet), "normalize": normalize,
               "model_args": model_settings_or_usage(model, sets, lam, blocks)}
    result = train_model(store, model, out, **options)
    click.echo(result.summary())


@main.command("models")
def models_command() -> None:
    """List every registered model with its paper, equations and defaults."""
    click.echo("\n\n".join(f"{spec.describe()}\n{describe_protocol(spec)}" for spec in MODELS.values()))


@main.command("sweep")
@click.option("--store", required=True, type=click.Path(), help="The feature store every run trains from.")
@click.option("--model", required=True, type=RegistryChoice(MODELS), help="A registered model.")
@click.option("--grid", "grids", multiple=True, required=True, metavar="NAME=V1,V2,...",
              help="Values of one setting (lambda, blocks, lr, hidden, ...); repeat for a grid.")
@click.option("--out", type=click.Path(), help="Folder of the sweep's runs and table. [runs/sweep-<dataset>-<model>]")
@click.option("--scheduler", help="A running Dask scheduler's address (or DASK_SCHEDULER_ADDRESS). [a LocalCluster]")
@click.option("--n-workers", type=click.IntRange(min=1), help="LocalCluster workers. [one per GPU, else 2]")
@click.option("--gpus", default=None, help="N or all: a local worker per GPU, pinned to it. [all with cuda or auto]")
@click.option("--threads", type=click.IntRange(min=1), help="torch threads per run. [cores / workers]")
@click.option("--device", type=RegistryChoice(DEVICES), default="auto", help="cuda: one GPU per run.")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="A model setting shared by every run.")
@config_options(SWEEP_FIELDS)
def sweep_command(store, model, grids, out, scheduler, n_workers, gpus, threads, sets, device, **plain) -> None:
    """Train one run per grid point as tasks on a Dask cluster; print and save the table of results."""
    import os

    from glimpse.train.sweep import parse_grid, point_options, sweep, sweep_cluster

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    options = {**config_values(plain, quiet=True), "model_args": model_settings_or_usage(model, sets)}
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
    options["device"] = device
    from glimpse.cluster import dask_client
    from glimpse.store.remote import is_url

    remote = bool(scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS"))
    plan, gpus_per_run = sweep_cluster(device, gpus, n_workers, remote, os.cpu_count() or 1)
    if not remote:  # an existing cluster's runs keep their threads
        threads = threads or plan.threads
    with dask_client(scheduler, plan) as client:
        where = store if is_url(store) else str(Path(store).resolve())  # the tasks may run elsewhere
        rows, table = sweep(where, model, out, grid, options, client, gpus_per_run, threads)
    click.echo(table)
    failed = [r for r in rows if "error" in r]
    click.echo(f"sweep: {len(rows) - len(failed)}/{len(rows)} runs done -> {Path(out) / 'results.md'}")
    if failed:
        raise click.ClickException("; ".join(f"{r['run_dir']}: {r['error']}" for r in failed))


@main.command("flownet")
@click.option("--store", required=True, type=click.Path(), help="A store holding raw flow (--streams ...,flow,...).")
@click.option("--out", required=True, type=click.Path(), help="The state_dict to write (its log beside it, .log).")
@click.option("--split", help="The split whose training videos it trains on. [1]")
@click.option("--batch-size", type=click.IntRange(min=2), help="Stacks per iteration. [64]")
@click.option("--iterations", type=click.IntRange(min=1),
              help="Iterations instead of the rule 20,000 x (256 / batch) x min(1, training videos / 9,537).")
@click.option("--flow-stack", type=click.IntRange(min=1), help="L flows per stack. [the store's flow_stack, else 10]")
@click.option("--weights", help="RGB weights of the cross-modality start: imagenet | none | PATH. [the store's]")
@click.option("--seed", type=int, help="Seed of the draws and the classifier. [0]")
@click.option("--device", type=RegistryChoice(DEVICES), help="cpu or cuda. [cpu]")
def flownet_command(**options) -> None:
    """Fine-tune the stacked-flow CNN on a store's raw flow (HAN's recipe); write what --flow-weights takes."""
    from glimpse.train.flownet import finetune_flownet, request_of

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        result = finetune_flownet(request_of(**options))
    except ConfigError as err:
        raise OptionError(str(err)) from None
    click.echo(result.summary())
