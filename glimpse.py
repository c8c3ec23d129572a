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
def demo(out: str) -> None:
    """Run the whole pipeline end to end on the synthetic dataset."""
    raise click.ClickException("the demo is not built yet")


if __name__ == "__main__":
    main()
