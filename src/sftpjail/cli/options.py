"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from sftpjail.config import Config, load_config

F = TypeVar("F", bound=Callable[..., object])

config_option: Callable[[F], F] = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SFTPJAIL_CONFIG",
    help="The TOML configuration file (or set SFTPJAIL_CONFIG).",
)


def load(config_path: Path | None) -> Config:
    """Load the configuration named on the command line or in the environment."""

    return load_config(config_path)
