"""`diga config show`: the resolved configuration (preset, YAML file, --set) before committing to a run."""

from __future__ import annotations

from pathlib import Path

import typer

from ..config import AdaptConfig, DGConfig, TrainConfig, config_to_yaml, load_config
from ..errors import DigaError
from . import app

config_app = typer.Typer(no_args_is_help=True, help="Configurations: print the one a command would run with.")
app.add_typer(config_app, name="config")


@config_app.command("show")
def show(
    preset: str | None = typer.Option(None, "--preset", help="gta5-cityscapes, synthia-cityscapes or gta5-dg"),
    config: Path | None = typer.Option(None, "--config", help="YAML with settings layered over the preset"),
    sets: list[str] = typer.Option([], "--set", help="override any setting by its dotted key (repeatable)"),
    kind: str | None = typer.Option(None, "--for", help="adapt (diga adapt), train (diga train) or dg "
                                    "(diga adapt dg); default: the preset's own command, else adapt"),
) -> None:
    """Print the resolved YAML of `diga adapt` (or `diga train`, `diga adapt dg`) for these settings."""
    from ..presets import preset_kinds

    classes = {"adapt": AdaptConfig, "train": TrainConfig, "dg": DGConfig}
    if kind is None:
        kind = preset_kinds(preset)[0] if preset is not None else "adapt"
    if kind not in classes:
        raise DigaError(f"--for {kind!r}: use adapt, train or dg")
    cfg = load_config(config, classes[kind], preset=preset, sets=sets)
    typer.echo(config_to_yaml(cfg), nl=False)
