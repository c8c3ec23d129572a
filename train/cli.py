"""Command line of the train stage (`python -m train`)."""

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The train stage."""


@main.command("models")
def models_command() -> None:
    """List every registered model with its paper, equations and defaults."""
    from train.models import MODELS  # imports torch: only when the command runs

    click.echo("\n\n".join(spec.describe() for spec in MODELS.values()))
