"""Real traffic through real HAProxy to sample apps on 127.0.21.x while hosts are drained.

Timings are printed (``pytest -s``) for docs/benchmarks.md: T2 asks that an idle host be out
within 1 s, and a busy one within 1 s of its last request ending.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import httpx
import pytest

from headway.clock import SystemClock
from headway.traffic.base import ServerState, TrafficError, TransientTrafficError
from headway.traffic.drain import admit, drain
from headway.traffic.haproxy import HAProxyBackend
from headway.traffic.haproxy_process import HAProxyProcess

from .conftest import Load, Result, SampleApp, Spy, backend_for, free_port, server, wait_for

pytestmark = pytest.mark.integration

StartApp = Callable[[str, str], SampleApp]


async def fleet(
    haproxy: HAProxyProcess, apps: StartApp, hosts: int
) -> tuple[HAProxyBackend, list[SampleApp]]:
    backend = backend_for(haproxy)
    started = [apps(f"h{i}", f"h{i}-v1") for i in range(1, hosts + 1)]
    for app in started:
        await backend.register(app.host, app.address, app.port, admitted=True)
    return backend, started


async def pinned(client: httpx.AsyncClient, backend: HAProxyBackend, host: str, path: str,
                 others: list[str]) -> asyncio.Task[tuple[httpx.Response, float]]:
    """Start a request that surely lands on ``host``: the others are out while it is sent."""
    for other in others:
        await backend.set_state(other, ServerState.MAINT)

    async def call() -> tuple[httpx.Response, float]:
        response = await client.get(path)
        return response, time.monotonic()

    task = asyncio.create_task(call())

    async def busy() -> bool:
        return (await server(backend, host)).current_sessions == 1

    await wait_for(busy, 5, f"the request to reach {host}")
    for other in others:
        await backend.set_state(other, ServerState.READY)
    return task


def failures(results: list[Result]) -> list[Result]:
    return [r for r in results if r.status != 200]


def test_drain_waits_for_the_request_in_flight_and_no_new_request_reaches_the_host(
    haproxy: HAProxyProcess, apps: StartApp
) -> None:
    async def main() -> None:
        backend, _ = await fleet(haproxy, apps, 2)
        async with httpx.AsyncClient(base_url=haproxy.url, timeout=10) as client:
            slow = await pinned(client, backend, "h1", "/slow?ms=1500", ["h2"])
            load = Load(client, rate=100).start()
            await asyncio.sleep(0.2)
            spy = Spy(backend, "h1")
            started = time.monotonic()
            outcome = await drain(spy, "h1", timeout=10, clock=SystemClock(), rng=random.Random(1))
            drained_at = time.monotonic()
            response, slow_done = await slow
            after_drain = (await server(backend, "h1")).total_sessions
            await asyncio.sleep(0.3)
            results = await load.stop()
            final = (await backend.stats())["h1"]

        assert outcome.confirmed and not outcome.timed_out and outcome.in_flight_left == 0, outcome
        assert response.status_code == 200 and response.headers["x-app-version"] == "h1-v1"
        # The drain lasted as long as the slow request, not as long as its 10 s timeout ...
        assert 1.0 <= outcome.waited <= 1.8, outcome
        # ... and ended within moments of the request's end (T2: within 1 s).
        assert drained_at - slow_done < 0.5, drained_at - slow_done
        assert spy.confirmed_at is not None
        print(f"\nbusy drain: {outcome.waited:.3f}s in all, confirmed after "
              f"{spy.confirmed_at - started:.3f}s, ended {drained_at - slow_done:.3f}s after the "
              "last request finished")
        # Nothing sent after the drain was confirmed reached h1; h1's counters did not move.
        after = [r for r in results if r.sent > spy.confirmed_at]
        assert len(after) > 100 and {r.version for r in after} == {"h2-v1"}
        assert {r.version for r in results if r.sent < started} == {"h1-v1", "h2-v1"}
        assert final.total_sessions == after_drain == spy.sessions_at_confirm
        assert failures(results) == []

    asyncio.run(main())


def test_an_idle_host_drains_within_a_second_with_and_without_traffic(
    haproxy: HAProxyProcess, apps: StartApp
) -> None:
    async def main() -> tuple[float, float]:
        backend, _ = await fleet(haproxy, apps, 3)
        clock, rng = SystemClock(), random.Random(2)
        quiet = await drain(backend, "h1", timeout=30, clock=clock, rng=rng)
        async with httpx.AsyncClient(base_url=haproxy.url, timeout=10) as client:
            load = Load(client, rate=150).start()
            await asyncio.sleep(0.3)
            busy = await drain(backend, "h2", timeout=30, clock=clock, rng=rng)
            await asyncio.sleep(0.2)
            results = await load.stop()
        for outcome in (quiet, busy):
            assert outcome.confirmed and not outcome.timed_out and outcome.in_flight_left == 0, outcome
            assert outcome.waited < 1.0, outcome
        assert failures(results) == []
        assert results[-1].version == "h3-v1"
        return quiet.waited, busy.waited

    quiet, busy = asyncio.run(main())
    print(f"\nidle drain: {quiet:.3f}s with no traffic, {busy:.3f}s with 150 fast req/s to the fleet")


def test_the_drain_timeout_bounds_the_wait_for_a_request_that_does_not_end(
    haproxy: HAProxyProcess, apps: StartApp
) -> None:
    async def main() -> None:
        backend, started = await fleet(haproxy, apps, 2)
        async with httpx.AsyncClient(base_url=haproxy.url, timeout=30) as client:
            endless = await pinned(client, backend, "h1", "/slow?ms=60000", ["h2"])
            outcome = await drain(backend, "h1", timeout=1.0, clock=SystemClock(), rng=random.Random(3))
            assert outcome.confirmed and outcome.timed_out and outcome.in_flight_left == 1, outcome
            assert 1.0 <= outcome.waited < 1.5, outcome
            assert "timed out after 1s with 1 request(s) still in flight" in outcome.detail
            # A busy server cannot be removed; the refusal is transient and says why.
            with pytest.raises(TransientTrafficError, match="connections attached"):
                await backend.deregister("h1")
            started[0].kill()
            endless.cancel()
            await asyncio.gather(endless, return_exceptions=True)

    asyncio.run(main())


def test_no_request_fails_while_hosts_are_drained_stopped_restarted_and_readmitted(
    haproxy: HAProxyProcess, apps: StartApp
) -> None:
    async def main() -> tuple[list[Result], list[float]]:
        backend, started = await fleet(haproxy, apps, 3)
        clock, rng = SystemClock(), random.Random(4)
        drains: list[float] = []
        async with httpx.AsyncClient(base_url=haproxy.url, timeout=30) as client:
            # 100 req/s, one in ten a 300 ms request, so that drains find requests in flight.
            load = Load(client, rate=100, path=lambda i: "/slow?ms=300" if i % 10 == 0 else "/").start()
            await asyncio.sleep(0.5)
            for app in started[:2]:
                outcome = await drain(backend, app.host, timeout=10, clock=clock, rng=rng)
                assert outcome.confirmed and not outcome.timed_out, outcome
                drains.append(outcome.waited)
                # SIGTERM (nothing is in flight any more), then the new release; in threads, so
                # that the load generator keeps its pace meanwhile.
                assert await asyncio.to_thread(app.terminate) == 0
                await asyncio.to_thread(app.start, f"{app.host}-v2")
                await admit(backend, app.host, clock=clock, rng=rng)
                await asyncio.sleep(0.6)  # readmitted hosts pass a health check and take traffic
            results = await load.stop()
        return results, drains

    results, drains = asyncio.run(main())
    span = results[-1].sent - results[0].sent
    assert span > 2.0 and len(results) >= 0.9 * 100 * span  # the open loop kept its pace
    assert failures(results) == [], failures(results)[:5]
    versions = {r.version for r in results}
    assert {"h1-v1", "h1-v2", "h2-v1", "h2-v2", "h3-v1"} <= versions
    print(f"\nzero-downtime cycle: {len(results)} requests in {span:.1f}s, all 200; drains took "
          + ", ".join(f"{w:.3f}s" for w in drains))


def test_two_hosts_restarted_in_turn_lose_no_request_when_admit_waits_until_serving(
    haproxy: HAProxyProcess, apps: StartApp
) -> None:
    """Two hosts, one out at a time, the next drained the moment the last admit returns.

    A host drained while its app restarts is DOWN by HAProxy's health checks; ``state ready``
    leaves it DOWN until its next check passes (up to ``inter``, 500 ms). If admit returned
    at READY, draining the other host next would leave HAProxy no server: 503s. With
    ``until_serving`` admit returns once the host is UP, so not one request fails.
    """

    async def main() -> tuple[list[Result], list[tuple[str, float, str]]]:
        backend, started = await fleet(haproxy, apps, 2)
        clock, rng = SystemClock(), random.Random(6)
        admits: list[tuple[str, float, str]] = []
        async with httpx.AsyncClient(base_url=haproxy.url, timeout=30) as client:
            load = Load(client, rate=100).start()
            await asyncio.sleep(0.3)
            for round_ in (2, 3):
                for app in started:
                    outcome = await drain(backend, app.host, timeout=10, clock=clock, rng=rng)
                    assert outcome.confirmed and not outcome.timed_out, outcome
                    assert await asyncio.to_thread(app.terminate) == 0

                    async def down(host: str = app.host) -> bool:
                        return (await server(backend, host)).status == "DOWN"

                    await wait_for(down, 5, f"{app.host} to be DOWN by its health checks")
                    await asyncio.to_thread(app.start, f"{app.host}-v{round_}")
                    began = time.monotonic()
                    await admit(backend, app.host, clock=clock, rng=rng, until_serving=True)
                    took = time.monotonic() - began
                    admits.append((app.host, took, (await server(backend, app.host)).status))
            await asyncio.sleep(0.3)
            results = await load.stop()
        return results, admits

    results, admits = asyncio.run(main())
    assert failures(results) == [], failures(results)[:5]
    assert {status for _, _, status in admits} == {"UP"}
    assert {"h1-v3", "h2-v3"} <= {r.version for r in results}
    print("\nadmit until serving, after a restart while drained: "
          + ", ".join(f"{host} {took:.3f}s" for host, took, _ in admits))


def test_a_host_out_of_maint_whose_app_does_not_answer_is_not_taken_as_admitted(
    haproxy: HAProxyProcess,
) -> None:
    """HAProxy takes a server out of MAINT as up before its first check (``UP 1/2``), app or
    not; admit until serving waits for the check and fails, within its timeout, saying so."""

    async def main() -> None:
        backend = backend_for(haproxy)
        await backend.register("gone", "127.0.21.3", free_port("127.0.21.3"), admitted=False)
        clock, rng = SystemClock(), random.Random(2)
        began = time.monotonic()
        with pytest.raises(TrafficError, match=r"gone is ready but takes no traffic after 2s") as raised:
            await admit(backend, "gone", clock=clock, rng=rng, timeout=2, until_serving=True)
        assert 2.0 <= time.monotonic() - began < 3.0
        assert "health check fails" in raised.value.hint
        await backend.set_state("gone", ServerState.MAINT)
        await admit(backend, "gone", clock=clock, rng=rng)  # READY read back is all it checks
        stats = await server(backend, "gone")
        assert stats.admin_state == ServerState.READY and not stats.in_service
        assert stats.status != "UP"

    asyncio.run(main())


class KeepAliveApp:
    """An HTTP/1.1 server that keeps connections open unless asked not to, counting both."""

    def __init__(self, name: str, address: str) -> None:
        self.name, self.address = name, address
        self.port = 0
        self.connections = 0
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> KeepAliveApp:
        self._server = await asyncio.start_server(self._handle, self.address, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                body = self.name.encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-App-Version: %s\r\n\r\n%s"
                             % (len(body), body, body))
                await writer.drain()
                if b"connection: close" in head.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def test_after_a_confirmed_drain_even_a_kept_alive_client_reaches_only_other_hosts(
    haproxy: HAProxyProcess,
) -> None:
    async def main() -> None:
        k1 = await KeepAliveApp("k1", "127.0.21.1").start()
        k2 = await KeepAliveApp("k2", "127.0.21.2").start()
        backend = backend_for(haproxy, check=False)
        for app in (k1, k2):
            await backend.register(app.name, app.address, app.port, admitted=True)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        try:
            async with httpx.AsyncClient(base_url=haproxy.url, timeout=5, limits=limits) as client:
                before = [(await client.get("/")).headers["x-app-version"] for _ in range(10)]
                outcome = await drain(backend, "k1", timeout=5, clock=SystemClock(), rng=random.Random(5))
                k1_requests = k1.requests
                after = [(await client.get("/")).headers["x-app-version"] for _ in range(20)]
        finally:
            await k1.close()
            await k2.close()
        assert outcome.confirmed and not outcome.timed_out
        assert set(before) == {"k1", "k2"} and set(after) == {"k2"}
        assert k1.requests == k1_requests
        # `option http-server-close`: HAProxy keeps no idle connection to any server.
        assert (k1.connections, k2.connections) == (k1.requests, k2.requests)

    asyncio.run(main())
