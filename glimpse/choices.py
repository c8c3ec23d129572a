"""Command-line choices that are a registry's keys, read when the command runs: an entry registered after the
command line was built (a lab's own clip policy, dataset or backbone) is offered and accepted like the others."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import click

#: Where a command runs its models: auto (CUDA when torch sees it), cpu or cuda.
DEVICES = ("auto", "cpu", "cuda")


class RegistryChoice(click.Choice):
    """A :class:`click.Choice` over the live keys of ``registry`` (a dict, or a tuple of names)."""

    def __init__(self, registry: Iterable[str], case_sensitive: bool = True) -> None:
        self.registry = registry
        super().__init__((), case_sensitive)

    @property  # type: ignore[override]  # pyright: ignore[reportIncompatibleVariableOverride]
    def choices(self) -> tuple[Any, ...]:
        return tuple(self.registry)

    @choices.setter
    def choices(self, _value: Any) -> None:  # pyright: ignore[reportIncompatibleVariableOverride]
        pass  # click.Choice.__init__ assigns a copy: the registry stays the source
