"""`StateEncoder` gives the store's JSON of `RolloutState.to_dict`, re-encoding only what changed.

The runner saves a rollout's state after every batch of events with it; these
tests drive real rollouts through the engine (a host failing, a rollback, a
host joining mid-way) and compare the encoder's text, after every event, with
a full encoding of ``to_dict()``.
"""

from __future__ import annotations

import json
import random
from collections import deque

from headway.domain.models import Health, HostView
from headway.domain.spec import RollingStrategy
from headway.engine import machine
from headway.engine.actions import SetDesired
from headway.engine.events import HostObserved, Tick
from headway.engine.state import RolloutState, StateEncoder


def full(state: RolloutState) -> str:
    return json.dumps(state.to_dict(), separators=(",", ":"))


def start(hosts: int, min_healthy: str = "2s") -> tuple[RolloutState, list[SetDesired]]:
    strategy = RollingStrategy.model_validate(
        {
            "batch_size": "25%",
            "min_healthy_time": min_healthy,
            "progress_deadline": "30s",
            "failure_budget": 0,
        }
    )
    views = [
        HostView(
            name=f"h{i:03d}",
            service="web",
            address="127.0.0.1",
            desired_release=1,
            generation=1,
            observed_release=1,
            observed_generation=1,
            health=Health.HEALTHY,
            connected=True,
        )
        for i in range(hosts)
    ]
    decision = machine.new_rollout(
        rollout_id="r", service="web", from_release=1, to_release=2, strategy=strategy, hosts=views, now=0.0
    )
    return decision.state, [a for a in decision.actions if isinstance(a, SetDesired)]


def drive(
    state: RolloutState,
    first: list[SetDesired],
    encoder: StateEncoder,
    rng: random.Random,
    failing: set[str],
) -> int:
    """Run the rollout to its end like the runner would, checking the encoder after each event:
    deliver the desired states in order (failing hosts report failed), tick when idle."""
    outbox: deque[SetDesired] = deque(first)
    now = 0.0
    checked = 0
    assert encoder.encode(state) == full(state)
    decision = machine.step(state, Tick(), now)
    while not state.phase.terminal and now < 1000:
        outbox.extend(a for a in decision.actions if isinstance(a, SetDesired))
        if outbox:
            action = outbox.popleft()
            health = Health.FAILED if action.host in failing and action.release == 2 else Health.HEALTHY
            event: HostObserved | Tick = HostObserved(
                action.host, action.release, action.generation, health, True, "r"
            )
        else:
            deadline = machine.next_deadline(state)
            now = max(now + 0.5, deadline if deadline is not None else now)
            event = Tick()
        decision = machine.step(state, event, now)
        if rng.random() < 0.1:
            # a heartbeat: the same report again, nothing changes
            name = rng.choice(list(state.hosts))
            track = state.hosts[name]
            same = HostObserved(
                name, track.observed_release, track.observed_generation, track.health, True, track.detail
            )
            machine.step(state, same, now)
        assert encoder.encode(state) == full(state)
        checked += 1
    return checked


def test_the_encoder_matches_a_full_encoding_through_a_rollout() -> None:
    state, first = start(40)
    checked = drive(state, first, StateEncoder(), random.Random(1), failing=set())
    assert state.phase.value == "succeeded" and checked > 40


def test_the_encoder_matches_through_a_failure_and_a_rollback() -> None:
    state, first = start(40, min_healthy="0s")
    drive(state, first, StateEncoder(), random.Random(2), failing={"h011"})
    assert state.phase.value in {"rolled_back", "failed"}
    assert any(h.phase.value in {"reverted", "reverting"} for h in state.hosts.values())


def test_hosts_joining_or_a_new_encoder_change_nothing_in_the_text() -> None:
    state, _ = start(10)
    encoder = StateEncoder()
    assert encoder.encode(state) == full(state)
    machine.step(state, HostObserved("late-host", 1, 1, Health.HEALTHY, True, ""), 1.0)
    assert "late-host" in state.hosts
    assert encoder.encode(state) == full(state)
    assert StateEncoder().encode(state) == full(state)
    # a state read back from its text encodes to the same text
    again = RolloutState.from_dict(json.loads(full(state)))
    assert StateEncoder().encode(again) == full(state)
