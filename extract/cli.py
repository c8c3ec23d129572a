"""Command line of the extraction stage (`python -m extract`)."""

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Extract frames, optical flow and CNN conv feature cubes from a dataset into a store."""
    raise click.ClickException("the extraction stage is not built yet")
