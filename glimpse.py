"""The ``glimpse`` console script: one click group over the four stages.

Sub-commands are imported lazily so that ``glimpse store ls`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib

import click

#: sub-command name -> "module:attribute" of its click command
COMMANDS = {
    "synth": "extract.synth:main",
    "extract": "extract.cli:main",
    "store": "store.cli:main",
    "train": "train.cli:main",
    "evaluate": "evaluate.cli:main",
    "demo": "glimpse:demo",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported only when invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """glimpse: extract conv feature cubes once, then train and compare recurrent attention models."""


#: The demo's dataset and training settings: 192 videos (4 classes), 12 frames at 112 px, a 4 x 4 grid.
DEMO_SYNTH = {"classes": 4, "per_class": 48, "frames": 12, "size": 112, "seed": 3}
DEMO_EXTRACT = {"backbone": "googlenet", "weights": "none", "size": 112, "frames": 12, "batch_size": 16}
DEMO_MODELS = ("avgpool_lstm", "softattn", "regattn")
DEMO_TRAIN = {"epochs": 30, "batch_size": 8, "lr": 1e-3, "seed": 1, "patience": 10, "workers": 0,
              "model_args": {"hidden": 64}}


@main.command("demo")
@click.option("--out", default="demo", show_default=True, type=click.Path(), help="Folder for all demo output.")
@click.option("--workers", default=None, type=int, help="Local Dask workers [one per core].")
def demo(out: str, workers: int | None) -> None:
    """Run the whole pipeline end to end on the synthetic dataset.

    Writes the synthetic dataset, extracts calibrated random GoogLeNet cubes into a store, trains
    a pooled-LSTM baseline and two attention models, and ends with the comparison table and
    attention strips (demo/runs/synthetic-*/evaluation/attention/*.png).
    """
    import logging
    import warnings
    from pathlib import Path

    from evaluate.report import comparison_table
    from extract.cli import extract_dataset
    from extract.synth import SynthConfig, make_synthetic

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    warnings.filterwarnings("ignore", message=".*group sparsity.*")  # regattn's N=4 blocks on a 4 x 4 map
    out_dir = Path(out)
    data = out_dir / "data" / "synthetic"
    click.echo(f"demo 1/3: synthetic dataset -> {data}")
    make_synthetic(data, SynthConfig(**DEMO_SYNTH), progress=True)
    click.echo(f"demo 2/3: calibrated random GoogLeNet cubes -> {out_dir / 'stores'}")
    summary = extract_dataset("synthetic", str(data), lab=str(out_dir / "stores"), workers=workers, quiet=False,
                              **DEMO_EXTRACT)
    click.echo(summary.report())
    if summary.failed:
        raise click.ClickException(f"{len(summary.failed)} videos failed")
    click.echo(f"demo 3/3: train and evaluate {', '.join(DEMO_MODELS)} -> {out_dir / 'runs'}")
    table = comparison_table(summary.store, out_dir / "runs", DEMO_MODELS, figures=4, **DEMO_TRAIN)
    strips = sorted((out_dir / "runs").glob("*/evaluation/attention/*.png"))
    click.echo("\n" + table)
    click.echo(f"attention strips ({len(strips)}): {strips[0].parent if strips else 'none'}")


if __name__ == "__main__":
    main()
