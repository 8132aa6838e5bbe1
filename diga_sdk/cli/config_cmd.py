"""`diga config show`: the resolved configuration (preset, YAML file, --set) before committing to a run."""

from __future__ import annotations

from pathlib import Path

import typer

from ..config import AdaptConfig, TrainConfig, config_to_yaml, load_config
from ..errors import DigaError
from . import app

config_app = typer.Typer(no_args_is_help=True, help="Configurations: print the one a command would run with.")
app.add_typer(config_app, name="config")


@config_app.command("show")
def show(
    preset: str | None = typer.Option(None, "--preset", help="gta5-cityscapes or synthia-cityscapes"),
    config: Path | None = typer.Option(None, "--config", help="YAML with settings layered over the preset"),
    sets: list[str] = typer.Option([], "--set", help="override any setting by its dotted key (repeatable)"),
    kind: str = typer.Option("adapt", "--for", help="adapt (diga adapt) or train (diga train)"),
) -> None:
    """Print the resolved YAML of `diga adapt` (or `diga train`) for these settings."""
    classes = {"adapt": AdaptConfig, "train": TrainConfig}
    if kind not in classes:
        raise DigaError(f"--for {kind!r}: use adapt or train")
    cfg = load_config(config, classes[kind], preset=preset, sets=sets)
    typer.echo(config_to_yaml(cfg), nl=False)
