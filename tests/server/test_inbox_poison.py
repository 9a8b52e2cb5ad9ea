"""A forwarded request that keeps breaking the leader's batches is dropped after a few
tries, with an error reply to its sender; the leader goes on with the others."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headway.clock import SystemClock
from headway.domain.models import Health
from headway.domain.spec import parse_service_spec
from headway.errors import HeadwayError
from headway.protocol.messages import Observation
from headway.server import requests as r
from headway.server.forwarding import Forwarder
from headway.server.hub import AgentHub
from headway.server.runner import INBOX_STRIKES, Runner
from headway.store import Store, Tx
from headway.testing.pg import fresh_schema

pytestmark = pytest.mark.postgres


class BuggyRunner(Runner):
    """A leader with a bug that only one kind of request meets."""

    broke = 0

    def _apply(self, tx: Tx, request: r.Request, *args: Any) -> Any:
        if isinstance(request, r.RestoreConfig):
            self.broke += 1
            raise RuntimeError("a bug met by this request")
        return super()._apply(tx, request, *args)


def test_a_request_that_keeps_breaking_batches_is_dropped_with_an_error_reply() -> None:
    async def main(url: str) -> None:
        store = Store(url)
        store.migrate()
        spec = parse_service_spec({"name": "web", "run": {"start": ["./app"]}, "health": {"http": {}}})
        clock = SystemClock()
        with store.tx() as tx:
            tx.put_service(spec, clock.now())
        leader = BuggyRunner(
            store, AgentHub(), clock, reconnect_grace=0.0, forwarder=Forwarder(store, "leader", clock)
        )
        follower = Forwarder(store, "follower", clock, reply_timeout=20)
        tasks = [asyncio.create_task(leader.run()), asyncio.create_task(follower.run())]
        try:
            with pytest.raises(HeadwayError) as dropped:
                await follower.call(r.RestoreConfig("web", "alice"))
            assert f"failed {INBOX_STRIKES} times on this RestoreConfig" in dropped.value.message
            assert leader.broke == INBOX_STRIKES
            # the leader still works: a hello through the inbox is handled
            observed = Observation(release=None, generation=0, health=Health.UNKNOWN)
            hello = r.HostHello("h1", "web", "127.0.0.1", {"service": "web"}, observed)
            assert await follower.call(hello) is None
            with store.tx() as tx:
                assert tx.get_host("h1").connected
                assert tx.pending_inbox_ids() == []
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            store.close()

    with fresh_schema() as url:
        asyncio.run(main(url))
