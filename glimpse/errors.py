"""One error hierarchy and one way for every command line to report it.

Every error a user can fix (a missing path, a store of another schema, an option that does not fit) is a
:class:`GlimpseError`; the specific ones live beside the code that raises them and subclass it::

    GlimpseError
      OptionError           glimpse.errors                  options that do not fit together (exit status 2)
      ClusterError          glimpse.cluster                 a cluster that cannot be set up as asked
      DatasetError          glimpse.extract.datasets.base   a dataset tree that does not follow its layout
      DecodeError           glimpse.media.decode            a video that cannot be decoded as asked
      WeightsNotAvailable   glimpse.extract.weights         pretrained weights not in the cache
      BackboneError         glimpse.extract.backbones       an unknown backbone or node, a node with no grid
      RandomWeightsError    glimpse.extract.random_weights  random weights whose features float16 cannot hold
      SchemaError           glimpse.store.schema            a record or store that breaks the schema
      StoreError            glimpse.store.schema            no store, another schema, a read of nothing
        StoreExistsError    glimpse.store.writer            --out holds something else
        RemoteStoreError    glimpse.store.remote            a URL's backend missing, unreachable, or no credentials
      ConfigError           glimpse.train.config            an option that does not fit the model or store
        RunFileError        glimpse.train.run               a run directory file that cannot be trusted
      NonFiniteLossError    glimpse.train.loop              the loss became NaN or infinite

Each also keeps the builtin base it had (ValueError, RuntimeError), so existing ``except`` clauses hold.

Every CLI's top command is a :class:`Command` or :class:`Group` (``@click.command(cls=Command)``): a
GlimpseError, or an OSError naming a file, becomes one line on stderr and exit status 1; click's usage
errors and an :class:`OptionError` (raised by a stage's API, which knows no click) exit with status 2; anything
else is a bug and keeps its traceback. ``--debug`` (on every command) or ``GLIMPSE_DEBUG=1`` shows the traceback
of the errors too.
"""

from __future__ import annotations

import os
from typing import Any

import click

#: OSErrors that are a user's wrong path rather than a bug in glimpse (their message names the file).
PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)

_DEBUG_KEY = "glimpse.debug"


class GlimpseError(Exception):
    """An error the user can fix; its message names the file or option and what to do."""


class OptionError(GlimpseError, ValueError):
    """Options that do not fit (an unknown name, two that exclude each other): a usage error, exit status 2.

    ``option`` names the command-line option at fault (``"--streams"``), or is None for a combination."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[_DEBUG_KEY] = True


def _debug_option() -> click.Option:
    return click.Option(["--debug"], is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                        help="Show the full traceback of an error (also GLIMPSE_DEBUG=1).")


def debugging(ctx: click.Context | None = None) -> bool:
    """Whether tracebacks were asked for (--debug on any command of the chain, or GLIMPSE_DEBUG=1)."""
    ctx = ctx or click.get_current_context(silent=True)
    return bool(os.environ.get("GLIMPSE_DEBUG")) or bool(ctx is not None and ctx.meta.get(_DEBUG_KEY))


def one_line(err: BaseException) -> str:
    """The message a CLI prints for ``err``: its text, with the path for an OSError that has one."""
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in str(err):
        return f"{err.filename}: {err.strerror or err}"
    return str(err) or type(err).__name__


class ReportErrors:
    """Mixin for click commands: adds ``--debug`` and turns user errors into one line and exit status 1."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(_debug_option())

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OptionError as err:
            if debugging(ctx):
                raise
            if err.option is None:
                raise click.UsageError(str(err), ctx) from None
            raise click.BadParameter(str(err), ctx, param_hint=f"'{err.option}'") from None
        except (GlimpseError, *PATH_ERRORS) as err:
            if debugging(ctx):
                raise
            raise click.ClickException(one_line(err)) from None


class Command(ReportErrors, click.Command):
    """A click command that reports glimpse's errors in one line (see the module docstring)."""


class Group(ReportErrors, click.Group):
    """A click group whose own and sub-commands report glimpse's errors in one line."""

    command_class = Command


Group.group_class = Group
