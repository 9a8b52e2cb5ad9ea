"""An in-memory load balancer for engine and runner tests.

It passes the same conformance suite as the HAProxy adapter
(`headway.testing.traffic_conformance`) and adds knobs to script what a real balancer does
on its own::

    fake = FakeTrafficBackend()
    await fake.register("h1", "127.0.0.1", 8080, admitted=True)
    fake.set_in_flight("h1", 2)                # two requests in flight
    fake.script_in_flight("h1", [2, 1, 0])     # ... ending over the next three stats() calls
    fake.fail_next(3)                          # the next 3 calls raise TransientTrafficError
    fake.fail_next(1, transient=False)         # the next call raises TrafficError
    fake.freeze("h1")                          # state changes on h1 are accepted, not applied
    fake.record("h1", 200, 12.5)               # one answered request in the counters
    fake.calls                                 # [("register", "h1", ...), ("set_state", ...)]
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from headway.traffic.base import (
    ServerState,
    ServerStats,
    TrafficError,
    TransientTrafficError,
    check_address,
    check_name,
    check_port,
    check_weight,
)


@dataclass
class FakeServer:
    address: str
    port: int
    state: ServerState = ServerState.MAINT
    weight: int = 1
    in_flight: int = 0
    script: deque[int] = field(default_factory=deque)
    frozen: bool = False
    total: int = 0
    responses_2xx: int = 0
    responses_5xx: int = 0
    connection_errors: int = 0
    response_errors: int = 0
    response_ms: list[float] = field(default_factory=list)


class FakeTrafficBackend:
    def __init__(self, *, name: str = "fake", settle_time: float = 0.0) -> None:
        self.name = name
        self.settle_time = settle_time
        self.servers: dict[str, FakeServer] = {}
        self.calls: list[tuple[object, ...]] = []
        self._failures: deque[bool] = deque()  # True: transient

    # --- knobs for tests -----------------------------------------------------------------------

    def fail_next(self, count: int = 1, *, transient: bool = True) -> None:
        self._failures.extend([transient] * count)

    def set_in_flight(self, host: str, count: int) -> None:
        server = self._server(host)
        server.in_flight = count
        server.script.clear()

    def script_in_flight(self, host: str, counts: list[int]) -> None:
        """Successive `stats` calls report these counts; the last one stays."""
        self._server(host).script = deque(counts)

    def freeze(self, host: str, frozen: bool = True) -> None:
        self._server(host).frozen = frozen

    def record(self, host: str, code: int, ms: float = 1.0) -> None:
        server = self._server(host)
        server.total += 1
        server.responses_2xx += 200 <= code < 300
        server.responses_5xx += 500 <= code < 600
        server.response_ms = [*server.response_ms[-1023:], ms]

    # --- TrafficBackend ------------------------------------------------------------------------

    async def register(self, host: str, address: str, port: int, *, admitted: bool) -> None:
        self._call("register", check_name(host), address, port, admitted)
        ip, port = check_address(address), check_port(port)
        server = self.servers.get(host)
        if server is None:
            server = self.servers[host] = FakeServer(ip, port)
        server.address, server.port = ip, port
        if admitted:
            self._apply(server, ServerState.READY)

    async def deregister(self, host: str) -> None:
        self._call("deregister", check_name(host))
        server = self.servers.get(host)
        if server is None:
            return
        self._apply(server, ServerState.MAINT)
        if server.in_flight:
            raise TransientTrafficError(
                f"{host} still has {server.in_flight} request(s) in flight; cannot remove it",
                hint="wait for its requests to finish (drain it first)",
            )
        del self.servers[host]

    async def set_state(self, host: str, state: ServerState) -> None:
        self._call("set_state", check_name(host), ServerState(state))
        self._apply(self._known(host), ServerState(state))

    async def set_weight(self, host: str, weight: int) -> None:
        self._call("set_weight", check_name(host), weight)
        self._known(host).weight = check_weight(weight)

    async def stats(self) -> dict[str, ServerStats]:
        self._call("stats")
        result = {}
        for name, server in self.servers.items():
            if server.script:
                server.in_flight = server.script.popleft() if len(server.script) > 1 else server.script[0]
            ms = server.response_ms
            result[name] = ServerStats(
                name=name,
                admin_state=server.state,
                status={ServerState.READY: "UP", ServerState.DRAIN: "DRAIN", ServerState.MAINT: "MAINT"}[
                    server.state
                ],
                current_sessions=server.in_flight,
                total_sessions=server.total,
                weight=server.weight,
                responses_2xx=server.responses_2xx,
                responses_5xx=server.responses_5xx,
                connection_errors=server.connection_errors,
                response_errors=server.response_errors,
                avg_response_ms=sum(ms) / len(ms) if ms else None,
            )
        return result

    # --- helpers -------------------------------------------------------------------------------

    def _call(self, *call: object) -> None:
        self.calls.append(call)
        if self._failures:
            if self._failures.popleft():
                raise TransientTrafficError(
                    f"{self.name} is throttling calls (injected)", hint="retry with backoff"
                )
            raise TrafficError(f"{self.name} refused the call (injected)", hint="check the fake's setup")

    def _server(self, host: str) -> FakeServer:
        """For the knobs: a test that names an unknown host has a bug."""
        if host not in self.servers:
            raise KeyError(f"{host} is not registered with the fake balancer")
        return self.servers[host]

    def _known(self, host: str) -> FakeServer:
        server = self.servers.get(host)
        if server is None:
            raise TrafficError(
                f"{self.name} has no server {host}", hint="register the host with the load balancer first"
            )
        return server

    @staticmethod
    def _apply(server: FakeServer, state: ServerState) -> None:
        if not server.frozen:
            server.state = state
