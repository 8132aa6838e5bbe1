"""The `diga` command. Sub-commands only parse arguments and call the library; errors a user can
cause (DigaError) print one line without a traceback and exit 1."""

from __future__ import annotations

import sys

import click
import typer

from ..errors import DigaError
from ..progress import console, setup_logging

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="DiGA domain adaptation for driving-scene segmentation: data, train, adapt, export, serve.")


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")) -> None:
    setup_logging(verbose)


from . import (  # noqa: E402,F401  (modules register commands)
    adapt,
    adapt_modes,
    adapt_online,
    bench,
    bench_kernels,
    bench_latency,
    data,
    export,
    fleet,
    predict,
    serve,
    train,
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    try:
        app(args=argv, standalone_mode=False)
    except DigaError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 1
    except click.exceptions.Abort:
        console.print("aborted")
        return 130
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


def run() -> None:
    sys.exit(main())
