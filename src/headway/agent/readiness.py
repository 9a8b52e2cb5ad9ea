"""The readiness endpoint: ``GET /ready`` for load balancers that poll each host.

With ``traffic.balancer: readiness`` a cloud balancer (or any balancer that health-checks
hosts) polls ``http://<host address>:<traffic.readiness.port>/ready`` and sends requests only
to hosts answering 200. The agent serves that port itself, so it starts and stops with the
agent and lives through app restarts:

    200 ready                         the server wants the host in load balancing
                                      (``Desired.serve``) and the app's last health
                                      check passed
    503 not ready: <reason>           drained by the server, or the app is not healthy
                                      (starting, stopping for a switch, crashed)

Nothing else is served on that port (404, 405 for other methods). Changes of the answer go
into the observation's detail (``/ready: 503 (drained by the server)``), so they show on the
server. The last ``serve`` is kept in ``<state-dir>/serve.json``: an agent restarted while
the server is away answers as before.

A polling balancer notices a 503 only after ``interval * fall`` (`ReadinessTraffic.settle_time`).
The server's drain waits that long before the app may change; the agent also refuses to stop
the app for a switch before /ready has answered 503 for that long (`Readiness.settle_left`),
which covers a drain and a new release arriving together after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

from headway.agent.files import atomic_write_json, read_json
from headway.clock import Clock
from headway.domain.models import Health
from headway.domain.spec import BalancerKind, ReadinessTraffic, ServiceSpec

log = logging.getLogger("headway.agent")

PATH = "/ready"
SERVE_FILE = "serve.json"
REQUEST_TIMEOUT = 5.0  # seconds a client has to send its request line and headers
MAX_HEADER_LINES = 100
LINE_LIMIT = 8192
RETRY_MIN, RETRY_MAX = 0.5, 5.0  # backoff while the port cannot be bound


def readiness_of(service: ServiceSpec | None) -> ReadinessTraffic | None:
    """The readiness settings of ``service`` when a polling balancer fronts it."""
    if service is None or service.traffic.balancer is not BalancerKind.READINESS:
        return None
    return service.traffic.readiness


class Readiness:
    """What GET /ready answers, and since when it has not answered 200.

    The controller feeds it (`set_serve` from each desired state, `update` on every
    observation); the endpoint reads `answer`.
    """

    def __init__(self, state_dir: Path, clock: Clock) -> None:
        self._state_dir = state_dir
        self._clock = clock
        saved = read_json(state_dir / SERVE_FILE)
        self.serve = not (saved is not None and saved.get("serve") is False)
        self.spec: ReadinessTraffic | None = None
        self.ready = False
        self.reason = "the agent is starting"
        self.detail = ""  # the health check's complaint, for the 503 body
        self.problem = ""  # why the endpoint is not listening ("" when it is, or need not)
        # Conservative: a previous agent process may have answered 200 until just now.
        self.unready_since: float = clock.monotonic()
        self.reconfigured = asyncio.Event()  # the endpoint's port may have changed

    def configure(self, service: ServiceSpec | None) -> None:
        spec = readiness_of(service)
        if spec != self.spec:
            self.spec = spec
            self.reconfigured.set()

    def set_serve(self, serve: bool) -> bool:
        """Follow the server's flag; True if it changed (then saved, for agent restarts)."""
        if serve == self.serve:
            return False
        self.serve = serve
        try:
            atomic_write_json(self._state_dir / SERVE_FILE, {"serve": serve})
        except OSError as error:  # the answer still follows; only a restart would forget
            log.warning("cannot save the serve flag in %s: %s", self._state_dir, error)
        return True

    def update(self, health: Health, detail: str) -> None:
        """Recompute the answer from the serve flag and the app's health."""
        if not self.serve:
            ready, reason = False, "drained by the server"
        elif health is not Health.HEALTHY:
            ready, reason = False, f"app {health.value}"
        else:
            ready, reason = True, ""
        self.detail = "" if ready else detail
        if ready == self.ready and reason == self.reason:
            return
        if self.spec is not None:
            log.info("/ready now answers %s", "200" if ready else f"503 ({reason})")
        if self.ready and not ready:
            self.unready_since = self._clock.monotonic()
        self.ready, self.reason = ready, reason

    def note(self) -> str:
        """One line for the observation's detail; empty without a readiness balancer."""
        if self.spec is None:
            return ""
        if self.problem:
            return f"/ready is down: {self.problem}"
        return "/ready: 200" if self.ready else f"/ready: 503 ({self.reason})"

    def answer(self) -> tuple[bool, str]:
        """(ready, one-line reason) for a GET /ready now."""
        if self.ready:
            return True, ""
        text = f"{self.reason}: {self.detail}" if self.detail else self.reason
        return False, " ".join(text.split())

    def settle_left(self) -> float:
        """Seconds until the balancer surely sends nothing new: its settle time after
        /ready stopped answering 200 (0 without a readiness balancer)."""
        if self.spec is None:
            return 0.0
        if self.ready:
            return self.spec.settle_time
        return max(0.0, self.unready_since + self.spec.settle_time - self._clock.monotonic())


class ReadinessEndpoint:
    """Listens on ``address:<readiness port>`` while a readiness balancer fronts the service."""

    def __init__(self, readiness: Readiness, address: str, on_change: Callable[[], None]) -> None:
        self.readiness = readiness
        self.address = address
        self._on_change = on_change  # the problem line changed: report it
        self.port: int | None = None  # where it listens now

    async def run(self) -> None:
        """Follow the configured port until cancelled."""
        server: asyncio.Server | None = None
        backoff = RETRY_MIN
        try:
            while True:
                self.readiness.reconfigured.clear()
                spec = self.readiness.spec
                want = spec.port if spec is not None else None
                retry: float | None = None
                if want != self.port:
                    if server is not None:
                        await _close(server)
                        server, self.port = None, None
                        log.info("readiness endpoint closed")
                    if want is not None:
                        try:
                            server = await asyncio.start_server(
                                self._handle, self.address, want, limit=LINE_LIMIT,
                                reuse_address=True,
                            )
                        except OSError as error:
                            reason = error.strerror or str(error)
                            self._problem(f"cannot listen on {self.address}:{want} ({reason}); "
                                          f"retrying in {backoff:g}s")
                            retry, backoff = backoff, min(backoff * 2, RETRY_MAX)
                        else:
                            self.port, backoff = want, RETRY_MIN
                            log.info("readiness endpoint on http://%s:%d%s", self.address, want, PATH)
                    if retry is None:
                        self._problem("")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(retry):
                        await self.readiness.reconfigured.wait()
        finally:
            if server is not None:
                await _close(server)
                self.port = None

    def _problem(self, text: str) -> None:
        if text != self.readiness.problem:
            if text:
                log.warning("readiness endpoint: %s", text)
            self.readiness.problem = text
            self._on_change()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                line = await reader.readline()
                for _ in range(MAX_HEADER_LINES):
                    if (await reader.readline()).strip() == b"":
                        break
            writer.write(self._respond(line))
            await writer.drain()
        except (TimeoutError, OSError, ValueError):  # ValueError: a line over the limit
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _respond(self, line: bytes) -> bytes:
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response(HTTPStatus.BAD_REQUEST, "bad request\n", head=False)
        method, target = parts[0], parts[1]
        head = method == "HEAD"
        if urlsplit(target).path != PATH:
            return _response(HTTPStatus.NOT_FOUND, f"not found: this port answers only GET {PATH}\n",
                             head=head)
        if method not in ("GET", "HEAD"):
            return _response(HTTPStatus.METHOD_NOT_ALLOWED, "use GET\n", head=False,
                             extra="Allow: GET, HEAD\r\n")
        ready, reason = self.readiness.answer()
        if ready:
            return _response(HTTPStatus.OK, "ready\n", head=head)
        return _response(HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {reason}\n", head=head)


def _response(status: HTTPStatus, body: str, *, head: bool, extra: str = "") -> bytes:
    data = body.encode("utf-8", "replace")
    header = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Cache-Control: no-store\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return header if head else header + data


async def _close(server: asyncio.Server) -> None:
    server.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2.0):
            await server.wait_closed()


__all__ = ["Readiness", "ReadinessEndpoint", "readiness_of"]
