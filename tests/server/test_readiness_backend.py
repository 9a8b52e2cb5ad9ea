"""The readiness adapter (a balancer that polls GET /ready) against the traffic port's suite,
in memory and on the real store with pushes to agents; and its wiring in the traffic driver."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from headway.clock import SystemClock
from headway.domain.spec import ReadinessTraffic, ServiceSpec
from headway.protocol.messages import Desired
from headway.server.readiness import ReadinessBackend, StoreServeFlags
from headway.server.traffic_driver import TrafficDriver
from headway.store import Store, Tx
from headway.testing.traffic_conformance import CHECKS, run_conformance
from headway.traffic import HAProxyBackend, ServerState, TrafficError, TransientTrafficError, drain

FAST = ReadinessTraffic(port=9100, interval=0.1, fall=2)  # settles in 0.45 s


class Flags:
    """The serve flags in memory, as the store would keep them; notes every set."""

    def __init__(self) -> None:
        self.serve: dict[str, bool] = {}
        self.sets: list[tuple[str, bool]] = []

    def set_serve(self, host: str, serve: bool) -> None:
        self.serve[host] = serve
        self.sets.append((host, serve))

    def get_serve(self) -> dict[str, bool]:
        return dict(self.serve)


def in_memory(readiness: ReadinessTraffic = FAST) -> tuple[ReadinessBackend, Flags]:
    flags = Flags()
    return ReadinessBackend(readiness, set_serve=flags.set_serve, get_serve=flags.get_serve), flags


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_readiness_backend_conforms(check: str) -> None:
    asyncio.run(CHECKS[check](in_memory()[0]))


def test_the_whole_suite_on_one_backend_leaves_other_hosts_alone() -> None:
    async def main() -> None:
        backend, flags = in_memory()
        flags.serve["bystander"] = True
        await run_conformance(backend)
        stats = await backend.stats()
        assert list(stats) == ["bystander"] and stats["bystander"].admin_state is ServerState.READY
        assert ("bystander", False) not in flags.sets

    asyncio.run(main())


def test_settle_time_is_the_balancers_interval_times_fall() -> None:
    assert in_memory(ReadinessTraffic(port=9100))[0].settle_time == pytest.approx(2.0 * 2 + 0.25)
    assert in_memory(ReadinessTraffic(port=9100, interval=5, fall=3))[0].settle_time == 15.25


def test_weights_only_say_in_or_out_and_stats_follow_the_stored_flag() -> None:
    async def main() -> None:
        backend, flags = in_memory()
        await backend.register("h1", "127.0.30.1", 8080, admitted=True)
        assert flags.serve == {"h1": True}
        await backend.set_weight("h1", 0)
        assert flags.serve["h1"] is False
        stats = (await backend.stats())["h1"]
        assert (stats.admin_state, stats.weight, stats.status) == (
            ServerState.READY, 0, "UP, weight 0: /ready answers 503"
        )
        await backend.set_weight("h1", 7)
        assert flags.serve["h1"] is True and (await backend.stats())["h1"].status == "UP"
        # someone else (another server, a restart) took it out, then put it back
        flags.serve["h1"] = False
        assert (await backend.stats())["h1"].admin_state is ServerState.DRAIN
        flags.serve["h1"] = True
        assert (await backend.stats())["h1"].admin_state is ServerState.READY
        # a host the store knows but this backend never touched reads from its flag
        flags.serve["h2"] = False
        h2 = (await backend.stats())["h2"]
        assert (h2.admin_state, h2.weight, h2.current_sessions) == (ServerState.DRAIN, 1, 0)
        await backend.register("h2", "127.0.30.2", 8080, admitted=False)  # keeps its state
        assert flags.serve["h2"] is False and ("h2", False) not in flags.sets

    asyncio.run(main())


def test_drain_waits_the_settle_time_and_no_more() -> None:
    async def main() -> None:
        backend, flags = in_memory()
        await backend.register("h1", "127.0.30.1", 8080, admitted=True)
        started = time.monotonic()
        outcome = await drain(backend, "h1", timeout=5, clock=SystemClock(), rng=random.Random(1))
        took = time.monotonic() - started
        assert outcome.confirmed and not outcome.timed_out and flags.serve["h1"] is False
        assert backend.settle_time <= took < backend.settle_time + 0.5

    asyncio.run(main())


# -- on the store --------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'headway.db'}")
    s.migrate()
    return s


def message_of(tx: Tx, host: str) -> Desired:
    view = tx.get_host(host)
    return Desired(generation=view.generation, release=None, service=None, serve=view.serve)


def store_backed(store: Store, pushed: list[tuple[str, Desired]]) -> StoreServeFlags:
    return StoreServeFlags(store, message_of, lambda host, message: pushed.append((host, message)))


def test_store_backed_backend_conforms_and_pushes_each_change(store: Store) -> None:
    with store.tx() as tx:
        for n, name in enumerate(["conform-a", "conform-b", "conform-c", "bystander", "elsewhere"]):
            tx.upsert_host(name, "other" if name == "elsewhere" else "web", f"127.0.21.{n + 1}", {}, 0)
    pushed: list[tuple[str, Desired]] = []
    backend = store_backed(store, pushed).backend("web", FAST)

    async def main() -> None:
        await run_conformance(backend)
        assert set(await backend.stats()) == {"bystander"}  # only this service's hosts
        await backend.register("conform-a", "127.0.21.1", 8080, admitted=True)
        await backend.set_state("conform-a", ServerState.DRAIN)

    asyncio.run(main())
    with store.tx() as tx:
        assert tx.get_host("conform-a").serve is False
        assert tx.get_host("bystander").serve is True
    assert pushed[-1] == ("conform-a", Desired(generation=0, release=None, service=None, serve=False))
    assert {host for host, _ in pushed} == {"conform-a", "conform-b", "conform-c"}


def test_store_errors_become_traffic_errors(store: Store) -> None:
    backend = store_backed(store, []).backend("web", FAST)
    with pytest.raises(TrafficError) as unknown:
        asyncio.run(backend.register("ghost", "127.0.30.9", 8080, admitted=True))
    assert not isinstance(unknown.value, TransientTrafficError)
    assert "not known to the server" in unknown.value.message and "agent" in unknown.value.hint

    down = StoreServeFlags(Store("postgresql+psycopg://nobody@127.0.0.1:1/none"), message_of, print)
    with pytest.raises(TransientTrafficError) as unavailable:
        asyncio.run(down.backend("web", FAST).stats())
    assert "cannot be used" in unavailable.value.message


# -- the traffic driver ------------------------------------------------------------------------


def spec(traffic: dict[str, object]) -> ServiceSpec:
    return ServiceSpec.model_validate(
        {"name": "web", "run": {"start": ["./app"]}, "health": {"http": {}}, "traffic": traffic}
    )


def test_the_driver_picks_the_adapter_by_balancer(store: Store) -> None:
    driver = TrafficDriver(lambda outcome: None, SystemClock(), random.Random(1))
    readiness = spec({"balancer": "readiness", "readiness": {"port": 9100}})
    assert driver.backend_for(readiness) is None  # no store to keep the flags in yet
    driver.serve_flags = store_backed(store, [])
    backend = driver.backend_for(readiness)
    assert isinstance(backend, ReadinessBackend) and backend.settle_time == 4.25
    assert driver.backend_for(readiness) is backend  # kept: it remembers drain vs maint
    slower = spec({"balancer": "readiness", "readiness": {"port": 9100, "interval": "5s"}})
    changed = driver.backend_for(slower)
    assert changed is not backend and changed is not None and changed.settle_time == 10.25
    haproxy = spec({"balancer": "haproxy", "haproxy": {"socket": "/run/lb.sock", "backend": "web"}})
    assert isinstance(driver.backend_for(haproxy), HAProxyBackend)
    assert driver.backend_for(spec({})) is None
