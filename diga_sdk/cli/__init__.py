"""The `diga` command. Sub-commands only parse arguments and call the library. Exit codes: 0 on success,
1 for an error a user can cause (DigaError, a path the OS refuses; one plain-text line, no traceback),
2 for a usage error (unknown command or option, bad value), 130 on Ctrl-C (after the command saved
what `--resume` needs)."""

from __future__ import annotations

import sys

import typer

from ..errors import DigaError
from ..progress import print_error, setup_logging

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="DiGA domain adaptation for driving-scene segmentation: data, train, adapt, export, serve.")

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


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
    config_cmd,
    data,
    export,
    fleet,
    predict,
    serve,
    train,
)


def usage_error_types() -> tuple[type[Exception], ...]:
    """The ClickException classes typer may raise: typer >= 0.2x vendors click as `typer._click`, older
    releases use the `click` distribution; catch whichever are installed."""
    found: list[type[Exception]] = []
    try:
        from typer._click.exceptions import ClickException as Vendored  # type: ignore[import-not-found]

        found.append(Vendored)
    except ImportError:
        pass
    try:
        from click.exceptions import ClickException

        found.append(ClickException)
    except ImportError:
        pass
    return tuple(found)


def _usage_line(exc: Exception) -> str:
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "diga"
    return f"{message} (see `{path} --help`)"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (see the module docstring)."""
    usage_errors = usage_error_types()
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="diga")
    except DigaError as exc:
        print_error(str(exc))
        return EXIT_ERROR
    except typer.Exit as exc:
        code = int(exc.exit_code or 0)
    except typer.Abort:
        print_error("aborted")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except usage_errors as exc:
        print_error(_usage_line(exc))
        return int(getattr(exc, "exit_code", 2) or 2)
    except OSError as exc:  # a path the OS refuses (exists as a file, not a folder, no permission, ...)
        where = f": {exc.filename}" if exc.filename else ""
        print_error(f"{exc.strerror or exc}{where}")
        return EXIT_ERROR
    else:
        # typer returns the exit code of a `typer.Exit` raised inside a command (130 for Ctrl-C)
        code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
    if code == EXIT_INTERRUPTED:
        print_error("interrupted")
    return code


def run() -> None:
    sys.exit(main())
