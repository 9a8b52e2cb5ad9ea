"""The state's JSON is, byte for byte, what the hand-written codec it replaced wrote.

Users' databases hold that text, and the runner compares a state's text with
the last one saved to skip unchanged saves, so the codec read off the
dataclasses (``headway.engine.state._Codec``) must write the same text and
read the same states. ``reference_*`` below are the hand-written
``to_dict``/``from_dict`` as they were before it, copied as functions. The
states compared come from the engine: every step of every story in
scenarios/*.txt, every step of seeded simulations (canary, rolling,
verification, the balancer, faults, a server restart), and one state with
every field away from its default. Each is checked four ways: ``to_dict``,
a `StateEncoder` kept across the steps, ``from_dict`` of the text, and
``from_dict`` of the text as an older version wrote it (without the keys the
reference read with a default).

A field added to a dataclass later is new to the reference: the comparison
leaves its key out (`comparable`), so adding a field needs no edit here. A
sparse field (``shift_back_retry``, ``drains_held``) has no key at all until it is set, so the
texts of states that do not use it stay byte for byte the reference's.
"""

from __future__ import annotations

import heapq
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest

from headway.domain.models import Health, RolloutStatus
from headway.engine.actions import Action
from headway.engine.plan import Shift, step_from_dict, step_to_dict
from headway.engine.state import (
    _DERIVED,
    _KEYED_BY,
    _SPARSE,
    HostPhase,
    HostTrack,
    Policy,
    RolloutState,
    ShiftBackRetry,
    StateEncoder,
    _Codec,
)
from headway.errors import SpecError
from headway.sim.engine_plane import EnginePlane
from headway.sim.scenario import draw
from headway.sim.world import FROM_RELEASE, TO_RELEASE, World

from .scenario import Scenario

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.txt"))

# ------------------------------------------------ the hand-written codec, as it was


def reference_host_to_dict(h: HostTrack) -> dict[str, Any]:
    return {
        "name": h.name,
        "phase": h.phase.value,
        "desired_release": h.desired_release,
        "generation": h.generation,
        "observed_release": h.observed_release,
        "observed_generation": h.observed_generation,
        "health": h.health.value,
        "connected": h.connected,
        "detail": h.detail,
        "changed_at": h.changed_at,
        "healthy_since": h.healthy_since,
        "deadline": h.deadline,
        "available": h.available,
        "batch": h.batch,
        "admitted": h.admitted,
        "managed": h.managed,
        "next_release": h.next_release,
        "pending_action": h.pending_action,
    }


def reference_host_from_dict(d: dict[str, Any]) -> HostTrack:
    return HostTrack(
        name=d["name"],
        phase=HostPhase(d["phase"]),
        desired_release=d["desired_release"],
        generation=d["generation"],
        observed_release=d["observed_release"],
        observed_generation=d["observed_generation"],
        health=Health(d["health"]),
        connected=d["connected"],
        detail=d["detail"],
        changed_at=d["changed_at"],
        healthy_since=d["healthy_since"],
        deadline=d["deadline"],
        available=d["available"],
        batch=d["batch"],
        admitted=d.get("admitted", False),
        managed=d.get("managed", False),
        next_release=d.get("next_release"),
        pending_action=d.get("pending_action", ""),
    )


def reference_to_dict(self: RolloutState) -> dict[str, Any]:
    d = reference_fields(self)
    d["plan"] = [step_to_dict(s) for s in self.plan]
    d["hosts"] = [reference_host_to_dict(h) for h in self.hosts.values()]
    return d


def reference_fields(self: RolloutState) -> dict[str, Any]:
    p = self.policy
    return {
        "version": 1,
        "rollout_id": self.rollout_id,
        "service": self.service,
        "from_release": self.from_release,
        "to_release": self.to_release,
        "strategy": self.strategy,
        "policy": {
            "max_unavailable": p.max_unavailable,
            "min_healthy_time": p.min_healthy_time,
            "progress_deadline": p.progress_deadline,
            "failure_budget": p.failure_budget,
            "auto_rollback": p.auto_rollback,
            "max_rps_per_host": p.max_rps_per_host,
            "pause_on_fail": p.pause_on_fail,
            "max_inconclusive": p.max_inconclusive,
        },
        "plan": None,
        "phase": self.phase.value,
        "reason": self.reason,
        "created_at": self.created_at,
        "step_index": self.step_index,
        "step_started_at": self.step_started_at,
        "cursor": self.cursor,
        "step_open": self.step_open,
        "waiting_promote": self.waiting_promote,
        "pause_until": self.pause_until,
        "final_status": self.final_status.value if self.final_status else None,
        "hosts": None,
        "unavailable": self.unavailable,
        "failed": self.failed,
        "done": self.done,
        "revert_queue": self.revert_queue,
        "revert_failed": self.revert_failed,
        "revert_open": self.revert_open,
        "touched": self.touched,
        "blocked": self.blocked,
        "blocked_since": self.blocked_since,
        "seq": self.seq,
        "traffic": self.traffic,
        "shift_back": step_to_dict(self.shift_back) if self.shift_back else None,
        "live_pool": self.live_pool,
        "shift_open": self.shift_open,
        "pending_traffic": self.pending_traffic,
        "retry_hosts": self.retry_hosts,
        "load_rps": self.load_rps,
        "analysis_pending": self.analysis_pending,
        "inconclusive": self.inconclusive,
        "verified": self.verified,
    }


def reference_from_dict(d: dict[str, Any]) -> RolloutState:
    p = d["policy"]
    state = RolloutState(
        rollout_id=d["rollout_id"],
        service=d["service"],
        from_release=d["from_release"],
        to_release=d["to_release"],
        strategy=d["strategy"],
        policy=Policy(
            max_unavailable=p["max_unavailable"],
            min_healthy_time=p["min_healthy_time"],
            progress_deadline=p["progress_deadline"],
            failure_budget=p["failure_budget"],
            auto_rollback=p["auto_rollback"],
            max_rps_per_host=p.get("max_rps_per_host"),
            pause_on_fail=p.get("pause_on_fail", False),
            max_inconclusive=p.get("max_inconclusive", 3),
        ),
        plan=[step_from_dict(s) for s in d["plan"]],
        phase=RolloutStatus(d["phase"]),
        reason=d["reason"],
        created_at=d["created_at"],
        step_index=d["step_index"],
        step_started_at=d["step_started_at"],
        cursor=d["cursor"],
        step_open=d["step_open"],
        waiting_promote=d["waiting_promote"],
        pause_until=d["pause_until"],
        final_status=RolloutStatus(d["final_status"]) if d["final_status"] else None,
        unavailable=d["unavailable"],
        failed=d["failed"],
        done=d["done"],
        revert_queue=list(d["revert_queue"]),
        revert_failed=d["revert_failed"],
        revert_open=d["revert_open"],
        touched=list(d["touched"]),
        blocked=d["blocked"],
        blocked_since=d["blocked_since"],
        seq=d["seq"],
        traffic=d.get("traffic", False),
        shift_back=reference_shift_from(d.get("shift_back")),
        live_pool=d.get("live_pool"),
        shift_open=d.get("shift_open", 0),
        pending_traffic=dict(d.get("pending_traffic", {})),
        retry_hosts=list(d.get("retry_hosts", [])),
        load_rps=d.get("load_rps"),
        analysis_pending=d.get("analysis_pending", ""),
        inconclusive=d.get("inconclusive", 0),
        verified=d.get("verified", False),
    )
    for raw in d["hosts"]:
        host = reference_host_from_dict(raw)
        state.hosts[host.name] = host
        if host.deadline is not None:
            state.timers.append((host.deadline, host.name, host.generation))
    heapq.heapify(state.timers)
    return state


def reference_shift_from(raw: dict[str, Any] | None) -> Shift | None:
    if raw is None:
        return None
    step = step_from_dict(raw)
    assert isinstance(step, Shift)
    return step


# The keys the reference read with a default: a state written before they existed lacks them.
LATER_KEYS = {
    "state": (
        "traffic", "shift_back", "live_pool", "shift_open", "pending_traffic", "retry_hosts",
        "load_rps", "analysis_pending", "inconclusive", "verified",
    ),
    "policy": ("max_rps_per_host", "pause_on_fail", "max_inconclusive"),
    "host": ("admitted", "managed", "next_release", "pending_action"),
}  # fmt: skip
NOT_STORED = {"timers"}  # rebuilt from the hosts on loading

# ------------------------------------------------ comparing


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _keys(cls: type[Any], reference: dict[str, Any]) -> set[str]:
    """The fields of ``cls`` added after the reference (none yet), by the reference's keys."""
    return {f.name for f in fields(cls)} - set(reference) - NOT_STORED


_SAMPLE = reference_to_dict(
    RolloutState("r", "web", 1, 2, "rolling", Policy(1, 0.0, 1.0, 0, True), [], hosts={"h": HostTrack("h")})
)
NEW_FIELDS = {
    "state": _keys(RolloutState, _SAMPLE),
    "policy": _keys(Policy, _SAMPLE["policy"]),
    "host": _keys(HostTrack, _SAMPLE["hosts"][0]),
}


def comparable(text: str) -> str:
    """``text`` as the reference would have written it: without the keys of fields added since.

    A sparse field's key is only there while the field is set; a text that has no key
    of a field added since is compared as it is, byte for byte.
    """
    if not any(NEW_FIELDS.values()):
        return text  # compared as it is, byte for byte
    data = json.loads(text)
    dropped = [data.pop(key) for key in NEW_FIELDS["state"] if key in data]
    dropped += [data["policy"].pop(key) for key in NEW_FIELDS["policy"] if key in data["policy"]]
    for host in data["hosts"]:
        dropped += [host.pop(key) for key in NEW_FIELDS["host"] if key in host]
    return dumps(data) if dropped else text


def as_older_version(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as written before the keys in LATER_KEYS existed."""
    older = {k: v for k, v in data.items() if k not in LATER_KEYS["state"]}
    older["policy"] = {k: v for k, v in data["policy"].items() if k not in LATER_KEYS["policy"]}
    older["hosts"] = [{k: v for k, v in h.items() if k not in LATER_KEYS["host"]} for h in data["hosts"]]
    return older


def assert_same_state(got: RolloutState, want: RolloutState) -> None:
    assert got == want  # every field, the timer heap and the hosts included
    assert list(got.hosts) == list(want.hosts)  # in the same order


def check(state: RolloutState, encoder: StateEncoder) -> str:
    """Every way the codec is used agrees with the reference on ``state``; the reference's text."""
    expected = dumps(reference_to_dict(state))
    assert comparable(dumps(state.to_dict())) == expected
    assert comparable(encoder.encode(state)) == expected
    data = json.loads(expected)
    assert_same_state(RolloutState.from_dict(data), reference_from_dict(data))
    older = as_older_version(data)
    assert_same_state(RolloutState.from_dict(older), reference_from_dict(older))
    return expected


@dataclass
class CheckedStory(Scenario):
    """A story of scenarios/*.txt, its state checked after every command the engine took."""

    encoder: StateEncoder = field(default_factory=StateEncoder)
    texts: list[str] = field(default_factory=list)

    def _after(self, actions: list[Action]) -> None:
        super()._after(actions)
        self.texts.append(check(self._state(), self.encoder))


class CheckedPlane(EnginePlane):
    """The simulation's engine, its state checked after every step."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.encoder = StateEncoder()
        self.texts: list[str] = []

    def _checks(self, state: RolloutState) -> None:
        super()._checks(state)
        self.texts.append(check(state, self.encoder))


def simulated(seed: int, profile: str, hosts: int = 24) -> list[str]:
    rng = random.Random(seed)
    scenario = draw(seed, hosts, "engine", profile, rng)
    world = World(scenario, rng, tail=20)
    plane = CheckedPlane(world, scenario, list(world.agents), FROM_RELEASE, TO_RELEASE)
    try:
        world.run(plane)
    finally:
        plane.close()
    return plane.texts


def every_field_set() -> RolloutState:
    """A state from a blue-green story with every field away from its default."""
    story = CheckedStory(Path(__file__).parent / "scenarios" / "29_blue_green_rollback.txt")
    story.run()
    state = story._state()
    state.policy.max_rps_per_host = 50.0
    state.policy.pause_on_fail = True
    state.policy.max_inconclusive = 5
    state.waiting_promote = True
    state.pause_until = 12.5
    state.final_status = RolloutStatus.ABORTED
    state.revert_queue = ["h1", "h2"]
    state.revert_failed = 1
    state.revert_open = 2
    state.blocked = "capacity: 3 hosts would serve 900 rps"
    state.blocked_since = 3.25
    state.shift_open = 2
    state.pending_traffic = {"r1:40": {"kind": "drain", "host": "h1", "failed": True}}
    state.retry_hosts = ["h3"]
    state.load_rps = 1234.5
    state.analysis_pending = "r1:41"
    state.inconclusive = 2
    state.verified = True
    state.created_at = 3  # an int where a float is declared: kept as stored, written "3"
    host = state.hosts["h1"]
    host.phase = HostPhase.REVERT_ADMITTING
    host.desired_release, host.generation = 1, 7
    host.observed_release, host.observed_generation = 2, 6
    host.health, host.connected, host.available = Health.STARTING, True, True
    host.detail = 'exit 3: "bad" config \u2013 see log'
    host.changed_at, host.healthy_since = 9.5, 8.0
    host.batch, host.admitted, host.managed = 2, True, True
    host.next_release, host.pending_action = 1, "r1:39"
    state.push_timer(20.0, host)
    return state


# ------------------------------------------------ tests


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_step_of_a_story_encodes_and_decodes_as_before(path: Path) -> None:
    story = CheckedStory(path)
    story.run()
    assert story.texts  # the state after each command the engine took, at least the start


@pytest.mark.parametrize(
    ("seed", "profile"), [(1, "t6"), (2, "t6"), (3, "mixed"), (4, "mixed"), (5, "mixed")]
)
def test_every_step_of_a_simulated_rollout_encodes_and_decodes_as_before(seed: int, profile: str) -> None:
    assert len(simulated(seed, profile)) > 50


def test_a_state_with_every_field_set_encodes_and_decodes_as_before() -> None:
    state = every_field_set()
    text = check(state, StateEncoder())
    assert '"created_at":3,' in text and '"final_status":"aborted"' in text
    assert state.to_dict()["shift_back"]["type"] == "shift"


def test_the_states_compared_take_several_values_in_every_field() -> None:
    """The comparisons above exercise every field: each key of the text takes two values at least."""
    texts = [text for path in SCENARIOS for text in _story_texts(path)]
    texts += simulated(3, "mixed") + simulated(1, "t6")
    texts.append(dumps(reference_to_dict(every_field_set())))
    seen: dict[str, set[str]] = defaultdict(set)
    for text in texts:
        data = json.loads(text)
        for key, value in data.items():
            if key == "policy":
                for k, v in value.items():
                    seen[f"policy.{k}"].add(dumps(v))
            elif key == "hosts":
                for host in value:
                    for k, v in host.items():
                        seen[f"hosts.{k}"].add(dumps(v))
            else:
                seen[key].add(dumps(value))
    constant = sorted(key for key, values in seen.items() if len(values) < 2)
    assert constant == ["service", "version"]


def _story_texts(path: Path) -> list[str]:
    story = CheckedStory(path)
    story.run()
    return story.texts


def test_a_state_decoded_shares_no_list_or_dict_with_its_source() -> None:
    data = json.loads(dumps(every_field_set().to_dict()))
    before = dumps(data)
    state = RolloutState.from_dict(data)
    state.revert_queue.append("x")
    state.touched.append("x")
    state.retry_hosts.append("x")
    state.pending_traffic["x"] = {}
    next(iter(state.hosts.values())).detail = "changed"
    assert dumps(data) == before


def test_a_state_missing_a_key_without_default_is_refused_with_its_name() -> None:
    data = json.loads(dumps(every_field_set().to_dict()))
    del data["to_release"]
    with pytest.raises(SpecError, match="RolloutState has no to_release"):
        RolloutState.from_dict(data)
    data = json.loads(dumps(every_field_set().to_dict()))
    del data["hosts"][0]["name"]
    with pytest.raises(SpecError, match="HostTrack has no name"):
        RolloutState.from_dict(data)


def test_keys_the_state_does_not_know_are_ignored() -> None:
    state = every_field_set()
    data = json.loads(dumps(state.to_dict()))
    data["from_a_newer_version"] = {"x": 1}
    data["hosts"][0]["also_newer"] = True
    assert_same_state(RolloutState.from_dict(data), reference_from_dict(json.loads(dumps(state.to_dict()))))


# ------------------------------------------------ a new field of each kind needs no codec change


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclass(slots=True)
class Part:
    key: str
    colour: Colour = Colour.RED
    weight: float | None = None


@dataclass(slots=True)
class Sample:
    name: str
    colour: Colour
    part: Part
    maybe_colour: Colour | None = None
    maybe_part: Part | None = None
    pair: tuple[float, str] = (0.0, "")
    names: tuple[str, ...] = ()
    parts: dict[str, Part] = field(default_factory=dict, metadata={_KEYED_BY: "key"})
    colours: dict[str, list[Colour]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    cache: list[int] = field(default_factory=list, metadata={_DERIVED: True})


def test_each_kind_of_field_has_a_json_form_read_off_its_type() -> None:
    codec = _Codec(Sample, header={"version": 2})
    sample = Sample(
        name="s",
        colour=Colour.BLUE,
        part=Part("p", Colour.BLUE, 1.5),
        maybe_colour=Colour.RED,
        maybe_part=Part("q"),
        pair=(2.5, "x"),
        names=("a", "b"),
        parts={"k1": Part("k1"), "k2": Part("k2", weight=3.0)},
        colours={"warm": [Colour.RED]},
        extra={"any": [1, {"x": None}]},
        cache=[1, 2],
    )
    data = codec.encode(sample)
    assert data == {
        "version": 2,
        "name": "s",
        "colour": "blue",
        "part": {"key": "p", "colour": "blue", "weight": 1.5},
        "maybe_colour": "red",
        "maybe_part": {"key": "q", "colour": "red", "weight": None},
        "pair": [2.5, "x"],
        "names": ["a", "b"],
        "parts": [
            {"key": "k1", "colour": "red", "weight": None},
            {"key": "k2", "colour": "red", "weight": 3.0},
        ],
        "colours": {"warm": ["red"]},
        "extra": {"any": [1, {"x": None}]},
    }
    assert list(data) == ["version", *(f.name for f in fields(Sample) if f.name != "cache")]
    assert json.loads(json.dumps(data)) == data  # plain JSON values: tuples are lists, enums strings
    back = codec.decode(json.loads(json.dumps(data)))
    assert back == Sample(**{f.name: getattr(sample, f.name) for f in fields(Sample) if f.name != "cache"})
    assert back.cache == []  # not stored: its default
    assert isinstance(back.colour, Colour) and isinstance(back.colours["warm"][0], Colour)
    # written before the fields with a default existed
    older = codec.decode({"name": "s", "colour": "red", "part": {"key": "p"}})
    assert older == Sample("s", Colour.RED, Part("p"))
    # None where None is allowed
    assert codec.decode({**data, "maybe_colour": None, "maybe_part": None}).maybe_part is None


def test_a_field_type_without_a_json_form_is_refused_when_the_codec_is_planned() -> None:
    @dataclass
    class Bad:
        tags: set[str]

    with pytest.raises(TypeError, match=r"Bad.tags: no JSON form for set\[str\]"):
        _Codec(Bad)


# ------------------------------------------------ sparse fields: a key only while set


@dataclass(slots=True)
class Sparse:
    name: str
    count: int = 0
    part: Part | None = field(default=None, metadata={_SPARSE: True})
    level: int = field(default=0, metadata={_SPARSE: True})
    colour: Colour = field(default=Colour.RED, metadata={_SPARSE: True})


def test_a_sparse_field_is_stored_only_while_it_differs_from_its_default() -> None:
    codec = _Codec(Sparse, header={"version": 1})
    plain = Sparse("s", 2)
    assert codec.encode(plain) == {"version": 1, "name": "s", "count": 2}
    assert codec.decode({"name": "s", "count": 2}) == plain
    assert codec.decode({"name": "s"}) == Sparse("s")  # older still: the dense default too
    full = Sparse("s", 2, Part("p", Colour.BLUE), 3, Colour.BLUE)
    data = codec.encode(full)
    assert list(data) == ["version", "name", "count", "part", "level", "colour"]  # declared order
    assert data["part"] == {"key": "p", "colour": "blue", "weight": None} and data["colour"] == "blue"
    assert codec.decode(json.loads(json.dumps(data))) == full
    assert codec.decode({"name": "s", "level": 4}) == Sparse("s", level=4)  # some set, some not
    assert codec.decode({"name": "s", "part": None}) == Sparse("s")  # an explicit null reads back


def test_a_sparse_field_must_come_last_and_have_a_plain_default() -> None:
    @dataclass
    class DenseAfter:
        a: int = field(default=0, metadata={_SPARSE: True})
        b: int = 0

    with pytest.raises(TypeError, match=r"DenseAfter\.b comes after a sparse field"):
        _Codec(DenseAfter)

    @dataclass
    class Factory:
        a: list[int] = field(default_factory=list, metadata={_SPARSE: True})

    with pytest.raises(TypeError, match=r"Factory\.a is sparse, so it needs a plain default"):
        _Codec(Factory)


def test_a_shift_back_being_retried_is_stored_after_every_other_key() -> None:
    """`RolloutState.shift_back_retry` is written only by the states that use it; those round-trip."""
    state = every_field_set()
    unused = dumps(state.to_dict())
    assert '"shift_back_retry"' not in unused
    state.shift_back_retry = ShiftBackRetry(rounds=2, at=41.5, reason="aborted by dave")
    text = dumps(state.to_dict())
    assert text.startswith(unused[:-1] + ',"shift_back_retry":{')
    assert json.loads(text)["shift_back_retry"] == {"rounds": 2, "at": 41.5, "reason": "aborted by dave"}
    encoder = StateEncoder()
    assert encoder.encode(state) == text
    back = RolloutState.from_dict(json.loads(text))
    assert_same_state(back, state)
    assert isinstance(back.shift_back_retry, ShiftBackRetry)
    state.shift_back_retry = None
    assert encoder.encode(state) == unused  # and gone again once cleared


def test_drains_held_back_are_stored_only_while_held() -> None:
    """`RolloutState.drains_held` (a blue-green shift's drains waiting for its admits) is
    written only while drains are held, after every other key; such a state round-trips."""
    state = every_field_set()
    unused = dumps(state.to_dict())
    assert '"drains_held"' not in unused
    state.drains_held = 3
    text = dumps(state.to_dict())
    assert text == unused[:-1] + ',"drains_held":3}'
    encoder = StateEncoder()
    assert encoder.encode(state) == text
    assert_same_state(RolloutState.from_dict(json.loads(text)), state)
    state.shift_back_retry = ShiftBackRetry(rounds=1, at=33.0)
    both = dumps(state.to_dict())
    assert both.index('"shift_back_retry"') < both.index('"drains_held"')  # declared order
    assert_same_state(RolloutState.from_dict(json.loads(both)), state)
    state.drains_held, state.shift_back_retry = 0, None
    assert encoder.encode(state) == unused  # and gone again once released


def test_a_story_stores_drains_held_mid_shift_and_drops_the_key_after() -> None:
    """In a blue-green story the key appears while a shift's drains wait, and only then."""

    @dataclass
    class Story(CheckedStory):
        stored: list[str] = field(default_factory=list)

        def _after(self, actions: list[Action]) -> None:
            super()._after(actions)
            self.stored.append(dumps(self._state().to_dict()))

    story = Story(Path(__file__).parent / "scenarios" / "40_blue_green_admit_fails_in_shift.txt")
    story.run()
    held = [json.loads(text)["drains_held"] for text in story.stored if '"drains_held"' in text]
    assert held[:3] == [2, 2, 1]  # the shift starts: 2 admits; h3's fails: still 2; h2's is in: 1
    assert all(isinstance(n, int) and n > 0 for n in held)
    assert '"drains_held"' not in story.stored[-1]
