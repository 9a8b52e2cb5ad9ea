"""The election on the real PostgreSQL: one leader, a fast takeover when it dies, a
silent leader's sessions ended after its lease, and its writes refused (fencing)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

from headway.clock import SystemClock
from headway.domain.models import ArtifactRef, Health
from headway.domain.spec import parse_service_spec
from headway.errors import Fenced
from headway.protocol.messages import Desired, Observation
from headway.server import requests as r
from headway.server.hub import AgentHub
from headway.server.leadership import PostgresElection, new_server_id
from headway.server.runner import Runner
from headway.store import NewEvent, Store
from headway.testing.pg import fresh_schema

pytestmark = pytest.mark.postgres


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_schema() as url:
        store = Store(url)
        store.migrate()
        store.close()
        yield url


def election(url: str, name: str, ttl: float = 1.0) -> PostgresElection:
    server_id = new_server_id()
    return PostgresElection(Store(url, application_name=server_id), server_id, name, SystemClock(), ttl=ttl)


async def until(condition: object, timeout: float) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def test_one_leads_and_another_takes_over_at_once_when_it_stops(url: str) -> None:
    async def main() -> None:
        a, b = election(url, "a"), election(url, "b")
        task_a = asyncio.create_task(a.run())
        await until(lambda: a.leading, 5)
        task_b = asyncio.create_task(b.run())
        await asyncio.sleep(1.5)  # more than the ttl: a keeps renewing, b waits
        assert a.leading and not b.leading
        token_a = a.token
        task_a.cancel()  # a clean stop ends the lease; a crash frees the advisory lock
        await asyncio.gather(task_a, return_exceptions=True)
        took = await until(lambda: b.leading, 5)
        assert took < 1.0  # one election period (ttl / 4), not a whole lease
        assert b.token == token_a + 1  # type: ignore[operator]
        with pytest.raises(Fenced), a.store.tx(fence=token_a):
            pass
        task_b.cancel()
        await asyncio.gather(task_b, return_exceptions=True)
        a.store.close()
        b.store.close()

    asyncio.run(main())


def test_a_silent_leader_is_replaced_after_its_lease_and_its_writes_are_refused(url: str) -> None:
    async def main() -> None:
        a, b = election(url, "a"), election(url, "b")
        await a._once()  # a leads, then falls silent: no more renewals (as under SIGSTOP)
        assert a.leading
        token_a = a.token
        assert token_a is not None
        with a.store.tx(fence=token_a) as tx:  # a pooled session of a, idle
            tx.append_events([NewEvent(ts=1.0, kind="k", message="a, while leading")])
        task_b = asyncio.create_task(b.run())
        took = await until(lambda: b.leading, 10)
        assert 0.5 < took < 3.0  # after the lease (1 s) ran out, not before
        assert b.token == token_a + 1
        # a wakes up: its sessions were ended; its next renewal finds it deposed ...
        await a._once()
        assert not a.leading
        # ... and whatever it still tries to write is refused by the store
        with pytest.raises(Fenced), a.store.tx(fence=token_a) as tx:
            tx.append_events([NewEvent(ts=2.0, kind="k", message="a, deposed")])
        with b.store.tx() as tx:
            assert [e.message for e in tx.list_events()] == ["a, while leading"]
            assert tx.lease().about == "b"
        a._close_session()
        task_b.cancel()
        await asyncio.gather(task_b, return_exceptions=True)
        a.store.close()
        b.store.close()

    asyncio.run(main())


def test_a_deposed_runner_writes_nothing_and_tells_no_agent(url: str) -> None:
    """The runner of a leader whose lease was taken over: its next batch is refused by
    the store before anything is written, and no agent hears from it."""
    class Pushes(AgentHub):
        def __init__(self) -> None:
            super().__init__()
            self.sent: list[str] = []

        def push(self, host: str, message: Desired) -> bool:
            self.sent.append(host)
            return True

    class Clock(SystemClock):
        t = 1_700_000_000.0

        def now(self) -> float:
            return self.t

    store = Store(url)
    spec = parse_service_spec(
        {
            "name": "web",
            "run": {"start": ["./app"]},
            "health": {"http": {}},
            "strategy": {"batch_size": 1, "min_healthy_time": "1s", "progress_deadline": "60s"},
        }
    )
    artifact = ArtifactRef(digest="sha256:" + "a" * 64, size=10, url="/api/v1/artifacts/a")
    clock, hub = Clock(), Pushes()
    with store.tx() as tx:
        tx.put_service(spec, clock.t)
        tx.create_release("web", artifact, {}, "t", "", clock.t)
        tx.create_release("web", artifact, {"V": "2"}, "t", "", clock.t)
        tx.set_service_current_release("web", 1)
        token = tx.take_lease("server-a", "a:7400", ttl=30)
    runner = Runner(store, hub, clock, reconnect_grace=0.0)
    runner.fence = token
    runner._recover()
    runner._grace_done = True
    healthy = Observation(release=1, generation=1, health=Health.HEALTHY)
    runner._handle([r.HostHello(h, "web", "127.0.0.1", {"service": "web"}, healthy) for h in "abc"])
    runner._handle([r.StartRollout("web", 2, "alice")])

    def stored() -> tuple[str, int, list[int]]:
        with store.tx() as tx:
            ((_, state),) = tx.active_rollouts()
            events = tx.list_events(limit=5000)
            generations = [h.generation for h in tx.list_hosts("web")]
        return json.dumps(state, sort_keys=True), len(events), generations

    before, told = stored(), list(hub.sent)
    with store.tx() as tx:
        tx.take_lease("server-b", "b:7400", ttl=30)  # another server leads now
    clock.t += 5  # the first host's bake is over: the deposed runner would move on
    updated = Observation(release=2, generation=2, health=Health.HEALTHY)
    with pytest.raises(Fenced):
        runner._handle([r.HostReport("a", updated)])
    assert stored() == before
    assert hub.sent == told
    store.close()
