"""The `tradepulse` command."""

from __future__ import annotations

import sys

import typer

from tradepulse.config import ConfigError, Settings, load_settings

app = typer.Typer(
    help="TradePulse: real-time market-data pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def settings_or_exit(**overrides: object) -> Settings:
    """Load settings; on a bad value print one clear message and exit 2."""
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        typer.echo(f"tradepulse: {exc}", err=True)
        raise typer.Exit(code=2) from None


@app.command()
def config() -> None:
    """Print the effective configuration (secrets hidden)."""
    settings = settings_or_exit()
    for name, value in settings.model_dump().items():
        typer.echo(f"{name} = {value}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
