"""The drain handshake and retries, on the in-memory balancer with a manual clock (no real time)."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable

import pytest

from headway.clock import ManualClock, SystemClock
from headway.testing.fake_traffic import FakeTrafficBackend
from headway.traffic.base import ServerState, ServerStats, TrafficError, TransientTrafficError
from headway.traffic.drain import DrainOutcome, admit, drain
from headway.traffic.retry import backoff, with_retries


class Timeline:
    """A clock and a sleep that moves it: timeouts take no real time."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.slept: list[float] = []
        self.on_sleep: Callable[[int], None] = lambda n: None

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.advance(seconds)
        self.on_sleep(len(self.slept))
        await asyncio.sleep(0)


async def fleet(*hosts: str, settle_time: float = 0.0) -> FakeTrafficBackend:
    fake = FakeTrafficBackend(settle_time=settle_time)
    for i, host in enumerate(hosts, 1):
        await fake.register(host, f"127.0.21.{i}", 8080, admitted=True)
    return fake


def run_drain(fake: FakeTrafficBackend, t: Timeline, timeout: float = 30.0, seed: int = 1,
              host: str = "h1") -> DrainOutcome:
    return asyncio.run(drain(fake, host, timeout=timeout, clock=t.clock, rng=random.Random(seed),
                             sleep=t.sleep, poll=0.05))


def test_idle_host_drains_after_two_zero_readings_one_poll_apart() -> None:
    t = Timeline()
    fake = asyncio.run(fleet("h1", "h2"))
    outcome = run_drain(fake, t)
    assert (outcome.confirmed, outcome.timed_out, outcome.in_flight_left) == (True, False, 0)
    assert outcome.waited == pytest.approx(0.05) and outcome.detail == "h1 drained in 0.05s"
    assert t.slept == [0.05]
    assert fake.servers["h1"].state == ServerState.DRAIN
    assert fake.servers["h2"].state == ServerState.READY


def test_drain_waits_for_requests_in_flight_by_polling_never_a_fixed_sleep() -> None:
    t = Timeline()
    fake = asyncio.run(fleet("h1"))
    fake.script_in_flight("h1", [3, 3, 2, 2, 1, 0])
    outcome = run_drain(fake, t)
    assert outcome.confirmed and not outcome.timed_out and outcome.in_flight_left == 0
    # confirm read (3), then polls 3 2 2 1 0 0: six polls, five sleeps of one poll interval
    assert t.slept == [0.05] * 5
    assert outcome.waited == pytest.approx(0.25)


def test_a_zero_between_busy_readings_is_not_taken_for_drained() -> None:
    t = Timeline()
    fake = asyncio.run(fleet("h1"))
    fake.script_in_flight("h1", [1, 0, 1, 0, 0])  # a request picked just before the drain shows late
    outcome = run_drain(fake, t)
    assert outcome.in_flight_left == 0 and outcome.waited == pytest.approx(0.15)


def test_timeout_bounds_the_wait_for_a_request_that_never_ends() -> None:
    t = Timeline()
    fake = asyncio.run(fleet("h1"))
    fake.set_in_flight("h1", 2)
    outcome = run_drain(fake, t, timeout=30.0)
    assert outcome.confirmed and outcome.timed_out and outcome.in_flight_left == 2
    assert outcome.waited == pytest.approx(30.0)
    assert "timed out after 30s with 2 request(s) still in flight" in outcome.detail
    assert max(t.slept) <= 0.05


def test_transient_balancer_errors_are_retried_with_jitter() -> None:
    t = Timeline()
    fake = asyncio.run(fleet("h1"))
    fake.fail_next(4)
    outcome = run_drain(fake, t)
    assert outcome.confirmed and not outcome.timed_out
    set_calls = [c for c in fake.calls if c[0] == "set_state"]
    assert len(set_calls) == 5  # four refused, the fifth applied
    backoffs = t.slept[:4]
    assert all(0 <= s <= 0.05 * 2**i for i, s in enumerate(backoffs))
    assert len(set(backoffs)) == 4  # jittered, not a fixed delay


def test_same_seed_same_waits_other_seed_other_waits() -> None:
    def waits(seed: int) -> list[float]:
        t = Timeline()
        fake = asyncio.run(fleet("h1"))
        fake.fail_next(4)
        run_drain(fake, t, seed=seed)
        return t.slept

    assert waits(3) == waits(3)
    assert waits(3) != waits(4)


def test_a_drain_the_balancer_never_applies_is_not_confirmed() -> None:
    t = Timeline()
    fake = asyncio.run(fleet("h1"))
    fake.freeze("h1")
    outcome = run_drain(fake, t, timeout=5.0)
    assert not outcome.confirmed and outcome.timed_out
    assert 5.0 <= outcome.waited <= 5.0 + 1.0
    assert "not confirmed within 5s" in outcome.detail and "still reports h1 as ready" in outcome.detail


def test_an_unreachable_balancer_ends_in_an_unconfirmed_timeout_not_an_endless_loop() -> None:
    t = Timeline()
    fake = asyncio.run(fleet("h1"))
    fake.fail_next(100_000)
    outcome = run_drain(fake, t, timeout=10.0)
    assert not outcome.confirmed and outcome.timed_out and outcome.in_flight_left == -1
    assert 10.0 <= outcome.waited <= 10.0 + 1.0  # one last round of retries at most
    assert "fake unavailable" in outcome.detail


def test_an_unknown_host_is_an_error_not_a_drain() -> None:
    fake = asyncio.run(fleet("h1"))
    with pytest.raises(TrafficError, match="no server h9") as raised:
        run_drain(fake, Timeline(), host="h9")
    assert not isinstance(raised.value, TransientTrafficError)


def test_settle_time_is_waited_after_the_state_is_confirmed() -> None:
    t = Timeline()
    fake = asyncio.run(fleet("h1", settle_time=1.5))
    outcome = run_drain(fake, t)
    assert t.slept[0] == 1.5 and outcome.confirmed and outcome.waited == pytest.approx(1.55)

    t = Timeline()
    fake = asyncio.run(fleet("h1", settle_time=1.5))
    outcome = run_drain(fake, t, timeout=1.0)
    assert not outcome.confirmed and outcome.timed_out and outcome.waited == pytest.approx(1.0)


def test_a_host_readmitted_by_someone_else_mid_drain_is_drained_again() -> None:
    t = Timeline()
    fake = asyncio.run(fleet("h1"))
    fake.script_in_flight("h1", [1, 1, 1, 0])

    def meddle(n: int) -> None:
        if n == 1:
            fake.servers["h1"].state = ServerState.READY

    t.on_sleep = meddle
    outcome = run_drain(fake, t)
    assert outcome.confirmed and fake.servers["h1"].state == ServerState.DRAIN
    assert len([c for c in fake.calls if c[0] == "set_state"]) == 2


def test_a_host_removed_while_draining_counts_as_drained() -> None:
    t = Timeline()
    fake = asyncio.run(fleet("h1"))
    fake.set_in_flight("h1", 1)
    def remove(n: int) -> None:
        fake.servers.pop("h1", None)

    t.on_sleep = remove
    outcome = run_drain(fake, t)
    assert outcome.confirmed and outcome.in_flight_left == 0 and "left fake" in outcome.detail


def test_admit_sets_ready_and_reads_it_back_through_transient_errors() -> None:
    t = Timeline()
    fake = asyncio.run(fleet("h1"))
    run_drain(fake, t)
    fake.fail_next(3)
    asyncio.run(admit(fake, "h1", clock=t.clock, rng=random.Random(1), sleep=t.sleep))
    assert fake.servers["h1"].state == ServerState.READY


def test_admit_gives_up_with_a_hint_when_the_state_does_not_stick() -> None:
    t = Timeline()
    fake = asyncio.run(fleet("h1"))
    run_drain(fake, t)
    fake.freeze("h1")
    with pytest.raises(TrafficError, match="still reports h1 as drain") as raised:
        asyncio.run(admit(fake, "h1", clock=t.clock, rng=random.Random(1), sleep=t.sleep, timeout=3))
    assert raised.value.hint
    with pytest.raises(TrafficError, match="no server h9"):
        asyncio.run(admit(fake, "h9", clock=t.clock, rng=random.Random(1), sleep=t.sleep))


class _Checked(FakeTrafficBackend):
    """A balancer with health checks: a READY host reports ``statuses`` one `stats` call at a
    time (the last one stays) before it shows UP, as HAProxy does until a check passes."""

    def __init__(self, statuses: list[str]) -> None:
        super().__init__()
        self.statuses = list(statuses)
        self.sets: list[ServerState] = []

    async def set_state(self, host: str, state: ServerState) -> None:
        self.sets.append(ServerState(state))
        await super().set_state(host, state)

    async def stats(self) -> dict[str, ServerStats]:
        stats = await super().stats()
        h1 = stats.get("h1")
        if h1 is not None and h1.admin_state == ServerState.READY and self.statuses:
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            stats["h1"] = dataclasses.replace(h1, status=status)
        return stats


def test_admit_until_serving_waits_for_the_health_check_without_setting_ready_again() -> None:
    t = Timeline()
    fake = _Checked(["DOWN", "DOWN", "DOWN", "UP"])
    asyncio.run(fake.register("h1", "127.0.21.1", 8080, admitted=False))
    asyncio.run(admit(fake, "h1", clock=t.clock, rng=random.Random(1), sleep=t.sleep, until_serving=True))
    assert fake.sets == [ServerState.READY]  # set once, then only read until it is UP
    assert t.slept == [0.05, 0.05, 0.05]  # polled, one `poll` apart


def test_admit_without_until_serving_returns_at_ready_even_while_the_balancer_holds_it_down() -> None:
    t = Timeline()
    fake = _Checked(["DOWN"])
    asyncio.run(fake.register("h1", "127.0.21.1", 8080, admitted=False))
    asyncio.run(admit(fake, "h1", clock=t.clock, rng=random.Random(1), sleep=t.sleep))
    assert t.slept == []


@pytest.mark.parametrize("status", ["DOWN", "UP 1/2", "NOLB", "DOWN 1/2"])
def test_a_host_that_never_takes_traffic_fails_the_admit_at_its_timeout_saying_why(status: str) -> None:
    t = Timeline()
    fake = _Checked([status])
    asyncio.run(fake.register("h1", "127.0.21.1", 8080, admitted=False))
    start = t.clock.monotonic()
    with pytest.raises(TrafficError) as raised:
        asyncio.run(admit(fake, "h1", clock=t.clock, rng=random.Random(1), sleep=t.sleep, timeout=2,
                          until_serving=True))
    said = f"h1 is ready but takes no traffic after 2s (fake reports it {status}, weight 1)"
    assert str(raised.value).startswith(said)
    assert "health check fails" in raised.value.hint
    assert 2.0 <= t.clock.monotonic() - start < 2.1  # bounded by the timeout


def test_a_host_at_weight_0_is_not_in_service_and_the_hint_says_so() -> None:
    t = Timeline()
    fake = asyncio.run(fleet("h1"))
    asyncio.run(fake.set_weight("h1", 0))
    with pytest.raises(TrafficError, match="weight 0") as raised:
        asyncio.run(admit(fake, "h1", clock=t.clock, rng=random.Random(1), sleep=t.sleep, timeout=1,
                          until_serving=True))
    assert "set a weight above 0" in raised.value.hint


def test_a_host_drained_again_while_admit_waits_is_set_ready_again() -> None:
    t = Timeline()
    fake = _Checked(["DOWN", "DOWN", "UP"])
    asyncio.run(fake.register("h1", "127.0.21.1", 8080, admitted=False))

    def meanwhile(sleeps: int) -> None:
        if sleeps == 1:  # a drain still under way sets DRAIN again
            fake.servers["h1"].state = ServerState.DRAIN

    t.on_sleep = meanwhile
    asyncio.run(admit(fake, "h1", clock=t.clock, rng=random.Random(1), sleep=t.sleep, until_serving=True))
    assert fake.sets == [ServerState.READY, ServerState.READY]
    assert fake.servers["h1"].state == ServerState.READY


@pytest.mark.parametrize(
    ("state", "status", "weight", "serving"),
    [
        (ServerState.READY, "UP", 1, True),
        (ServerState.READY, "no check", 10, True),
        (ServerState.READY, "UP 1/2", 1, False),  # out of MAINT, not checked yet (or one check failed)
        (ServerState.READY, "DOWN", 1, False),
        (ServerState.READY, "DOWN 1/2", 1, False),
        (ServerState.READY, "NOLB", 1, False),
        (ServerState.READY, "UP", 0, False),
        (ServerState.DRAIN, "DRAIN", 1, False),
        (ServerState.MAINT, "MAINT", 1, False),
    ],
)
def test_in_service_means_ready_up_by_its_check_and_a_weight(
    state: ServerState, status: str, weight: int, serving: bool
) -> None:
    stats = ServerStats("h1", state, status, 0, 0, weight, 0, 0, 0, 0, None)
    assert stats.in_service is serving


# --- with_retries ---------------------------------------------------------------------------------


def flaky(failures: list[BaseException]) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    calls = [0]

    async def call() -> str:
        calls[0] += 1
        if failures:
            raise failures.pop(0)
        return "ok"

    return call, calls


@pytest.mark.parametrize("error", [TransientTrafficError("throttled"), ConnectionRefusedError(),
                                   FileNotFoundError(), TimeoutError()])
def test_with_retries_retries_transient_and_socket_errors(error: BaseException) -> None:
    t = Timeline()
    call, calls = flaky([error, error])
    assert asyncio.run(with_retries(call, rng=random.Random(1), sleep=t.sleep)) == "ok"
    assert calls == [3] and len(t.slept) == 2


@pytest.mark.parametrize("error", [TrafficError("no such server"), ValueError("bug")])
def test_with_retries_does_not_retry_other_errors(error: Exception) -> None:
    t = Timeline()
    call, calls = flaky([error])
    with pytest.raises(type(error)):
        asyncio.run(with_retries(call, rng=random.Random(1), sleep=t.sleep))
    assert calls == [1] and t.slept == []


def test_with_retries_reraises_the_last_error_after_the_last_attempt() -> None:
    t = Timeline()
    errors: list[BaseException] = [TransientTrafficError(f"try {i}") for i in range(9)]
    call, calls = flaky(errors)
    with pytest.raises(TransientTrafficError, match="try 4"):
        asyncio.run(with_retries(call, attempts=5, base=0.05, cap=0.15, rng=random.Random(1), sleep=t.sleep))
    assert calls == [5] and len(t.slept) == 4
    assert all(0 <= s <= bound for s, bound in zip(t.slept, [0.05, 0.1, 0.15, 0.15], strict=True))
    with pytest.raises(ValueError):
        asyncio.run(with_retries(call, attempts=0, rng=random.Random(1)))


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    rng = random.Random(5)
    for attempt in range(12):
        samples = [backoff(attempt, base=0.05, cap=2.0, rng=rng) for _ in range(200)]
        bound = min(2.0, 0.05 * 2**attempt)
        assert min(samples) >= 0 and max(samples) <= bound
        assert max(samples) > bound * 0.8 and min(samples) < bound * 0.2  # spread over the range


class _Hangs(FakeTrafficBackend):
    """A balancer that accepts connections and never answers state changes."""

    async def set_state(self, host: str, state: ServerState) -> None:
        await asyncio.sleep(3600)


def test_a_balancer_that_hangs_cannot_hold_drain_or_admit_past_their_timeouts() -> None:
    async def main() -> None:
        hangs = _Hangs()
        await hangs.register("h1", "127.0.21.1", 8080, admitted=True)
        clock = SystemClock()
        started = time.monotonic()
        outcome = await drain(hangs, "h1", timeout=0.3, clock=clock, rng=random.Random(1))
        assert not outcome.confirmed and outcome.timed_out and 0.3 <= outcome.waited < 0.6
        assert "no answer in time" in outcome.detail
        with pytest.raises(TransientTrafficError, match=r"did not answer within 0\.3s") as raised:
            await admit(hangs, "h1", clock=clock, rng=random.Random(1), timeout=0.3)
        assert raised.value.hint
        assert time.monotonic() - started < 1.5

    asyncio.run(main())
