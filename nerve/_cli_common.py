"""What every `nerve` command shares: error handling, the common options, and
where the config and the data directory are."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from nerve.config import DEFAULT_DATA_DIR, Config, find_config
from nerve.events import NerveError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# -- plumbing ---------------------------------------------------------------------


class NerveGroup(click.Group):
    """Turns nerve's errors into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        except BaseException as e:
            error = _single(e)
            if isinstance(error, NerveError | OSError):
                raise click.ClickException(error_message(error)) from None
            if isinstance(error, KeyboardInterrupt):
                raise click.exceptions.Exit(130) from None
            raise


def _single(e: BaseException) -> BaseException:
    """The one error inside nested exception groups of one error each."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e


def error_message(e: BaseException) -> str:
    """One line for an error: an OSError's reason and file, else its text."""
    if isinstance(e, OSError) and not isinstance(e, NerveError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}"
    return str(e)


def run_trio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Each command is one `trio.run`: click itself is synchronous."""
    return trio.run(fn, *args)


def data_option(f: F) -> F:
    return click.option(
        "--data",
        "data",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="NERVE_DATA",
        help="The data directory (default: the config's data_dir, else ./data).",
    )(f)


def config_option(f: F) -> F:
    return click.option(
        "--config",
        "-c",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="NERVE_CONFIG",
        help="The config file (default: ./nerve.yaml if it exists).",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


class Target:
    """The config (if any) and the data directory a command works on."""

    def __init__(self, config_path: Path | None, data: Path | None) -> None:
        self.config: Config | None = find_config(config_path)
        if data is not None:
            self.data_dir = data
        elif self.config is not None and self.config.data_path is not None:
            self.data_dir = self.config.data_path
        else:
            self.data_dir = Path(DEFAULT_DATA_DIR)

    def existing(self) -> Path:
        """The data directory, which must hold a log already."""
        if not (self.data_dir / "logs.db").is_file():
            raise click.ClickException(
                f"no nerve log in {self.data_dir} (no logs.db there): pass "
                "--data DIR, or start a kernel there with `nerve run`"
            )
        return self.data_dir
