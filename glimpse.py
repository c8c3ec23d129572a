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


@main.command("demo")
@click.option("--out", default="demo", show_default=True, type=click.Path(), help="Folder for all demo output.")
@click.option("--workers", default=None, type=int, help="Local Dask workers [one per core].")
def demo(out: str, workers: int | None) -> None:
    """Run the whole pipeline end to end on the synthetic dataset.

    Writes the synthetic dataset, extracts GoogLeNet (random, batch-norm calibrated) cubes into a
    store, and prints what the store holds. Training and evaluation join as those stages land.
    """
    import logging
    from pathlib import Path

    from extract.cli import extract_dataset
    from extract.synth import SynthConfig, make_synthetic
    from store import open_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out_dir = Path(out)
    data = out_dir / "data" / "synthetic"
    click.echo(f"demo 1/2: synthetic dataset -> {data}")
    make_synthetic(data, SynthConfig(), progress=True)
    store_path = out_dir / "stores" / "synthetic"
    click.echo(f"demo 2/2: extract googlenet cubes (random weights, calibrated) -> {store_path}")
    summary = extract_dataset("synthetic", str(data), str(store_path), weights="none", frames=12,
                              workers=workers, quiet=False)
    click.echo(summary.report())
    store = open_store(store_path)
    done = [v for v in store.videos if v.status == "done"]
    shape = store.read(done[0].id, "rgb").shape if done else None
    click.echo(f"store: {len(done)}/{len(store.videos)} videos done, classes {', '.join(store.classes)}, "
               f"rgb cube per video {shape}")
    if summary.failed:
        raise click.ClickException(f"{len(summary.failed)} videos failed")


if __name__ == "__main__":
    main()
