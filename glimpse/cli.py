"""The ``glimpse`` console script: one click group over the four stages and the experiments above them.

    glimpse extract | store | train | evaluate | synth ...   each stage's own command line (python -m glimpse.<stage>)
    glimpse table --dataset NAME [--runs runs/]             every registered model on one store, one table
    glimpse protocol --dataset NAME --model NAME            every fold of the dataset's protocol, mean and std
    glimpse demo [--out demo]                               synthetic dataset -> store -> models -> table, figures

``table``, ``protocol`` and ``demo`` train and then evaluate: their work is glimpse/experiments.py. Sub-commands
are imported lazily so that ``glimpse store ls`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import click

from glimpse.errors import Command, Group
from glimpse.store.catalog import default_root

CONTEXT = {"help_option_names": ["-h", "--help"]}

#: sub-command name -> "module:attribute" of its click command
COMMANDS = {
    "synth": "glimpse.extract.synth:main",
    "extract": "glimpse.extract.cli:main",
    "store": "glimpse.store.cli:main",
    "train": "glimpse.train.cli:main",
    "evaluate": "glimpse.evaluate.cli:main",
    "table": "glimpse.cli:table",
    "protocol": "glimpse.cli:protocol",
    "demo": "glimpse.cli:demo",
}


class LazyGroup(Group):
    """A click group whose sub-commands are imported only when invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings=CONTEXT)
def main() -> None:
    """glimpse: extract conv feature cubes once, then train and compare recurrent attention models."""


STORE_OPTIONS = [
    click.option("--store", default=None, help="The feature store."),
    click.option("--dataset", default=None, help="Pick the store of this dataset under --store-root."),
    click.option("--store-root", default=default_root, show_default="$STORE_ROOT or stores/"),
    click.option("--backbone", default=None, help="With --dataset: the store of this backbone (of several)."),
    click.option("--epochs", default=None, type=int, help="Epochs for runs trained here. [the training default]"),
    click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE",
                 help="A model setting for runs trained here, as in train (e.g. --set hidden=64)."),
]


def store_options(command):
    """The options of the commands that train and evaluate on one store (table, protocol)."""
    for option in reversed(STORE_OPTIONS):
        command = option(command)
    return command


def _store_path(store: str | None, dataset: str | None, store_root: str, backbone: str | None) -> str:
    """--store as given, or the one store of --dataset (and --backbone) under --store-root (a clear error when
    several match)."""
    from glimpse.train.cli import find_store

    if store:
        return store
    if not dataset:
        raise click.UsageError("give --store PATH or --dataset NAME")
    return find_store(dataset, store_root, backbone)


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


@click.command("table", cls=Command, context_settings=CONTEXT)
@store_options
@click.option("--runs", "run_root", default="runs/", show_default=True, help="Where runs are found or trained.")
@click.option("--models", default=None, help="Comma-separated models. [every registered model the store feeds]")
@click.option("--no-train", is_flag=True, help="Only collect existing runs; train none.")
def table(store: str | None, dataset: str | None, store_root: str, backbone: str | None, epochs: int | None,
          assignments: tuple[str, ...], run_root: str, models: str | None, no_train: bool) -> None:
    """Collect (or train) every registered model on one store and write the comparison table.

    A run cut short is resumed (shown as unfinished with --no-train); existing runs are evaluated on this
    store, so --store points them at a store that moved (its config hash must be theirs)."""
    from glimpse.experiments import comparison_table
    from glimpse.train.models import MODELS

    chosen = [m.strip() for m in models.split(",")] if models else None
    per_model = _model_settings(chosen or list(MODELS), assignments)
    path = _store_path(store, dataset, store_root, backbone)
    click.echo(comparison_table(path, run_root, chosen, train_missing=not no_train, per_model=per_model,
                                **({} if epochs is None else {"epochs": epochs})))


@click.command("protocol", cls=Command, context_settings=CONTEXT)
@store_options
@click.option("--model", required=True, help="A registered model.")
@click.option("--out", default=None, help="Where the fold runs go. [runs/protocol-<dataset>-<model>]")
def protocol(store: str | None, dataset: str | None, store_root: str, backbone: str | None, epochs: int | None,
             assignments: tuple[str, ...], model: str, out: str | None) -> None:
    """Train and evaluate MODEL on every fold of the dataset's protocol; report mean and std."""
    from glimpse.experiments import protocol_text, run_protocol
    from glimpse.store import open_store

    settings = _model_settings([model], assignments)[model]
    if epochs is not None:
        settings["epochs"] = epochs
    path = _store_path(store, dataset, store_root, backbone)
    out = out or os.path.join("runs", f"protocol-{open_store(path).dataset}-{model}")
    click.echo(protocol_text(run_protocol(path, model, out, **settings)))


@click.command("demo", cls=Command, context_settings=CONTEXT)
@click.option("--out", default="demo", show_default=True, type=click.Path(), help="Folder for all demo output.")
@click.option("--workers", default=None, type=int, help="Local Dask workers [one per core].")
def demo(out: str, workers: int | None) -> None:
    """Run the whole pipeline end to end on the synthetic dataset.

    Writes the synthetic dataset, extracts calibrated random GoogLeNet cubes into a store, trains
    a pooled-LSTM baseline and five attention models, and ends with the comparison table,
    attention strips (demo/runs/synthetic-*/evaluation/attention/) and regattn's maps at lambda = 0
    and lambda > 0 side by side (demo/runs/compare-regattn-lambda/).
    """
    import logging

    from glimpse.experiments import run_demo

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_demo(out, workers)


if __name__ == "__main__":
    main()
