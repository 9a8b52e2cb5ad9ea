"""``run_agent``: the channel to the server, the reconnect loop, and the controller beside it.

The agent dials out (it listens only for a polling balancer, on the optional
readiness endpoint of `headway.agent.readiness`): ``hello`` with what it observes,
then ``welcome`` and ``desired`` messages at any time; it sends ``report``
whenever its observation changes and every heartbeat. When the server is
away it keeps the app running and retries with jittered exponential
backoff capped at 5 s, logging one line per kind of trouble.

Given several servers (`headway.agent.servers`), it connects to the first;
when a connection fails or is lost, the next attempt goes to the next server
(round robin) at once, and it pauses (with that backoff) once per round of
attempts, so it never loops busily. A welcomed session resets the backoff, so
the pause after losing one is at most 0.2 s. With one server this is the plain
backoff above.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import random
import signal
from pathlib import Path
from typing import IO

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from headway.agent.converge import Controller, wait_for_event
from headway.agent.readiness import ReadinessEndpoint
from headway.agent.servers import ServerList, channel_url_for, parse_servers
from headway.agent.settings import AgentSettings
from headway.clock import Clock, SystemClock
from headway.errors import Conflict, SpecError
from headway.protocol.messages import (
    Desired,
    ErrorMessage,
    Hello,
    Observation,
    Report,
    Welcome,
    server_message,
)

log = logging.getLogger("headway.agent")

BACKOFF_FIRST = 0.2
BACKOFF_CAP = 5.0
WELCOME_TIMEOUT = 10.0


class Refused(Exception):
    """The server accepted the connection, then refused this agent (an ``error`` message)."""


class Channel:
    """One WebSocket session at a time to one of the servers, forever.

    ``servers`` is shared with the controller's downloads (by default the controller's
    own `ServerList`), so they start from the server the channel uses now.
    """

    def __init__(self, settings: AgentSettings, controller: Controller, clock: Clock,
                 rng: random.Random, servers: ServerList | None = None) -> None:
        self.settings = settings
        self.controller = controller
        self.clock = clock
        self.rng = rng
        self.servers = servers if servers is not None else controller.servers
        self._last_problem: dict[str, str] = {}   # by server, since the last welcome
        self._welcomed = False

    async def run(self) -> None:
        await self.controller.adopted.wait()     # so the first hello says what runs
        backoff = BACKOFF_FIRST
        tries = 0                                # attempts since the last pause
        while True:
            self._welcomed = False
            server = self.servers.current
            problem = await self._attempt(server)
            if self._welcomed:
                backoff = BACKOFF_FIRST
            if problem != self._last_problem.get(server):
                log.warning("%s", problem)
                self._last_problem[server] = problem
            if len(self.servers) > 1:
                self.servers.advance()
            tries += 1
            if tries >= len(self.servers):       # a whole round: back off
                tries = 0
                delay = min(backoff, BACKOFF_CAP) * self.rng.uniform(0.5, 1.0)
                backoff = min(backoff * 2, BACKOFF_CAP)
                await asyncio.sleep(delay)

    async def _attempt(self, server: str) -> str:
        """One session with ``server``; what ended it, as a line for the log."""
        try:
            await self._session(server)
            return f"server {server} closed the channel"
        except InvalidStatus as error:
            status = error.response.status_code
            return (
                f"agent token refused; check --token (server {server})" if status in (401, 403)
                else f"server {server} refused the agent channel with HTTP {status}"
            )
        except (OSError, TimeoutError, InvalidHandshake) as error:
            return f"server {server} unreachable ({error or type(error).__name__}); retrying"
        except ConnectionClosed:
            return f"lost the channel to {server}; reconnecting"
        except Refused as error:
            return f"server {server} refused this agent: {error}"
        except ValidationError as error:
            return f"server {server} sent a message this agent does not understand: {error}"

    async def _session(self, server: str) -> None:
        """One connection to ``server`` (a base URL), until it closes."""
        settings = self.settings
        headers = {"Authorization": f"Bearer {settings.token}"}
        async with connect(
            channel_url_for(server), additional_headers=headers, open_timeout=10,
            ping_interval=20, ping_timeout=20, max_size=4 << 20, close_timeout=2,
            user_agent_header="headway-agent",
        ) as ws:
            sent = self.controller.observed
            hello = Hello(host=settings.name, address=settings.address,
                          labels=dict(settings.labels), observed=sent)
            await ws.send(hello.model_dump_json())
            heartbeat = settings.heartbeat
            async with asyncio.timeout(WELCOME_TIMEOUT):
                first = server_message.validate_json(await ws.recv())
            if isinstance(first, ErrorMessage):
                raise Refused(first.message)
            if isinstance(first, Welcome):
                heartbeat = min(heartbeat, first.heartbeat)
            else:
                self.controller.offer(first)
            log.info("connected to %s as host %s", server, settings.name)
            self._last_problem.clear()
            self._welcomed = True
            reader = asyncio.create_task(self._read(ws))
            writer = asyncio.create_task(self._write(ws, sent, heartbeat))
            try:
                done, _ = await asyncio.wait({reader, writer},
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            finally:
                for task in (reader, writer):
                    task.cancel()
                await asyncio.gather(reader, writer, return_exceptions=True)

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            message = server_message.validate_json(raw)
            if isinstance(message, Desired):
                self.controller.offer(message)
            elif isinstance(message, ErrorMessage):
                log.warning("server says: %s", message.message)

    async def _write(self, ws: ClientConnection, sent: Observation, heartbeat: float) -> None:
        last = self.clock.monotonic()
        while True:
            waiter = self.controller.observed_changed.waiter()
            observed = self.controller.observed
            due = last + heartbeat - self.clock.monotonic()
            if observed != sent or due <= 0:
                await ws.send(Report(observed=observed).model_dump_json())
                sent, last = observed, self.clock.monotonic()
                continue
            await wait_for_event(waiter, due)


def _check(settings: AgentSettings) -> None:
    parse_servers(settings.server)           # every URL, each refused with a hint
    if not settings.name:
        raise SpecError("the agent needs a host name", hint="pass --name")
    if settings.heartbeat <= 0:
        raise SpecError("heartbeat must be more than 0 seconds", hint="pass --heartbeat 15")


def _lock(state_dir: Path) -> IO[bytes]:
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = (state_dir / "agent.lock").open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise Conflict(f"another agent already uses the state directory {state_dir}",
                       hint="stop that agent, or give this one its own --state-dir") from None
    return handle


async def run_agent(settings: AgentSettings, clock: Clock | None = None) -> None:
    """Run the agent until cancelled, SIGTERM or SIGINT; the app keeps running after it."""
    _check(settings)
    clock = clock or SystemClock()
    lock = _lock(settings.state_dir)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    rng = random.Random(f"{settings.name}/{os.getpid()}")
    controller = Controller(settings, clock)
    channel = Channel(settings, controller, clock, rng)
    endpoint = ReadinessEndpoint(controller.readiness, settings.address, controller.publish)
    log.info("agent %s starting (state in %s)", settings.name, settings.state_dir)
    tasks = [
        asyncio.create_task(controller.run(), name="controller"),
        asyncio.create_task(channel.run(), name="channel"),
        asyncio.create_task(endpoint.run(), name="readiness"),
        asyncio.create_task(stop.wait(), name="stop"),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
        log.info("agent %s stopping; the app keeps running", settings.name)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        controller.close()
        for sig in installed:
            loop.remove_signal_handler(sig)
        lock.close()


__all__ = ["Channel", "run_agent"]
