"""The traffic port's conformance suite, against real HAProxy and against the in-memory fake."""

from __future__ import annotations

import asyncio

import pytest

from headway.testing.fake_traffic import FakeTrafficBackend
from headway.testing.traffic_conformance import CHECKS, ConformanceFailure, run_conformance
from headway.traffic.base import ServerState
from headway.traffic.haproxy_process import HAProxyProcess

from .conftest import backend_for


@pytest.mark.integration
@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("health_checks", [True, False], ids=["checked", "unchecked"])
def test_haproxy_backend_conforms(haproxy: HAProxyProcess, check: str, health_checks: bool) -> None:
    asyncio.run(CHECKS[check](backend_for(haproxy, check=health_checks)))


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_fake_backend_conforms(check: str) -> None:
    asyncio.run(CHECKS[check](FakeTrafficBackend()))


def test_fake_with_settle_time_conforms() -> None:
    asyncio.run(run_conformance(FakeTrafficBackend(settle_time=0.2)))


@pytest.mark.integration
def test_the_whole_suite_runs_on_one_haproxy_that_holds_other_servers(haproxy: HAProxyProcess) -> None:
    async def main() -> None:
        backend = backend_for(haproxy)
        await backend.register("bystander", "127.0.21.9", 18009, admitted=True)
        await run_conformance(backend)
        assert set(await backend.stats()) == {"bystander"}, "the suite must leave other servers alone"

    asyncio.run(main())


class _ForgetsDrain(FakeTrafficBackend):
    """A broken backend: drain is accepted but reads back as ready."""

    async def set_state(self, host: str, state: ServerState) -> None:
        await super().set_state(host, ServerState.READY if state == ServerState.DRAIN else state)


def test_the_suite_catches_a_backend_that_loses_states() -> None:
    with pytest.raises(ConformanceFailure, match="reads back as ready"):
        asyncio.run(CHECKS["states_round_trip"](_ForgetsDrain()))
