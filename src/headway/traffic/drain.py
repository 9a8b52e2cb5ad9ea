"""The drain handshake, never a fixed sleep (target T2).

``drain`` takes a host out of load balancing and returns once nothing is in flight on it:

1. set DRAIN (retried with jittered backoff) and read the state back until the balancer
   reports DRAIN (or MAINT, which is stricter);
2. wait the backend's ``settle_time`` (0 for HAProxy, whose runtime API applies at once; a
   polling balancer needs its check interval times its fall count);
3. poll the balancer's count of requests in flight on the host until it reads 0 twice in a
   row, one ``poll`` apart (a request HAProxy picked a server for on another thread just
   before the drain can show up in the counter a moment later), or until ``timeout``.

Every wait is bounded by ``timeout`` on the monotonic clock. Transient balancer errors
(unreachable, throttled) are retried until then; the outcome says whether the drain was
confirmed, so the caller stops the app only once it was confirmed or the timeout passed.
An error that retrying cannot fix (an unknown host) is raised as `TrafficError`.

Timings on this machine with HAProxy 2.6 (tests/traffic/test_haproxy_traffic.py): an idle
host drains in about 0.06 s; a host serving a 1.5 s request drains within about 0.06 s
of that request's end.

``admit`` sets READY and reads it back; with ``until_serving`` (what the server's traffic
driver asks for) it also waits, within its timeout, until the balancer sends the host
traffic. HAProxy 2.6 with health checks, measured: after ``state ready`` a server that
was drained while its app stopped stays ``DOWN`` until its next check passes (0.1-0.5 s
with ``inter 500ms rise 1``), taking nothing; a server out of MAINT shows ``UP 1/2`` at
once and takes requests before any check, even with its app down (``DOWN`` about 0.5 s
later). So READY read back is not "in service"; ``UP`` (or ``no check``) is.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from headway.clock import Clock
from headway.traffic.base import (
    ServerState,
    ServerStats,
    TrafficBackend,
    TrafficError,
    TransientTrafficError,
)
from headway.traffic.retry import RETRYABLE, backoff, with_retries

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


@dataclass(frozen=True)
class DrainOutcome:
    confirmed: bool  # the balancer reported the host out of load balancing (and it settled)
    timed_out: bool  # the timeout passed before that, or before the requests in flight ended
    in_flight_left: int  # requests still in flight at the end; -1 if never read
    waited: float  # seconds from the start of the drain to its end
    detail: str  # one line for the event log


async def drain(
    backend: TrafficBackend,
    host: str,
    *,
    timeout: float,
    clock: Clock,
    rng: random.Random,
    sleep: Sleep = asyncio.sleep,
    poll: float = 0.05,
) -> DrainOutcome:
    start = clock.monotonic()
    deadline = start + max(0.0, timeout)

    def left() -> float:
        return max(0.0, deadline - clock.monotonic())

    async def bounded(call: Callable[[], Awaitable[T]]) -> T:
        # A balancer that hangs must not hold the drain past its timeout (TimeoutError is
        # an OSError, so it counts as one more transient failure).
        async with asyncio.timeout(max(left(), poll)):
            return await call()

    def outcome(confirmed: bool, timed_out: bool, in_flight: int, detail: str) -> DrainOutcome:
        return DrainOutcome(confirmed, timed_out, in_flight, clock.monotonic() - start, detail)

    async def set_drain() -> None:
        await with_retries(lambda: backend.set_state(host, ServerState.DRAIN), rng=rng, sleep=sleep)

    async def read() -> dict[str, ServerStats]:
        return await with_retries(backend.stats, rng=rng, sleep=sleep)

    async def set_and_read() -> dict[str, ServerStats]:
        await set_drain()
        return await read()

    # 1. Set DRAIN and read it back.
    in_flight = -1
    problem = ""
    attempt = 0
    while True:
        try:
            server = (await bounded(set_and_read)).get(host)
        except RETRYABLE as error:
            problem = f"{backend.name} unavailable: {str(error) or 'no answer in time'}"
        else:
            if server is None:
                return outcome(True, False, 0, f"{host} is no longer in {backend.name}; nothing can reach it")
            in_flight = server.current_sessions
            if server.admin_state in (ServerState.DRAIN, ServerState.MAINT):
                break
            problem = f"{backend.name} still reports {host} as {server.admin_state} after setting drain"
        if left() <= 0:
            return outcome(
                False, True, in_flight, f"drain of {host} not confirmed within {timeout:g}s: {problem}"
            )
        await sleep(min(left(), max(poll, backoff(attempt, base=poll, cap=1.0, rng=rng))))
        attempt += 1

    # 2. Let the balancer settle (nothing to wait for with a runtime API).
    settle = backend.settle_time
    if settle > 0:
        if settle > left():
            await sleep(left())
            return outcome(
                False,
                True,
                in_flight,
                f"drain of {host} timed out after {timeout:g}s while waiting "
                f"{backend.name}'s settle time of {settle:g}s",
            )
        await sleep(settle)

    # 3. Wait for the requests in flight to end.
    zero_once = False
    while True:
        server_now: ServerStats | None = None
        try:
            stats = await bounded(read)
        except RETRYABLE as error:
            problem = f"{backend.name} unavailable: {str(error) or 'no answer in time'}"
            zero_once = False
        else:
            server_now = stats.get(host)
            if server_now is None:
                return outcome(True, False, 0, f"{host} left {backend.name} while draining")
            if server_now.admin_state == ServerState.READY:
                # Someone put it back in service; drain again rather than stop a serving app.
                problem = f"{host} was set ready by someone else while draining; drained again"
                zero_once = False
                try:
                    await bounded(set_drain)
                except RETRYABLE as error:
                    problem = f"{backend.name} unavailable: {str(error) or 'no answer in time'}"
            else:
                in_flight = server_now.current_sessions
                if in_flight == 0 and zero_once:
                    took = clock.monotonic() - start
                    return outcome(True, False, 0, f"{host} drained in {took:.2f}s")
                zero_once = in_flight == 0
        if left() <= 0:
            detail = (
                f"drain of {host} timed out after {timeout:g}s with {in_flight} request(s) still in flight"
            )
            return outcome(True, True, in_flight, f"{detail}; {problem}" if problem else detail)
        await sleep(min(left(), poll))


async def admit(
    backend: TrafficBackend,
    host: str,
    *,
    clock: Clock,
    rng: random.Random,
    sleep: Sleep = asyncio.sleep,
    timeout: float = 10.0,
    until_serving: bool = False,
    poll: float = 0.05,
) -> None:
    """Put ``host`` back in load balancing (READY) and read it back; transient errors are
    retried for up to ``timeout`` seconds, then raised.

    With ``until_serving``, return only once the balancer sends the host traffic
    (`ServerStats.in_service`: READY, weight above 0, and its health check passed),
    polling every ``poll`` seconds within the same ``timeout``; a host still not in
    service then is a `TrafficError` that says what the balancer reports. READY alone is
    not enough for a caller that takes another host out next: HAProxy keeps a server its
    checks marked DOWN (drained, app restarted) DOWN until its next check passes, and
    treats one just out of MAINT as up before any check (``UP 1/2``), app or not.
    """
    deadline = clock.monotonic() + timeout
    attempt = 0
    ready = False  # READY was read back: only waiting for the balancer to send it traffic

    async def set_and_read() -> dict[str, ServerStats]:
        await with_retries(lambda: backend.set_state(host, ServerState.READY), rng=rng, sleep=sleep)
        return await with_retries(backend.stats, rng=rng, sleep=sleep)

    async def read() -> dict[str, ServerStats]:
        return await with_retries(backend.stats, rng=rng, sleep=sleep)

    while True:
        try:
            async with asyncio.timeout(max(0.05, deadline - clock.monotonic())):
                server = (await (read() if ready else set_and_read())).get(host)
        except RETRYABLE as error:
            if clock.monotonic() >= deadline:
                if isinstance(error, TrafficError):
                    raise
                raise TransientTrafficError(
                    f"{host} could not be admitted: {backend.name} did not answer within {timeout:g}s",
                    hint="check that the load balancer is running; the host is still out of it",
                ) from error
        else:
            if server is None:
                raise TrafficError(
                    f"{host} is not in {backend.name}; it cannot be admitted",
                    hint="register the host with the load balancer first",
                )
            # someone may set it back out meanwhile (a drain still under way): set READY again
            ready = server.admin_state == ServerState.READY
            if ready and (not until_serving or server.in_service):
                return
            if clock.monotonic() >= deadline:
                if ready:
                    raise _not_serving(backend, server, timeout)
                raise TrafficError(
                    f"{backend.name} still reports {host} as {server.admin_state} after setting ready",
                    hint="something else is changing this server's state; check the balancer",
                )
        if ready:
            await sleep(min(poll, max(0.0, deadline - clock.monotonic())))
        else:
            await sleep(backoff(attempt, base=0.05, cap=1.0, rng=rng))
            attempt += 1


def _not_serving(backend: TrafficBackend, server: ServerStats, timeout: float) -> TrafficError:
    """A host set READY that the balancer still sends no traffic to."""
    where = f"{backend.name} reports it {server.status or 'without a status'}, weight {server.weight}"
    if server.weight <= 0:
        hint = "its weight is 0: set a weight above 0 (`set server ... weight`), then admit it again"
    else:
        hint = (
            "its health check fails: check that the app answers the balancer's check (HAProxy: "
            "`option httpchk` of the backend) at the host's address and port, then admit it again"
        )
    return TrafficError(
        f"{server.name} is ready but takes no traffic after {timeout:g}s ({where})", hint=hint
    )
