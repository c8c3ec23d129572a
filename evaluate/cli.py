"""Command line of the evaluate stage (`python -m evaluate`)."""

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The evaluate stage."""
