"""The runtime API client against stand-in UNIX sockets (to script failures) and a real HAProxy."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from headway.traffic.base import ServerState, TrafficError, TransientTrafficError
from headway.traffic.haproxy import HAProxyBackend, HAProxyRuntime
from headway.traffic.haproxy_process import HAProxyProcess
from headway.traffic.retry import with_retries

Reply = Callable[[int, str], bytes | None]  # (connection number, command) -> reply; None: hang


@asynccontextmanager
async def stand_in(path: Path, reply: Reply) -> AsyncIterator[list[str]]:
    """A UNIX socket server answering each connection by ``reply``; yields the commands seen."""
    seen: list[str] = []
    handlers: set[asyncio.Task[None]] = set()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            command = (await reader.readline()).decode().strip()
            seen.append(command)
            reply_bytes = reply(len(seen), command)
            if reply_bytes is None:
                await asyncio.sleep(3600)  # cancelled when the stand-in closes
            writer.write(reply_bytes or b"")
            await writer.drain()
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await answer(reader, writer)
        finally:
            handlers.discard(task)

    server = await asyncio.start_unix_server(handle, path=str(path))
    try:
        yield seen
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


class Sleeps:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(seconds)


def test_a_socket_that_drops_twice_then_answers_is_retried_with_jittered_backoff(tmp_path: Path) -> None:
    async def main() -> tuple[list[str], list[float]]:
        sleeps = Sleeps()
        async with stand_in(tmp_path / "s.sock", lambda n, cmd: b"" if n <= 2 else b"\n") as seen:
            runtime = HAProxyRuntime(tmp_path / "s.sock")
            reply = await with_retries(lambda: runtime.execute("set server web/h1 state drain"),
                                       rng=random.Random(11), sleep=sleeps)
            assert reply == "\n"
        return seen, sleeps.slept

    seen, slept = asyncio.run(main())
    assert seen == ["set server web/h1 state drain"] * 3
    expected = random.Random(11)
    assert slept == [expected.uniform(0, 0.05), expected.uniform(0, 0.1)]  # full jitter, seeded


def test_the_adapter_retries_on_its_own_and_gives_up_with_a_hint(tmp_path: Path) -> None:
    async def main() -> None:
        sock = tmp_path / "s.sock"
        async with stand_in(sock, lambda n, cmd: b"" if n <= 2 else b"\n") as seen:
            await HAProxyBackend(sock, "web", rng=random.Random(1)).set_state("h1", ServerState.DRAIN)
            assert len(seen) == 3
        async with stand_in(sock, lambda n, cmd: b"") as seen:
            with pytest.raises(TransientTrafficError, match="closed the stats socket without answering") as e:
                await HAProxyBackend(sock, "web", rng=random.Random(1), attempts=4).set_weight("h1", 3)
            assert len(seen) == 4 and "stats socket" in e.value.hint

    asyncio.run(main())


def test_a_refusal_is_not_retried_and_says_what_to_fix(tmp_path: Path) -> None:
    async def main() -> None:
        sock = tmp_path / "s.sock"
        async with stand_in(sock, lambda n, cmd: b"Permission denied\n\n") as seen:
            with pytest.raises(TrafficError) as raised:
                await HAProxyBackend(sock, "web", rng=random.Random(1)).set_state("h1", ServerState.READY)
            assert not isinstance(raised.value, TransientTrafficError)
            assert "level admin" in raised.value.hint and len(seen) == 1

    asyncio.run(main())


def test_a_silent_socket_times_out_as_transient(tmp_path: Path) -> None:
    async def main() -> None:
        sock = tmp_path / "s.sock"
        async with stand_in(sock, lambda n, cmd: None):
            started = time.monotonic()
            with pytest.raises(TransientTrafficError, match=r"did not answer `show stat` within 0\.2s"):
                await HAProxyRuntime(sock, timeout=0.2).execute("show stat web 4 -1")
            assert time.monotonic() - started < 1.0

    asyncio.run(main())


def test_missing_and_refusing_sockets_are_transient(tmp_path: Path) -> None:
    with pytest.raises(TransientTrafficError, match="no HAProxy stats socket at"):
        asyncio.run(HAProxyRuntime(tmp_path / "none.sock").execute("show info"))
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # bound, never listening: connections are refused
    with pytest.raises(TransientTrafficError, match="cannot talk to HAProxy"):
        asyncio.run(HAProxyRuntime(stale).execute("show info"))


@pytest.mark.parametrize(
    "command", ["show info; shutdown frontend traffic", "show info\nshutdown", "", "a\x00b"]
)
def test_only_one_plain_command_is_ever_sent(tmp_path: Path, command: str) -> None:
    with pytest.raises(TrafficError, match="refusing to send"):
        asyncio.run(HAProxyRuntime(tmp_path / "never-opened.sock").execute(command))


@pytest.mark.integration
def test_registering_while_haproxy_is_still_starting_succeeds_once_it_answers(tmp_path: Path) -> None:
    process = HAProxyProcess(tmp_path / "lb")
    stale = process.socket_path
    stale.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # a dead HAProxy's socket file: refused until the new one replaces it

    async def main() -> int:
        backend = HAProxyBackend(stale, "web", rng=random.Random(2), attempts=1)
        attempts = [0]

        async def register() -> None:
            attempts[0] += 1
            await backend.register("h1", "127.0.21.1", 18001, admitted=True)

        loop = asyncio.get_running_loop()
        def start_late() -> None:
            time.sleep(0.3)
            process.start()

        starting = loop.run_in_executor(None, start_late)
        await with_retries(register, attempts=12, base=0.05, cap=0.2, rng=random.Random(2))
        await starting
        assert (await backend.stats())["h1"].admin_state == ServerState.READY
        return attempts[0]

    try:
        attempts = asyncio.run(main())
    finally:
        process.stop()
    assert attempts >= 2  # refused at least once before HAProxy took over the path
