"""What every `TrafficBackend` must do: a test kit any implementation runs.

Each check is an async function taking a backend; it registers hosts named ``conform-*``
(addresses 127.0.21.251-253, where nothing need listen), removes them again, and raises
`ConformanceFailure` saying what the backend did wrong. The backend may hold other servers.
Run them one by one (``CHECKS``, e.g. as parametrized pytest cases) or all at once::

    asyncio.run(run_conformance(backend))
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from headway.clock import SystemClock
from headway.traffic.base import ServerState, ServerStats, TrafficBackend, TrafficError, TransientTrafficError
from headway.traffic.drain import admit, drain

Check = Callable[[TrafficBackend], Coroutine[Any, Any, None]]

A, B, C = "conform-a", "conform-b", "conform-c"
ADDRESSES = {A: ("127.0.21.251", 18251), B: ("127.0.21.252", 18252), C: ("127.0.21.253", 18253)}


class ConformanceFailure(AssertionError):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceFailure(message)


@asynccontextmanager
async def _hosts(backend: TrafficBackend, *names: str) -> AsyncIterator[None]:
    """Clean slate before, and nothing left behind after."""
    for name in names:
        await backend.deregister(name)
    try:
        yield
    finally:
        for name in names:
            await backend.deregister(name)


async def _register(backend: TrafficBackend, name: str, *, admitted: bool, port: int | None = None) -> None:
    address, default_port = ADDRESSES[name]
    await backend.register(name, address, port or default_port, admitted=admitted)


async def _server(backend: TrafficBackend, name: str) -> ServerStats:
    stats = await backend.stats()
    expect(name in stats, f"stats() has no entry for registered host {name}: {sorted(stats)}")
    return stats[name]


async def _raises_permanent(what: str, call: Callable[[], Awaitable[None]]) -> TrafficError:
    try:
        await call()
    except TransientTrafficError as error:
        raise ConformanceFailure(
            f"{what} raised a transient error; retrying cannot fix it: {error}"
        ) from None
    except TrafficError as error:
        expect(bool(error.hint), f"{what} raised {error!r} without a hint")
        return error
    raise ConformanceFailure(f"{what} did not raise TrafficError")


async def check_identity(backend: TrafficBackend) -> None:
    expect(isinstance(backend.name, str) and bool(backend.name), "backend.name must be a non-empty string")
    expect(
        isinstance(backend.settle_time, (int, float)) and backend.settle_time >= 0,
        f"settle_time must be a number >= 0, not {backend.settle_time!r}",
    )


async def check_new_server_starts_in_maint(backend: TrafficBackend) -> None:
    async with _hosts(backend, A, B):
        await _register(backend, A, admitted=False)
        await _register(backend, B, admitted=True)
        a, b = await _server(backend, A), await _server(backend, B)
        expect(
            a.admin_state == ServerState.MAINT, f"a host registered unadmitted is {a.admin_state}, not maint"
        )
        expect(
            b.admin_state == ServerState.READY, f"a host registered admitted is {b.admin_state}, not ready"
        )


async def check_register_is_idempotent(backend: TrafficBackend) -> None:
    async with _hosts(backend, A):
        await _register(backend, A, admitted=False)
        await _register(backend, A, admitted=False)
        expect(list(await backend.stats()).count(A) == 1, "registering twice must leave one server")
        expect(
            (await _server(backend, A)).admin_state == ServerState.MAINT, "re-registering changed the state"
        )
        await backend.set_state(A, ServerState.DRAIN)
        await _register(backend, A, admitted=False)
        state = (await _server(backend, A)).admin_state
        expect(
            state == ServerState.DRAIN, f"re-registering unadmitted must keep the state (drain), got {state}"
        )
        await _register(backend, A, admitted=True, port=ADDRESSES[A][1] + 1)  # it moved
        state = (await _server(backend, A)).admin_state
        expect(state == ServerState.READY, f"re-registering admitted must end ready, got {state}")


async def check_states_round_trip(backend: TrafficBackend) -> None:
    async with _hosts(backend, A):
        await _register(backend, A, admitted=False)
        order = [
            ServerState.READY,
            ServerState.DRAIN,
            ServerState.MAINT,
            ServerState.DRAIN,
            ServerState.READY,
            ServerState.MAINT,
            ServerState.READY,
            ServerState.READY,
        ]
        for state in order:
            await backend.set_state(A, state)
            seen = (await _server(backend, A)).admin_state
            expect(seen == state, f"set_state({state}) reads back as {seen}")


async def check_weights(backend: TrafficBackend) -> None:
    async with _hosts(backend, A):
        await _register(backend, A, admitted=True)
        for weight in (0, 1, 128, 256, 50):
            await backend.set_weight(A, weight)
            seen = (await _server(backend, A)).weight
            expect(seen == weight, f"set_weight({weight}) reads back as {seen}")
        await backend.set_state(A, ServerState.DRAIN)
        await backend.set_state(A, ServerState.READY)
        seen = (await _server(backend, A)).weight
        expect(seen == 50, f"a drain and readmit changed the weight from 50 to {seen}")


async def check_bad_input_is_refused(backend: TrafficBackend) -> None:
    async with _hosts(backend, A):
        await _register(backend, A, admitted=False)
        await _raises_permanent("set_weight(-1)", lambda: backend.set_weight(A, -1))
        await _raises_permanent("set_weight(257)", lambda: backend.set_weight(A, 257))
        await _raises_permanent(
            "set_state of an unknown host", lambda: backend.set_state("conform-unknown", ServerState.READY)
        )
        await _raises_permanent(
            "set_weight of an unknown host", lambda: backend.set_weight("conform-unknown", 1)
        )
        await _raises_permanent(
            "a host name with a space and ';'",
            lambda: backend.register("bad name;x", "127.0.21.251", 1, admitted=False),
        )
        await _raises_permanent(
            "a host name with a newline", lambda: backend.set_state("a\nshow info", ServerState.READY)
        )
        await _raises_permanent(
            "an address that is a name", lambda: backend.register(B, "example.invalid", 1, admitted=False)
        )
        await _raises_permanent("port 0", lambda: backend.register(B, "127.0.21.252", 0, admitted=False))
        expect(B not in await backend.stats(), "a refused register left a server behind")


async def check_stats_shape(backend: TrafficBackend) -> None:
    async with _hosts(backend, A, B, C):
        before = set(await backend.stats())
        await _register(backend, A, admitted=True)
        await _register(backend, B, admitted=False)
        await _register(backend, C, admitted=True)
        await backend.set_state(C, ServerState.DRAIN)
        stats = await backend.stats()
        expect(set(stats) - before == {A, B, C}, f"stats() keys {sorted(stats)} lack the registered hosts")
        for name in (A, B, C):
            s = stats[name]
            expect(isinstance(s, ServerStats) and s.name == name, f"stats()[{name!r}] is {s!r}")
            expect(isinstance(s.admin_state, ServerState), f"{name}: admin_state {s.admin_state!r}")
            expect(isinstance(s.status, str) and bool(s.status), f"{name}: status must be a non-empty text")
            counters = (
                s.current_sessions,
                s.total_sessions,
                s.weight,
                s.responses_2xx,
                s.responses_5xx,
                s.connection_errors,
                s.response_errors,
            )
            expect(all(isinstance(n, int) and n >= 0 for n in counters), f"{name}: negative counters {s}")
            expect(s.current_sessions == 0, f"{name}: {s.current_sessions} sessions on an idle host")
            expect(s.avg_response_ms is None or s.avg_response_ms >= 0, f"{name}: avg_response_ms {s}")
        expect(stats[C].admin_state == ServerState.DRAIN, "stats() lost the drain state")


async def check_deregister(backend: TrafficBackend) -> None:
    async with _hosts(backend, A, B):
        await _register(backend, A, admitted=True)
        await _register(backend, B, admitted=True)
        await backend.set_state(A, ServerState.MAINT)
        await backend.deregister(A)
        stats = await backend.stats()
        expect(A not in stats and B in stats, f"deregister({A}) left {sorted(stats)}")
        await backend.deregister(A)  # idempotent
        await backend.deregister("conform-never-registered")
        await backend.deregister(B)  # straight from ready
        expect(B not in await backend.stats(), "deregister of a ready host left it behind")
        await _register(backend, A, admitted=False)
        state = (await _server(backend, A)).admin_state
        expect(state == ServerState.MAINT, f"a host registered again after removal starts {state}, not maint")


async def check_drain_and_admit_idle_host(backend: TrafficBackend) -> None:
    async with _hosts(backend, A):
        await _register(backend, A, admitted=True)
        rng = random.Random(7)
        outcome = await drain(backend, A, timeout=5.0, clock=SystemClock(), rng=rng)
        expect(
            outcome.confirmed and not outcome.timed_out and outcome.in_flight_left == 0,
            f"an idle host did not drain cleanly: {outcome}",
        )
        expect(
            outcome.waited < 1.0 + backend.settle_time, f"an idle host took {outcome.waited:.2f}s to drain"
        )
        expect(
            (await _server(backend, A)).admin_state == ServerState.DRAIN, "drain() did not leave it drained"
        )
        await admit(backend, A, clock=SystemClock(), rng=rng)
        expect((await _server(backend, A)).admin_state == ServerState.READY, "admit() did not make it ready")


CHECKS: dict[str, Check] = {
    check.__name__.removeprefix("check_"): check
    for check in (
        check_identity,
        check_new_server_starts_in_maint,
        check_register_is_idempotent,
        check_states_round_trip,
        check_weights,
        check_bad_input_is_refused,
        check_stats_shape,
        check_deregister,
        check_drain_and_admit_idle_host,
    )
}


async def run_conformance(backend: TrafficBackend) -> None:
    for check in CHECKS.values():
        await check(backend)
