"""The runner's batches: reports written together, in order with the rest; state saved when it changed.

The runner (`headway.server.runner`) handles the queued requests of one batch
in one transaction. Agent reports are buffered and written in one statement,
so these tests check that the store ends up as if each request had been
written in turn, and that the rollout's stored state is the engine's state
(its JSON form), rewritten only when it changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from headway.clock import Clock
from headway.domain.models import ArtifactRef, Health, HostView
from headway.domain.spec import parse_service_spec
from headway.protocol.messages import Desired, Observation
from headway.server import requests as r
from headway.server.hub import AgentHub
from headway.server.runner import Runner
from headway.store import Store

T0 = 1_700_000_000.0
ARTIFACT = ArtifactRef(digest="sha256:" + "a" * 64, size=10, url="/api/v1/artifacts/a")


class StepClock(Clock):
    def __init__(self) -> None:
        self.t = T0

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t


class Pushes(AgentHub):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, Desired]] = []

    def push(self, host: str, message: Desired) -> bool:
        self.sent.append((host, message))
        return True


Setup = tuple[Runner, Store, StepClock, Pushes]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    spec = parse_service_spec(
        {
            "name": "web",
            "run": {"start": ["./app"]},
            "health": {"http": {}},
            "strategy": {"batch_size": 2, "min_healthy_time": "0s", "progress_deadline": "60s"},
        }
    )
    with store.tx() as tx:
        tx.put_service(spec, T0)
        tx.create_release("web", ARTIFACT, {}, "t", "", T0)
        tx.create_release("web", ARTIFACT, {"V": "2"}, "t", "", T0)
        tx.set_service_current_release("web", 1)
    clock, hub = StepClock(), Pushes()
    runner = Runner(store, hub, clock, reconnect_grace=0.0)
    runner._recover()
    runner._grace_done = True
    return runner, store, clock, hub


def hello(host: str, release: int | None = 1, generation: int = 1) -> r.HostHello:
    observed = Observation(release=release, generation=generation, health=Health.HEALTHY)
    return r.HostHello(host, "web", "127.0.0.1", {"service": "web"}, observed)


def report(
    host: str, release: int | None, generation: int, health: Health, detail: str = ""
) -> r.HostReport:
    observed = Observation(release=release, generation=generation, health=health, detail=detail)
    return r.HostReport(host, observed)


def stored(store: Store, host: str) -> HostView:
    with store.tx() as tx:
        return tx.get_host(host)


def test_reports_are_written_in_order_with_hellos_and_disconnects(setup: Setup) -> None:
    runner, store, clock, _ = setup
    runner._handle([hello("h1"), hello("h2")])
    clock.t += 1
    runner._handle(
        [
            report("h1", 1, 1, Health.UNHEALTHY, "probe failed"),
            r.HostGone("h1"),  # after the report: the report is stored, then the host is gone
            report("h2", 1, 1, Health.STARTING),
            report("h2", 1, 1, Health.FAILED, "crashed"),  # the later report of h2 wins
            report("ghost", 1, 1, Health.HEALTHY),  # never said hello: ignored
        ]
    )
    h1, h2 = stored(store, "h1"), stored(store, "h2")
    assert (h1.health, h1.detail, h1.connected) == (Health.UNHEALTHY, "probe failed", False)
    assert (h2.health, h2.detail, h2.connected) == (Health.FAILED, "crashed", True)
    clock.t += 1
    runner._handle([report("h1", 1, 1, Health.HEALTHY), hello("h1", 1, 1)])  # back: hello after report
    h1 = stored(store, "h1")
    assert (h1.health, h1.connected, h1.last_seen) == (Health.HEALTHY, True, clock.t)


def test_a_rollout_start_sees_the_reports_of_its_own_batch(setup: Setup) -> None:
    runner, _, clock, hub = setup
    runner._handle([hello("h1"), hello("h2"), hello("h3")])
    clock.t += 1
    start = r.StartRollout("web", 2, "alice")
    runner._handle([report("h3", 1, 1, Health.FAILED, "down"), start])
    (state,) = runner.states.values()
    assert state.hosts["h3"].health is Health.FAILED  # listed after the report was written
    assert {h for h, _ in hub.sent} >= {"h1", "h2"}


def stored_state(store: Store, rollout_id: str) -> tuple[float, dict[str, object]]:
    with store.tx() as tx:
        summary, state = tx.get_rollout(rollout_id)
    return summary.updated_at, state


def test_the_stored_state_is_the_engines_and_is_rewritten_only_when_it_changed(setup: Setup) -> None:
    runner, store, clock, hub = setup
    runner._handle([hello(f"h{i}") for i in range(4)])
    clock.t += 1
    runner._handle([r.StartRollout("web", 2, "alice")])
    (rollout_id,) = runner.states
    state = runner.states[rollout_id]
    updated, saved = stored_state(store, rollout_id)
    assert saved == json.loads(json.dumps(state.to_dict()))
    # a heartbeat that changes nothing: the row is not rewritten
    clock.t += 1
    runner._handle([report("h3", 1, 1, Health.HEALTHY)])
    assert stored_state(store, rollout_id)[0] == updated
    # the first batch's hosts come up on v2: saved, and the next batch starts
    clock.t += 1
    sent = {host: m.generation for host, m in hub.sent if m.release is not None and m.release.number == 2}
    runner._handle([report(h, 2, g, Health.HEALTHY) for h, g in sent.items()])
    updated_after, saved = stored_state(store, rollout_id)
    assert updated_after == clock.t
    assert saved == json.loads(json.dumps(state.to_dict()))
    assert sum(1 for h in state.hosts.values() if h.phase.value == "done") == len(sent) == 2


def test_a_batch_that_fails_before_its_commit_leaves_nothing_taken_for_saved(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, store, clock, hub = setup
    runner._handle([hello(f"h{i}") for i in range(4)])
    clock.t += 1
    runner._handle([r.StartRollout("web", 2, "alice")])
    (rollout_id,) = runner.states
    sent = {host: m.generation for host, m in hub.sent if m.release is not None and m.release.number == 2}
    before = stored_state(store, rollout_id)

    from headway.store import Tx

    def broken(self: Tx, items: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Tx, "add_outbox", broken)
    clock.t += 1
    with pytest.raises(RuntimeError):
        runner._handle([report(h, 2, g, Health.HEALTHY) for h, g in sent.items()])
    assert stored_state(store, rollout_id) == before  # rolled back
    monkeypatch.undo()
    runner._recover()  # what Runner.run does after a failed batch
    clock.t += 1
    runner._handle([report(h, 2, g, Health.HEALTHY) for h, g in sent.items()])
    state = runner.states[rollout_id]
    assert stored_state(store, rollout_id)[1] == json.loads(json.dumps(state.to_dict()))
    assert state.done == 2


def test_a_disconnect_reported_by_a_server_the_agent_left_is_ignored(setup: Setup) -> None:
    """An agent moved from server A to server B: A's late "gone" must not mark it away."""
    runner, store, _, _ = setup
    moved = hello("h1")
    moved.origin = "server-b"
    runner._handle([moved])
    runner._handle([r.HostGone("h1", origin="server-a")])
    assert stored(store, "h1").connected
    runner._handle([r.HostGone("h1", origin="server-b")])  # from the server it is on: gone
    assert not stored(store, "h1").connected


def test_batches_are_sized_to_hold_the_loop_about_a_second(setup: Setup) -> None:
    runner = setup[0]
    assert runner.batch_limit() == 5000  # nothing measured yet
    for _ in range(20):
        runner._measure(1000, 2.5)  # 2.5 ms a request
    assert 390 <= runner.batch_limit() <= 410
    for _ in range(40):
        runner._measure(1000, 0.01)  # cheap requests: the cap again
    assert runner.batch_limit() == 5000
    runner._measure(5, 100.0)  # a tiny batch says little about the cost per request
    assert runner.batch_limit() == 5000
