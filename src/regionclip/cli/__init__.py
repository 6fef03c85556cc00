"""Command line: ``regionclip classify | detect | extract-features | evaluate-zeroshot | embed-vocab | concepts | finetune | pretrain | evaluate | demo``.

Options are checked before any weights load (bad ones are usage errors, exit status 2); the errors a user can act
on print one ``error: ...`` line and exit with status 1 (``regionclip --debug ...`` shows the traceback); images
that cannot be read are skipped and listed, everything else is written, and the exit status is 1."""

from __future__ import annotations

import functools
from typing import Callable, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RegionCLIP: zero-shot recognition of image regions.")

# Set by the group callback below for the current invocation: whether errors show their traceback.
_invocation = {"debug": False}


@app.callback()
def main(
    debug: bool = typer.Option(
        False, "--debug", envvar="REGIONCLIP_DEBUG", help="Show the full traceback of an error instead of one line."
    ),
) -> None:
    """RegionCLIP: zero-shot recognition of image regions."""
    _invocation["debug"] = debug


# Errors a user can act on (a missing or unreadable file, a bad value, a failed download, an empty file, memory):
# one line on stderr and exit status 1, unless --debug asks for the traceback.
USER_ERRORS = (OSError, ValueError, RuntimeError, EOFError)


def _reports_errors(command: Callable) -> Callable:
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise  # the command's own outcome (both are RuntimeErrors)
        except USER_ERRORS as error:
            if _invocation["debug"]:
                raise
            message = str(error) or type(error).__name__
            typer.echo(f"error: {message} (regionclip --debug ... shows the traceback)", err=True)
            raise typer.Exit(1) from None

    return run


def _command(name: Optional[str] = None):
    """``app.command`` with the one-line error reporting above."""
    return lambda function: app.command(name)(_reports_errors(function))


# The commands register themselves on ``app`` when their modules are imported, in this order in ``--help``.
from . import inference  # noqa: E402,F401  isort: skip
from . import evaluation  # noqa: E402,F401  isort: skip
from . import training  # noqa: E402,F401  isort: skip
from .common import read_boxes_file  # noqa: E402,F401
