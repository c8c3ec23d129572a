"""Command line of the train stage (`python -m train`)."""

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The train stage."""
