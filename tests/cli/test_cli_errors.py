"""Bad input and unreachable servers: exit 2, an `error:` and a `hint:` line, no traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from headway.cli.main import app


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def nowhere() -> list[str]:
    """Server options that point at nothing: a command that reaches the network fails loudly."""
    return ["--server", f"http://127.0.0.1:{closed_port()}", "--token", "t0ken"]


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def assert_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("error: "), result.stderr
    assert "\nhint: " in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert result.stdout == ""


GOOD_SPEC = """
name: web
run:
  start: ["python3", "app.py"]
health:
  http: {path: /healthz}
"""


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("name: web\nrun: [\n", ["YAML is malformed at line 3"]),
        ("- just\n- a list\n", ["must be a mapping"]),
        (GOOD_SPEC + "colour: blue\n", ["colour: unknown field"]),
        (GOOD_SPEC.replace("name: web", "name: Web_1"), ["service name 'Web_1'"]),
        (GOOD_SPEC + "strategy: {min_healthy_time: -5s}\n", ["negative"]),
        (GOOD_SPEC + "strategy: {max_unavailable: 0}\n", ["max_unavailable is 0"]),
        (GOOD_SPEC + "strategy: {batch_size: 120%}\n", ["over 100%"]),
        ("name: web\nhealth: {tcp: {}}\n", ["run: required field is missing"]),
    ],
    ids=["malformed", "not-a-mapping", "unknown-field", "bad-name", "negative-duration",
         "no-unavailable-budget", "over-100-percent", "missing-run"],
)
def test_apply_validates_the_spec_locally(
    tmp_path: Path, nowhere: list[str], text: str, fragments: list[str]
) -> None:
    spec = tmp_path / "service.yaml"
    spec.write_text(text)
    # The server is unreachable: the spec error proves validation happened before any request.
    assert_error(run("apply", "-f", str(spec), *nowhere), *fragments)


def test_apply_missing_file(tmp_path: Path, nowhere: list[str]) -> None:
    assert_error(run("apply", "-f", str(tmp_path / "nope.yaml"), *nowhere), "does not exist")


def test_apply_directory(tmp_path: Path, nowhere: list[str]) -> None:
    assert_error(run("apply", "-f", str(tmp_path), *nowhere), "is a directory")


def test_valid_spec_then_unreachable_server(tmp_path: Path, nowhere: list[str]) -> None:
    spec = tmp_path / "service.yaml"
    spec.write_text(GOOD_SPEC)
    assert_error(
        run("apply", "-f", str(spec), *nowhere),
        "cannot reach the Headway server",
        "is `headway server` running? set --server or HEADWAY_SERVER",
    )


def test_unreachable_server_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWAY_SERVER", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HEADWAY_TOKEN", "t0ken")
    assert_error(run("hosts"), "cannot reach", "HEADWAY_SERVER")


def test_missing_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADWAY_TOKEN", raising=False)
    assert_error(run("hosts", "--server", "http://127.0.0.1:1"), "no API token", "HEADWAY_TOKEN")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["release", "create", "web"], "give --artifact FILE, --from vN or --config REV"),
        (["release", "create", "web", "--artifact", "a.tgz", "--from", "v1"], "not both"),
        (["release", "create", "web", "--from", "latest"], "not a version"),
        (["release", "create", "web", "--from", "v1", "--param", "novalue"], "not KEY=VALUE"),
        (["release", "create", "web", "--artifact", "missing.tar.gz"], "does not exist"),
        (["rollout", "start", "web", "--to", "v0"], "not a version"),
        (["rollout", "status", "r1", "--service", "web"], "not both"),
        (["rollout", "status", "--wait"], "--wait follows one rollout"),
    ],
)
def test_bad_arguments(tmp_path: Path, nowhere: list[str], args: list[str], fragment: str) -> None:
    assert_error(run(*args, *nowhere), fragment)


def test_server_listen_must_be_host_port(tmp_path: Path) -> None:
    assert_error(
        run("server", "--state-dir", str(tmp_path), "--listen", "localhost"), "not HOST:PORT"
    )


def test_agent_needs_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADWAY_AGENT_TOKEN", raising=False)
    assert_error(
        run("agent", "--name", "h1", "--address", "127.0.0.1", "--state-dir", str(tmp_path)),
        "no agent token",
    )


def test_agent_labels_must_be_pairs(tmp_path: Path) -> None:
    assert_error(
        run("agent", "--name", "h1", "--address", "127.0.0.1", "--state-dir", str(tmp_path),
            "--token", "t", "--label", "web"),
        "--label 'web' is not KEY=VALUE",
    )


def test_fleet_hosts_out_of_range(tmp_path: Path) -> None:
    result = run("fleet", "up", "--hosts", "0", "--state-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_fleet_address_prefix_must_be_loopback(tmp_path: Path) -> None:
    assert_error(
        run("fleet", "up", "--state-dir", str(tmp_path), "--address-prefix", "10.0.0"),
        "127.0.0.0/8",
    )


def test_state_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert_error(
        run("fleet", "up", "--hosts", "1", "--state-dir", str(blocker / "fleet"), "--port", "0"),
        "Not a directory",
        str(blocker),
    )
