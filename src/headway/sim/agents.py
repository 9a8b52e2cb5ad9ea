"""Simulated agents that speak the real protocol over real WebSockets.

They install nothing: on a new desired release they wait ``restart_time``
(a simulated restart), then report healthy on it, or failed when the
release's parameters say so (``SIM_FAIL=1``) or the host is in
``failing_hosts``. Used by server tests and by `bench/scale.py`.

Given several servers (``server`` as a comma-separated list), an agent
connects to the first and, when a connection fails or is lost, tries the
next one (round robin) at once; it pauses only after a whole round of
attempts. With one server it reconnects as it always did.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect

from headway.agent.servers import channel_url_for, split_servers
from headway.domain.models import Health
from headway.protocol.messages import (
    Desired,
    Hello,
    Observation,
    Report,
    Welcome,
    server_message,
)


@dataclass
class SimAgentConfig:
    server: str                      # http://127.0.0.1:7400, or several comma-separated
    token: str
    service: str
    restart_time: float = 0.05
    failing_hosts: frozenset[str] = frozenset()
    jitter: float = 0.0              # extra random restart time, seconds
    seed: int = 0
    heartbeat: float | None = None   # seconds between idle reports, as real agents send; None: none

    @property
    def servers(self) -> tuple[str, ...]:
        """Every server's base URL, in the order given."""
        return split_servers(self.server) or (self.server,)


@dataclass
class SimAgent:
    name: str
    address: str
    config: SimAgentConfig
    release: int | None = None
    generation: int = 0
    health: Health = Health.UNKNOWN
    restarts: int = 0
    desired_seen: list[tuple[int | None, int]] = field(default_factory=list)
    on_applied: Callable[[SimAgent, int], None] | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    server: str = ""                 # the base URL it connects (or last connected) to

    def observation(self) -> Observation:
        return Observation(release=self.release, generation=self.generation, health=self.health)

    async def run(self) -> None:
        """Connect (and reconnect) until cancelled."""
        servers = self.config.servers
        urls = [channel_url_for(server) for server in servers]
        rng = random.Random(f"{self.config.seed}:{self.name}")
        index = tries = 0            # tries: attempts since the last pause
        while True:
            self.server = servers[index]
            failed = False
            try:
                async with connect(
                    urls[index],
                    additional_headers={"Authorization": f"Bearer {self.config.token}"},
                    local_addr=(self.address, 0),
                    open_timeout=30,
                    # with heartbeats, pings too (as real agents): a server that stopped
                    # answering is left for the next one after two heartbeats
                    ping_interval=self.config.heartbeat,
                    ping_timeout=2 * self.config.heartbeat if self.config.heartbeat else None,
                    max_queue=4,
                ) as ws:
                    await self._session(ws, rng)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.connected.clear()
                failed = True
            if len(servers) == 1:
                if failed:
                    await asyncio.sleep(0.2 + rng.random() * 0.5)
                continue
            self.connected.clear()
            index = (index + 1) % len(servers)
            tries += 1
            if tries >= len(servers):    # a whole round: pause (so never a busy loop)
                tries = 0
                await asyncio.sleep(0.2 + rng.random() * 0.5)

    async def _session(self, ws: ClientConnection, rng: random.Random) -> None:
        hello = Hello(
            host=self.name,
            address=self.address,
            labels={"service": self.config.service},
            observed=self.observation(),
        )
        await ws.send(hello.model_dump_json())
        work: asyncio.Task[None] | None = None
        beats: asyncio.Task[None] | None = None
        try:
            async for frame in ws:
                message = server_message.validate_json(frame)
                if isinstance(message, Welcome):
                    self.connected.set()
                    if self.config.heartbeat is not None and beats is None:
                        beats = asyncio.create_task(self._heartbeat(ws, self.config.heartbeat))
                elif isinstance(message, Desired):
                    if work is not None:
                        work.cancel()
                    work = asyncio.create_task(self._converge(ws, message, rng))
        finally:
            for task in (work, beats):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

    async def _heartbeat(self, ws: ClientConnection, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            await ws.send(Report(observed=self.observation()).model_dump_json())

    async def _converge(self, ws: ClientConnection, desired: Desired, rng: random.Random) -> None:
        number = desired.release.number if desired.release else None
        self.desired_seen.append((number, desired.generation))
        if number != self.release:
            self.health = Health.STARTING
            await ws.send(Report(observed=self.observation()).model_dump_json())
            await asyncio.sleep(self.config.restart_time + rng.random() * self.config.jitter)
            self.restarts += 1
            self.release = number
        params = desired.release.params if desired.release else {}
        fails = self.name in self.config.failing_hosts or params.get("SIM_FAIL") == "1"
        self.health = Health.FAILED if fails and number is not None else Health.HEALTHY
        self.generation = desired.generation
        await ws.send(Report(observed=self.observation()).model_dump_json())
        if self.on_applied is not None:
            self.on_applied(self, desired.generation)
