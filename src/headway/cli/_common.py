"""What every command shares: options, the API client, JSON output, error mapping, exit codes.

Exit codes: 0 success; 1 a rollout the command reported on failed, was rolled
back or aborted; 2 bad input or any `HeadwayError` (printed as ``error:`` and
``hint:`` lines on stderr, never a traceback).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TextIO, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from headway.client.api import DEFAULT_SERVER, ApiClient
from headway.domain.models import parse_version
from headway.errors import HeadwayError, SpecError, Unauthorized

EXIT_OK = 0
EXIT_ROLLOUT_FAILED = 1
EXIT_ERROR = 2

ServerOption = Annotated[
    str,
    typer.Option(
        "--server",
        envvar="HEADWAY_SERVER",
        help="URL of the Headway server",
        show_envvar=True,
    ),
]
TokenOption = Annotated[
    str,
    typer.Option(
        "--token",
        envvar="HEADWAY_TOKEN",
        help="API token (the server writes it to <state-dir>/tokens.json)",
        show_default=False,
        show_envvar=True,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document instead of tables.")
]
WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait", help="Show live progress until the rollout ends; exit 1 unless it succeeded."
    ),
]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why; kept in the audit log.")]

P = ParamSpec("P")
R = TypeVar("R")


PIPE_WIDTH = 200  # tables sent to a file or a pipe are not folded to 80 columns


def _width(stream: TextIO) -> int | None:
    return None if stream.isatty() or "COLUMNS" in os.environ else PIPE_WIDTH


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))


def stdout_console() -> Console:
    return Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))


def report_error(error: HeadwayError) -> None:
    console = stderr_console()
    console.print(f"[red]error: {escape(error.message)}[/red]", soft_wrap=True)
    if error.hint:
        console.print(f"[red]hint: {escape(error.hint)}[/red]", soft_wrap=True)


def handled(func: Callable[P, R]) -> Callable[P, R]:
    """Run a command; turn a `HeadwayError` into the two red lines and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except HeadwayError as error:
            report_error(error)
            raise typer.Exit(EXIT_ERROR) from None
        except OSError as error:  # a state dir or file we cannot create, read or write
            where = f": {error.filename}" if error.filename else ""
            report_error(
                HeadwayError(
                    f"{error.strerror or error}{where}",
                    hint="check the path and its permissions",
                )
            )
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            stderr_console().print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def make_client(server: str, token: str, *, timeout: float = 10.0) -> ApiClient:
    if not token:
        raise Unauthorized(
            "no API token given",
            hint="pass --token or set HEADWAY_TOKEN; the server wrote it to "
            "<its state dir>/tokens.json (key \"api\")",
        )
    return ApiClient(server or DEFAULT_SERVER, token, timeout=timeout)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def parse_pairs(pairs: Iterable[str], option: str) -> dict[str, str]:
    """``["k=v", "x="]`` -> ``{"k": "v", "x": ""}``; a `SpecError` naming the bad one."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SpecError(
                f"{option} {pair!r} is not KEY=VALUE",
                hint=f"write it like {option} region=eu (an empty value: {option} region=)",
            )
        result[key.strip()] = value
    return result


def check_version(text: str, option: str) -> str:
    try:
        return f"v{parse_version(text)}"
    except ValueError as error:
        raise SpecError(f"{option}: {error}", hint="list releases with `headway release list`") from None


def read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{what} {path} does not exist", hint="check the path") from None
    except IsADirectoryError:
        raise SpecError(f"{what} {path} is a directory", hint="pass a file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"cannot read {what} {path}: {error}", hint="check the file") from None
