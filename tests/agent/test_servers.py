"""Several servers for one agent: parsing ``--server`` lists, rotation, downloads that fail over."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from headway.agent.__main__ import parse_args
from headway.agent.artifacts import ArtifactCache
from headway.agent.converge import Controller
from headway.agent.runtime import Channel, run_agent
from headway.agent.servers import (
    ServerList,
    channel_url_for,
    parse_servers,
    split_servers,
)
from headway.agent.settings import AgentSettings
from headway.cli.main import app
from headway.clock import SystemClock
from headway.domain.models import ArtifactRef
from headway.errors import ArtifactError, ServerUnreachable, SpecError

from .conftest import TOKEN, FakeServer

A = "http://127.0.0.1:7400"
B = "http://127.0.0.2:7400"
C = "https://headway.example:8443/hw"


def closed_url() -> str:
    """A loopback URL nothing listens on (port bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def second() -> Iterator[FakeServer]:
    fake = FakeServer()
    fake.start()
    yield fake
    fake.stop()


# ---- parsing ---------------------------------------------------------------------------------


def test_split_keeps_order_drops_blanks_repeats_and_trailing_slashes() -> None:
    assert split_servers(f" {A}/ , {B},,{A}") == (A, B)
    assert split_servers([f"{A},{B}", C, f"{B}/"]) == (A, B, C)
    assert split_servers(A) == (A,)
    assert split_servers(" , ") == ()


@pytest.mark.parametrize(
    ("value", "bad", "problem"),
    [
        (f"{A},127.0.0.2:7400", "127.0.0.2:7400", "is not an http(s) URL"),
        ("ftp://127.0.0.1", "ftp://127.0.0.1", "is not an http(s) URL"),
        (f"http://,{A}", "http://", "is not an http(s) URL"),
        ("http://127.0.0.1:99999", "http://127.0.0.1:99999", "has a bad port"),
        ("http://127.0.0.1:port", "http://127.0.0.1:port", "has a bad port"),
        ("http://127.0.0.1:7400/?a=1", "http://127.0.0.1:7400/?a=1",
         "must not have a query or a fragment"),
        ("http://127.0.0.1 :7400", "http://127.0.0.1 :7400", "holds white space"),
    ],
)
def test_every_url_is_checked_with_a_hint(value: str, bad: str, problem: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_servers(value)
    assert caught.value.message == f"server address {bad!r} {problem}"
    assert "comma-separated" in caught.value.hint


def test_an_empty_list_is_refused() -> None:
    with pytest.raises(SpecError, match="no server URL given"):
        parse_servers(" ,")
    assert parse_servers([A, f"{B}/", C]) == (A, B, C)


def test_channel_urls_follow_scheme_and_path() -> None:
    assert channel_url_for(A + "/") == "ws://127.0.0.1:7400/agent/v1/channel"
    assert channel_url_for(C) == "wss://headway.example:8443/hw/agent/v1/channel"


def test_server_list_rotates_round_robin() -> None:
    servers = ServerList([f"{A},{B}", C])
    assert (servers.current, len(servers)) == (A, 3)
    assert servers.in_order() == (A, B, C)
    assert servers.advance() == B
    assert servers.in_order() == (B, C, A)
    assert [servers.advance(), servers.advance()] == [C, A]
    with pytest.raises(ValueError, match="at least one"):
        ServerList([" "])


def test_settings_keep_base_and_channel_url_of_the_first_server() -> None:
    one = AgentSettings(server=A + "/")
    assert (one.servers, one.base_url) == ((A,), A)
    assert one.channel_url == "ws://127.0.0.1:7400/agent/v1/channel"
    many = AgentSettings(server=f"{C},{A}")
    assert many.servers == (C, A)
    assert many.base_url == C
    assert many.channel_url == "wss://headway.example:8443/hw/agent/v1/channel"


def test_module_entry_takes_lists_repeats_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["--state-dir", str(tmp_path), "--name", "h1"]
    assert parse_args([*base, "--server", f"{A}, {B}", "--server", C]).servers == (A, B, C)
    monkeypatch.setenv("HEADWAY_SERVER", f"{B},{A}")
    assert parse_args(base).servers == (B, A)
    monkeypatch.delenv("HEADWAY_SERVER")
    assert parse_args(base).server == A


def test_run_agent_refuses_a_bad_url_in_the_list(tmp_path: Path) -> None:
    settings = AgentSettings(server=f"{A},localhost:7400", name="h1", state_dir=tmp_path)
    with pytest.raises(SpecError, match="'localhost:7400' is not an http"):
        asyncio.run(run_agent(settings))


def test_cli_agent_refuses_a_bad_url_before_anything_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["agent", "--name", "h1", "--address", "127.0.33.9", "--state-dir", str(tmp_path),
            "--token", "t"]
    result = CliRunner().invoke(app, [*base, "--server", A, "--server", "127.0.0.2:7400"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: server address '127.0.0.2:7400' is not an http(s) URL")
    assert "hint: pass it like --server" in result.stderr
    monkeypatch.setenv("HEADWAY_SERVER", f"{A},http://127.0.0.2:0x1")
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 2, result.output
    assert "'http://127.0.0.2:0x1' has a bad port" in result.stderr


# ---- the channel -----------------------------------------------------------------------------


def test_channel_moves_to_the_next_server_at_once_and_after_a_loss(
    server: FakeServer, second: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Real Channel over real WebSockets: a dead first server, then a lost session."""
    caplog.set_level(logging.INFO, logger="headway.agent")
    dead = closed_url()
    settings = AgentSettings(server=f"{dead},{server.url},{second.url}", token=TOKEN,
                             name="rot-1", address="127.0.33.10", labels={"service": "web"},
                             state_dir=tmp_path / "state", heartbeat=1.0)
    controller = Controller(settings, SystemClock())
    controller.adopted.set()
    channel = Channel(settings, controller, SystemClock(), random.Random(7))

    async def until(predicate: Callable[[], object], timeout: float) -> float:
        started = time.monotonic()
        while not predicate():
            assert time.monotonic() - started < timeout, "timed out"
            await asyncio.sleep(0.01)
        return time.monotonic() - started

    async def main() -> None:
        task = asyncio.create_task(channel.run())
        try:
            await until(lambda: server.hellos, 5)
            assert channel.servers.current == server.url
            server.stop()                      # closes the session: the next one is `second`
            took = await until(lambda: second.hellos, 5)
            assert took < 2.0, took            # at once, not after a backoff
            assert channel.servers.current == second.url
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            controller.close()

    asyncio.run(main())
    assert [h.host for h in server.hellos + second.hellos] == ["rot-1", "rot-1"]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"server {dead} unreachable") for m in messages), messages
    assert f"connected to {server.url} as host rot-1" in messages
    assert f"connected to {second.url} as host rot-1" in messages


def test_channel_backs_off_once_per_round_of_failing_servers(tmp_path: Path) -> None:
    """Two servers that accept TCP and hang up at once: tried in turn, never in a busy loop."""
    settings = AgentSettings(name="rot-2", token=TOKEN, state_dir=tmp_path / "state",
                             labels={"service": "web"})
    controller = Controller(settings, SystemClock())
    controller.adopted.set()
    hits: list[int] = []

    async def main() -> None:
        def hang_up(n: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]:
            def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                hits.append(n)
                writer.close()
            return handle

        listeners = [await asyncio.start_server(hang_up(n), "127.0.0.1", 0) for n in (0, 1)]
        urls = [f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in listeners]
        channel = Channel(settings, controller, SystemClock(), random.Random(3), ServerList(urls))
        task = asyncio.create_task(channel.run())
        await asyncio.sleep(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for listener in listeners:
            listener.close()
        controller.close()

    asyncio.run(main())
    # backoff 0.1-0.2 s, then 0.2-0.4 s, 0.4-0.8 s...: a few rounds of two in a second
    assert 4 <= len(hits) <= 12, hits
    assert hits[: len(hits) // 2 * 2] == [0, 1] * (len(hits) // 2)


# ---- downloads -------------------------------------------------------------------------------


def test_artifacts_come_from_the_current_server_then_the_others(
    server: FakeServer, second: FakeServer, tmp_path: Path
) -> None:
    ref = second.add_release("v1", tmp_path)   # only `second` holds it: `server` answers 404
    servers = ServerList([closed_url(), server.url, second.url])
    cache = ArtifactCache(tmp_path / "state", servers, TOKEN, SystemClock())
    assert cache.url_for(ref) == servers.current + ref.url
    path = asyncio.run(cache.fetch(ref, "v1"))
    assert path.read_bytes() == second.artifacts[ref.digest]
    assert (server.gets_of(ref), second.gets_of(ref)) == (1, 1)   # with the token on each
    # the server the channel uses now is asked first
    other = second.add_release("v2", tmp_path)
    server.artifacts[other.digest] = second.artifacts[other.digest]
    servers.advance()
    servers.advance()
    assert cache.server == second.url
    asyncio.run(cache.fetch(other, "v2"))
    assert (server.gets_of(other), second.gets_of(other)) == (0, 1)


def test_a_download_nobody_serves_says_why(server: FakeServer, tmp_path: Path) -> None:
    ref = ArtifactRef(digest="sha256:" + "1" * 64, size=10, url="")
    missing = ArtifactCache(tmp_path / "a", ServerList([server.url]), TOKEN, SystemClock())
    with pytest.raises(ArtifactError, match="HTTP 404"):
        asyncio.run(missing.fetch(ref, "v1"))
    # one server lacks it and another is down: worth a retry (the one holding it may return)
    mixed = ArtifactCache(tmp_path / "b", ServerList([server.url, closed_url()]), TOKEN,
                          SystemClock())
    with pytest.raises(ServerUnreachable, match="unreachable"):
        asyncio.run(mixed.fetch(ref, "v1"))
    assert server.artifact_gets == [ref.digest, ref.digest]
