"""Command line of the evaluation stage.

    python -m glimpse.evaluate --run RUN_DIR [--split test]          metrics, confusion, localisation, attention figures
    python -m glimpse.evaluate compare --run A --run B [--name ..]   two runs' attention side by side (PNG, GIF, MP4)
    python -m glimpse.evaluate table --dataset NAME [--runs runs/]   every registered model on one store, one table
    python -m glimpse.evaluate protocol --dataset NAME --model NAME  every fold of the dataset's protocol, mean and std
"""

from __future__ import annotations

import os
from typing import Any

import click
from glimpse.errors import Group
from glimpse.store.catalog import default_root


def _store_path(store: str | None, dataset: str | None, store_root: str) -> str:
    """--store as given, or the one store of --dataset under --store-root (a clear error when several match)."""
    from glimpse.store import StoreError
    from glimpse.store.catalog import resolve_store

    if store:
        return store
    if not dataset:
        raise click.UsageError("give --store PATH or --dataset NAME")
    try:
        return resolve_store(store_root, dataset).path
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc


STORE_OPTIONS = [
    click.option("--store", default=None, help="The feature store."),
    click.option("--dataset", default=None, help="Pick the store of this dataset under --store-root."),
    click.option("--store-root", default=default_root, show_default="$STORE_ROOT or stores/"),
    click.option("--epochs", default=None, type=int, help="Epochs for runs trained here. [the training default]"),
    click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE",
                 help="A model setting for runs trained here, as in train (e.g. --set hidden=64)."),
]


def store_options(command):
    for option in reversed(STORE_OPTIONS):
        command = option(command)
    return command


def _model_settings(models: list[str], assignments: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """--set as in train: model name -> {"model_args": ...} for each model, each setting applied where the
    model has it; a usage error for a model that is not registered or a setting that no model has."""
    from glimpse.train.config import ConfigError, parse_model_args
    from glimpse.train.models import MODELS

    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise click.BadParameter(f"unknown model {unknown[0]!r}; registered models: {', '.join(MODELS)}",
                                 param_hint="--models/--model")
    per_model: dict[str, dict[str, Any]] = {m: {"model_args": {}} for m in models}
    for assignment in assignments:
        errors = []
        for model in models:
            try:
                per_model[model]["model_args"].update(parse_model_args(model, [assignment]))
            except ConfigError as err:
                errors.append(str(err))
        if len(errors) == len(models):
            raise click.BadParameter(errors[0] if errors else "no model to set it on", param_hint=f"--set {assignment}")
    return per_model


@click.group(cls=Group, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--run", "run_dir", type=click.Path(file_okay=False), help="The run directory to evaluate.")
@click.option("--split", "role", default="test", show_default=True, help="Which videos of the run's split.")
@click.option("--figures", default=4, show_default=True, help="Videos to draw attention strips and GIFs for.")
@click.option("--checkpoint", "which", default="best", show_default=True, type=click.Choice(["best", "last"]))
@click.pass_context
def main(ctx: click.Context, run_dir: str | None, role: str, figures: int, which: str) -> None:
    """Evaluate a trained run (metrics, confusion, attention localisation, attention figures)."""
    if ctx.invoked_subcommand is not None:
        return
    if run_dir is None:
        raise click.UsageError("give --run RUN_DIR, or a sub-command (table, protocol)")
    from glimpse.evaluate.report import EVALUATION_DIR, evaluate_run
    from glimpse.train.config import ConfigError

    try:
        metrics = evaluate_run(run_dir, role, figures, which)
    except (ConfigError, FileNotFoundError, ValueError) as exc:  # a broken or hostile run dir, names the file
        raise click.ClickException(str(exc)) from exc
    line = f"{metrics['model']} on {metrics['videos']} {role} videos: top-1 {metrics['top1']:.3f}, " \
           f"top-{metrics['top5_k']} {metrics['top5']:.3f}"
    if metrics.get("map") is not None:
        line += f", mAP {metrics['map']:.3f}"
    place = metrics.get("localization")
    if place and place.get("mass") is not None:
        line += (f"; attention in box {place['mass']:.3f} (uniform {place['uniform_mass']:.3f}), pointing "
                 f"{place['hit_rate']:.3f} (uniform {place['uniform_hit_rate']:.3f})")
    click.echo(line)
    click.echo(f"written to {os.path.join(run_dir, EVALUATION_DIR)}")


@main.command("table")
@store_options
@click.option("--runs", "run_root", default="runs/", show_default=True, help="Where runs are found or trained.")
@click.option("--models", default=None, help="Comma-separated models. [every registered model the store feeds]")
@click.option("--no-train", is_flag=True, help="Only collect existing runs; train none.")
def table(store: str | None, dataset: str | None, store_root: str, epochs: int | None, assignments: tuple[str, ...],
          run_root: str, models: str | None, no_train: bool) -> None:
    """Collect (or train) every registered model on one store and write the comparison table."""
    from glimpse.evaluate.report import comparison_table
    from glimpse.train.models import MODELS

    chosen = [m.strip() for m in models.split(",")] if models else None
    per_model = _model_settings(chosen or list(MODELS), assignments)
    path = _store_path(store, dataset, store_root)
    click.echo(comparison_table(path, run_root, chosen, train_missing=not no_train, per_model=per_model,
                                **({} if epochs is None else {"epochs": epochs})))


@main.command("protocol")
@store_options
@click.option("--model", required=True, help="A registered model.")
@click.option("--out", default=None, help="Where the fold runs go. [runs/protocol-<dataset>-<model>]")
def protocol(store: str | None, dataset: str | None, store_root: str, epochs: int | None,
             assignments: tuple[str, ...], model: str, out: str | None) -> None:
    """Train and evaluate MODEL on every fold of the dataset's protocol; report mean and std."""
    from glimpse.evaluate.report import protocol_text, run_protocol
    from glimpse.store import open_store

    settings = _model_settings([model], assignments)[model]
    if epochs is not None:
        settings["epochs"] = epochs
    path = _store_path(store, dataset, store_root)
    out = out or os.path.join("runs", f"protocol-{open_store(path).dataset}-{model}")
    click.echo(protocol_text(run_protocol(path, model, out, **settings)))


@main.command("compare")
@click.option("--run", "run_dirs", multiple=True, required=True, type=click.Path(file_okay=False),
              help="A run directory; give it two or more times.")
@click.option("--name", "names", multiple=True, help="A label per --run, in order. [the run folders' names]")
@click.option("--out", default=None, help="Where the figures go. [next to the first run: compare-<A>-vs-<B>]")
@click.option("--split", "role", default="test", show_default=True, help="Which videos of the runs' split.")
@click.option("--videos", default=4, show_default=True, help="How many videos to draw.")
@click.option("--checkpoint", "which", default="best", show_default=True, type=click.Choice(["best", "last"]))
def compare(run_dirs: tuple[str, ...], names: tuple[str, ...], out: str | None, role: str, videos: int,
            which: str) -> None:
    """Attention maps of two or more runs on the same videos, side by side (as Fig. 6 of Quan et al.)."""
    from glimpse.evaluate.report import compare_runs

    first = run_dirs[0].rstrip("/")
    out = out or os.path.join(os.path.dirname(first), "compare-" + "-vs-".join(os.path.basename(r.rstrip("/"))
                                                                              for r in run_dirs))
    try:
        written = compare_runs(run_dirs, out, names or None, role, videos, which)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{len(written)} videos, strip + GIF + MP4 each, written to {out}")
