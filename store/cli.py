"""Command line of the store stage (`python -m store`)."""

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The store stage."""
