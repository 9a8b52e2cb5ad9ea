"""What a follower does for the leader, and for its own agents, in few transactions.

- `Forwarder`: requests that arrive together (agent reports and hellos, operator
  commands) are stored in one transaction, in order; a caller reads replies only when
  the leader names one of its requests, and hears at once when nothing could be stored.
- `Runner.push_local`: the desired state of many hosts from one read of the hosts,
  each message the same as `_desired_message` would build for its host.
- `Runner.push_stale`: the sweep pushes to a host only if this session was not handed
  its stored generation already (an agent in the middle of a restart is not told again),
  and `push_local` does not hand a session the very message it was handed last (the
  leader's notification arriving after the sweep pushed the change).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from headway.clock import SystemClock
from headway.domain.models import ArtifactRef, Health, RolloutStatus, RolloutSummary
from headway.domain.spec import parse_service_spec
from headway.engine.events import Command
from headway.errors import Conflict, StoreUnavailable
from headway.protocol.messages import Desired, Observation
from headway.server import forwarding
from headway.server import requests as r
from headway.server.forwarding import Forwarder
from headway.server.hub import AgentHub, AgentSession
from headway.server.runner import Runner
from headway.store import Store, Tx

T0 = 1_700_000_000.0
ARTIFACT = ArtifactRef(digest="sha256:" + "a" * 64, size=10, url="/api/v1/artifacts/a")


class CountingStore(Store):
    """A store that counts its transactions and can be made unavailable."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.transactions = 0
        self.down = False

    def tx(self, *, fence: int | None = None) -> contextlib.AbstractContextManager[Tx]:
        if self.down:
            raise StoreUnavailable("the database is away (test)")
        self.transactions += 1
        return super().tx(fence=fence)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    s = CountingStore(f"sqlite:///{tmp_path / 'state.db'}")
    s.migrate()
    yield s
    s.close()


def report(host: str, generation: int) -> r.HostReport:
    return r.HostReport(host, Observation(release=1, generation=generation, health=Health.HEALTHY))


def summary() -> RolloutSummary:
    return RolloutSummary(
        id="web-v2-abc",
        service="web",
        from_release=1,
        to_release=2,
        strategy="rolling",
        status=RolloutStatus.RUNNING,
        reason="",
        step=0,
        steps=1,
        hosts_total=1,
        hosts_done=0,
        hosts_failed=0,
        created_at=T0,
        updated_at=T0,
        created_by="ann",
    )


def test_requests_that_arrive_together_are_stored_in_one_transaction_in_order(
    store: CountingStore,
) -> None:
    async def scenario() -> None:
        forwarder = Forwarder(store, "f1", SystemClock(), reply_timeout=5)
        forwarder.submit(report("h1", 1))
        start = asyncio.create_task(forwarder.call(r.StartRollout("web", None, "ann")))
        command = asyncio.create_task(forwarder.call(r.RolloutCommand("x", Command.ABORT, "bob")))
        await asyncio.sleep(0)
        forwarder.submit(report("h2", 2))
        before = store.transactions
        await asyncio.sleep(forwarding.FLUSH_DELAY * 3)
        assert store.transactions == before + 1  # all four in one transaction
        with store.tx() as tx:
            pending = tx.inbox_items(tx.pending_inbox_ids())
        assert [(i.kind, i.wants_reply) for i in pending] == [
            ("HostReport", False),
            ("StartRollout", True),
            ("RolloutCommand", True),
            ("HostReport", False),
        ]
        assert '"h2"' in pending[3].payload
        first, second = pending[1].id, pending[2].id
        with store.tx() as tx:  # the leader answers both
            tx.answer_inbox(
                [
                    (pending[0].id, None),
                    (first, forwarding.encode_reply(summary())),
                    (second, forwarding.encode_reply(Conflict("rollout x is not active"))),
                    (pending[3].id, None),
                ]
            )
        before = store.transactions
        forwarder.take_replies([10_000, 10_001])  # named requests of another server
        assert store.transactions == before  # nothing read
        forwarder.take_replies([first, second])
        assert store.transactions == before + 1
        assert (await start).id == "web-v2-abc"
        with pytest.raises(Conflict, match="not active"):
            await command

    asyncio.run(scenario())


def test_a_caller_hears_at_once_when_nothing_could_be_stored_and_reports_wait(
    store: CountingStore,
) -> None:
    async def scenario() -> None:
        forwarder = Forwarder(store, "f1", SystemClock(), reply_timeout=5)
        store.down = True
        forwarder.submit(report("h1", 1))
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(forwarder.call(r.StartRollout("web", None, "ann")), 1)
        store.down = False
        await asyncio.sleep(1.2)  # the reports are stored once the database is back
        with store.tx() as tx:
            assert [i.kind for i in tx.inbox_items(tx.pending_inbox_ids())] == ["HostReport"]

    asyncio.run(scenario())


class Recorder(AgentHub):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, Desired]] = []

    def push(self, host: str, message: Desired) -> bool:
        self.sent.append((host, message))
        return super().push(host, message)

    def connect(self, host: str) -> None:
        self.sessions[host] = AgentSession(host, cast(Any, None))


def follower(store: Store, hub: AgentHub) -> Runner:
    spec = parse_service_spec({"name": "web", "run": {"start": ["./app"]}, "health": {"http": {}}})
    with store.tx() as tx:
        tx.put_service(spec, T0)
        tx.create_release("web", ARTIFACT, {}, "t", "", T0)
        tx.create_release("web", ARTIFACT, {"V": "2"}, "t", "", T0)
        for i in range(6):
            tx.upsert_host(f"h{i}", "web", "127.0.0.1", {"service": "web"}, T0)
            tx.set_host_desired(f"h{i}", 1 if i < 4 else 2, 10 + i)
        tx.set_host_serve("h3", False)
    return Runner(store, hub, SystemClock(), reconnect_grace=0.0)


def test_push_local_builds_each_hosts_message_from_one_read(store: CountingStore) -> None:
    hub = Recorder()
    runner = follower(store, hub)
    for i in range(6):
        hub.connect(f"h{i}")
    runner.push_local(["h0", "h1", "h2", "h3", "h4", "h5", "gone"])
    sent = dict(hub.sent)
    assert sorted(sent) == [f"h{i}" for i in range(6)]
    with store.tx() as tx:
        for host, message in sent.items():
            assert message == runner._desired_message(tx, host), host
    assert [sent[f"h{i}"].generation for i in range(6)] == [10, 11, 12, 13, 14, 15]
    assert sent["h3"].serve is False and sent["h4"].release is not None
    assert sent["h4"].release.number == 2


def test_the_sweep_does_not_tell_a_session_again_what_it_was_handed(store: CountingStore) -> None:
    hub = Recorder()
    runner = follower(store, hub)
    for i in range(6):
        hub.connect(f"h{i}")
    runner.push_local()  # all of them; none has reported its generation yet
    hub.sent.clear()
    runner.push_stale()
    assert hub.sent == []  # each session has its generation: the agents are applying it
    with store.tx() as tx:
        tx.set_host_desired("h1", 2, 20)  # the leader's notification of it was lost
    hub.connect("h2")  # h2 reconnected: its new session was handed nothing
    runner.push_stale()
    assert sorted((h, m.generation) for h, m in hub.sent) == [("h1", 20), ("h2", 12)]
    hub.sent.clear()
    runner.push_local(["h1"])  # the leader's notification, later than the sweep
    assert hub.sent == []  # h1 has exactly that message already
    with store.tx() as tx:
        tx.set_host_serve("h1", False)  # the same generation, out of load balancing
    runner.push_local(["h1"])
    assert [(h, m.generation, m.serve) for h, m in hub.sent] == [("h1", 20, False)]
