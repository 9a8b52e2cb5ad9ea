"""Every command answers --help, and the package runs as `python -m headway`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from headway.cli.main import app


def _command_paths() -> list[list[str]]:
    paths: list[list[str]] = []

    def walk(command: object, prefix: list[str]) -> None:
        paths.append(prefix)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, [*prefix, name])

    walk(get_command(app), [])
    return paths


PATHS = _command_paths()


def test_every_documented_command_exists() -> None:
    names = {" ".join(p) for p in PATHS}
    expected = {
        "server", "agent", "apply", "release create", "release list", "rollout start",
        "rollout status", "rollout pause", "rollout resume", "rollout abort", "rollout promote",
        "rollback", "hosts", "history", "fleet up", "fleet down", "demo",
    }
    assert expected <= names


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "headway")
def test_help(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "path",
    [p for p in PATHS if p and p[0] not in {"server", "agent", "fleet", "demo"}],
    ids=lambda p: " ".join(p),
)
def test_api_commands_offer_json_server_and_token(path: list[str]) -> None:
    command = get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    if hasattr(command, "commands"):  # a group: its subcommands are checked on their own
        return
    options = {opt for param in command.params for opt in getattr(param, "opts", [])}
    assert {"--json", "--server", "--token"} <= options


def test_fleet_and_demo_offer_json() -> None:
    command = get_command(app)
    for path in (["fleet", "up"], ["fleet", "down"], ["demo"]):
        target = command
        for name in path:
            target = target.commands[name]  # type: ignore[attr-defined]
        assert "--json" in {opt for p in target.params for opt in getattr(p, "opts", [])}


def _help(*path: str) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_fleet_up_help_explains_pools_and_traffic() -> None:
    text = _help("fleet", "up")
    assert "--pools" in text and "blue,green" in text
    assert "first half of the hosts" in text and "blue-green" in text
    assert "--traffic-port" in text and "HAProxy" in text
    assert "`traffic` in --json is HAProxy's URL" in text
    assert "HAProxy" in _help("fleet", "down")


def test_demo_help_explains_strategies_and_traffic() -> None:
    text = _help("demo")
    assert "--strategy" in text
    for name in ("rolling", "canary", "blue-green"):
        assert name in text
    assert "10%, pause 5s, 50%, pause 5s, 100%" in text
    assert "--rate" in text and "/slow?ms=2000-5000" in text
    assert "--traffic-port" in text and "--stay" in text
    assert "zero-downtime figures" in text


def test_demo_refuses_an_unknown_strategy() -> None:
    result = CliRunner().invoke(app, ["demo", "--strategy", "big-bang"])
    assert result.exit_code == 2
    assert "big-bang" in result.output


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("headway ")


def test_python_dash_m_headway() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "headway", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "rollout" in done.stdout


def test_no_arguments_shows_help_and_exits_2() -> None:
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 2
    assert "Usage" in result.output
