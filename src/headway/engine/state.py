"""The engine's state of one rollout, and its JSON form for the store.

The engine owns the state object it is handed and changes it in place:
copying 100,000 host records per event would break the O(1)-per-event
budget. A caller that needs the previous state keeps its serialised form.

The JSON form is read off the dataclasses (`_Codec`, at the end of this
module): every field in declaration order under its own name; enums as their
values, nested dataclasses as objects, tuples as lists, plan steps as
`plan.step_to_dict` writes them, ``RolloutState.hosts`` as the list of its
hosts. A new field needs no codec change: give it a default, and states
stored before it existed load with that default. A field marked ``_SPARSE``
is written only while it differs from its default, after the other fields:
states that never use it keep exactly the text they had before it existed.
Field order and each
value's form are the store's format: the text of an unchanged state must stay
the same (stored rollouts load again, and the runner compares texts to skip
unchanged saves); tests/engine/test_state_codec.py pins it.
"""

from __future__ import annotations

import functools
import heapq
import json
import operator
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from enum import Enum, StrEnum
from itertools import compress
from types import UnionType
from typing import Any, Generic, TypeVar, Union, get_args, get_origin, get_type_hints

from headway.domain.models import Health, RolloutStatus
from headway.engine.plan import Shift, Step, step_from_dict, step_to_dict
from headway.errors import SpecError

# Field metadata read by the codec.
_DERIVED = "headway.derived"  # not stored: rebuilt from the other fields on loading
_KEYED_BY = "headway.keyed_by"  # a dict of dataclasses, stored as the list of its values
_SPARSE = "headway.sparse"  # stored only while it differs from its default (after the others)


class HostPhase(StrEnum):
    PENDING = "pending"  # not touched by this rollout
    UPDATING = "updating"  # told to run the target; not healthy yet
    VERIFYING = "verifying"  # healthy on the target; waiting out min_healthy_time
    DONE = "done"  # healthy on the target for min_healthy_time
    FAILED = "failed"  # not done within the progress deadline, or reported failed
    REVERTING = "reverting"  # told to go back to the previous release
    REVERTED = "reverted"  # healthy on the previous release again
    REVERT_FAILED = "revert_failed"  # could not get back to the previous release
    # with a load balancer in front: around the switch, the host leaves and rejoins traffic
    DRAINING = "draining"  # leaving load balancing before it changes
    ADMITTING = "admitting"  # healthy on the target; rejoining load balancing
    REVERT_DRAINING = "revert_draining"
    REVERT_ADMITTING = "revert_admitting"


REVERTING_PHASES = frozenset({HostPhase.REVERT_DRAINING, HostPhase.REVERTING, HostPhase.REVERT_ADMITTING})
IN_FLIGHT = frozenset(
    {HostPhase.DRAINING, HostPhase.UPDATING, HostPhase.ADMITTING, HostPhase.VERIFYING} | REVERTING_PHASES
)
TOUCHED = frozenset(
    {
        HostPhase.DRAINING,
        HostPhase.UPDATING,
        HostPhase.ADMITTING,
        HostPhase.VERIFYING,
        HostPhase.DONE,
        HostPhase.FAILED,
    }
)


@dataclass(slots=True)
class Policy:
    max_unavailable: int
    min_healthy_time: float
    progress_deadline: float
    failure_budget: int
    auto_rollback: bool
    max_rps_per_host: float | None = None  # capacity guard; None: off
    pause_on_fail: bool = False  # verification fails: pause instead of rolling back
    max_inconclusive: int = 3  # "not enough data yet" extends a verification this often


@dataclass(slots=True)
class HostTrack:
    name: str
    phase: HostPhase = HostPhase.PENDING
    desired_release: int | None = None
    generation: int = 0
    observed_release: int | None = None
    observed_generation: int = 0
    health: Health = Health.UNKNOWN
    connected: bool = False
    detail: str = ""
    changed_at: float = 0.0
    healthy_since: float | None = None
    deadline: float | None = None
    available: bool = False
    batch: int = -1  # index of the plan step this host belongs to (-1: none)
    admitted: bool = False  # as far as this rollout knows, the balancer sends it traffic
    managed: bool = False  # this change drains and readmits the host
    next_release: int | None = None  # what it runs once drained
    pending_action: str = ""  # the traffic action it waits on

    def to_dict(self) -> dict[str, Any]:
        return _HOST.encode(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HostTrack:
        return _HOST.decode(d)


@dataclass(slots=True)
class ShiftBackRetry:
    """A blue-green rollback whose shift back failed at the balancer (reliability 20).

    The failed calls are issued again in rounds, each after a growing delay
    (`headway.engine.progress.shift_back_failed`); once the rounds are used up the
    rollout pauses, and ``resume`` issues them again with a fresh set of rounds.
    """

    rounds: int = 0  # rounds of failed calls issued again so far
    at: float | None = None  # when the next round goes out; None: none is due
    reason: str = ""  # the rollback's own reason, while a pause shows why it stopped


@dataclass(slots=True)
class RolloutState:
    rollout_id: str
    service: str
    from_release: int | None
    to_release: int
    strategy: str
    policy: Policy
    plan: list[Step]
    phase: RolloutStatus = RolloutStatus.RUNNING
    reason: str = ""
    created_at: float = 0.0
    step_index: int = 0
    step_started_at: float = 0.0
    cursor: int = 0  # next host of the current batch (or revert queue) to start
    step_open: int = 0  # hosts of the current batch not yet done or failed
    waiting_promote: bool = False
    pause_until: float | None = None
    final_status: RolloutStatus | None = None  # where ROLLING_BACK ends (rolled_back or aborted)
    hosts: dict[str, HostTrack] = field(default_factory=dict, metadata={_KEYED_BY: "name"})
    unavailable: int = 0
    failed: int = 0
    done: int = 0
    revert_queue: list[str] = field(default_factory=list)
    revert_failed: int = 0
    revert_open: int = 0
    touched: list[str] = field(default_factory=list)
    blocked: str = ""
    blocked_since: float | None = None
    seq: int = 0
    # load balancer
    traffic: bool = False  # a balancer fronts the service: drain before, admit after
    shift_back: Shift | None = None  # blue-green: how a rollback puts traffic back
    live_pool: str | None = None  # blue-green: the pool that serves after success
    shift_open: int = 0  # answers still awaited for the current shift
    pending_traffic: dict[str, dict[str, Any]] = field(default_factory=dict)  # by action id
    retry_hosts: list[str] = field(default_factory=list)  # drains to try again on resume
    load_rps: float | None = None
    # verification
    analysis_pending: str = ""  # the Analyze action awaited
    inconclusive: int = 0  # inconclusive verdicts in a row at this step
    verified: bool = False  # this step's gates passed
    # a failed blue-green shift back being retried; stored only once one failed
    shift_back_retry: ShiftBackRetry | None = field(default=None, metadata={_SPARSE: True})
    # blue-green: while above 0, the current shift's drains are held back until this many
    # more answers are in: its admits' successes (and, in a shift back, the answers of
    # the forward shift it interrupted); stored only while drains are held
    drains_held: int = field(default=0, metadata={_SPARSE: True})
    # heap of (at, host, generation); not stored: loading rebuilds it from the hosts' deadlines
    timers: list[tuple[float, str, int]] = field(default_factory=list, metadata={_DERIVED: True})

    def next_action_id(self) -> str:
        self.seq += 1
        return f"{self.rollout_id}:{self.seq}"

    def push_timer(self, at: float, host: HostTrack) -> None:
        host.deadline = at
        heapq.heappush(self.timers, (at, host.name, host.generation))

    def to_dict(self) -> dict[str, Any]:
        return _ROLLOUT.encode(self)

    def _fields(self) -> dict[str, Any]:
        """`to_dict` in its key order, with ``plan`` and ``hosts`` (the O(hosts) parts) as None."""
        return _ROLLOUT_TOP.encode(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutState:
        state = _ROLLOUT.decode(d)
        state.timers = [
            (h.deadline, h.name, h.generation) for h in state.hosts.values() if h.deadline is not None
        ]
        heapq.heapify(state.timers)
        return state


_HOST_FIELDS = tuple(f.name for f in fields(HostTrack))
_host_fingerprint = operator.attrgetter(*_HOST_FIELDS)  # every field, as one comparable tuple
_LISTS = ("plan", "hosts")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class StateEncoder:
    """The JSON text of one rollout's `RolloutState.to_dict`, re-encoding only what changed.

    ``encode(state)`` returns the text of ``json.dumps(state.to_dict(), separators=(",", ":"))``
    (the store's format; the same text, unless a field changed only between equal
    values such as 1 and 1.0), but keeps the text of every host and plan step from the
    previous call: a host whose fields are all unchanged, or a plan step that is the
    same (immutable) object, is not encoded again. Finding the changed hosts is one
    C-level pass over the hosts (a tuple of each host's fields, compared with the
    last one), so saving a 10,000-host rollout after a few hosts moved costs
    milliseconds rather than a full re-encoding. The engine needs no change
    tracking, and nothing can be missed: every field of every host is compared.
    """

    def __init__(self) -> None:
        self._prints: list[tuple[Any, ...]] = []
        self._hosts: list[str] = []
        self._steps: list[Step] = []
        self._step_texts: list[str] = []

    def encode(self, state: RolloutState) -> str:
        d = state._fields()
        out: list[str] = []
        rest: dict[str, Any] = {}
        for key, value in d.items():
            if key not in _LISTS:
                rest[key] = value
                continue
            if rest:
                out.append(_dumps(rest)[1:-1])
                rest = {}
            items = self._plan(state.plan) if key == "plan" else self._hosts_text(state)
            out.append(f'"{key}":[{",".join(items)}]')
        if rest:
            out.append(_dumps(rest)[1:-1])
        return "{" + ",".join(out) + "}"

    def _plan(self, plan: list[Step]) -> list[str]:
        steps, texts = self._steps, self._step_texts
        same = 0
        for old, new in zip(steps, plan, strict=False):
            if old is not new:
                break
            same += 1
        texts = texts[:same] + [_dumps(step_to_dict(s)) for s in plan[same:]]
        self._steps, self._step_texts = list(plan), texts
        return texts

    def _hosts_text(self, state: RolloutState) -> list[str]:
        tracks = list(state.hosts.values())
        prints = list(map(_host_fingerprint, tracks))
        texts = self._hosts[: len(prints)]
        texts.extend([""] * (len(prints) - len(texts)))
        common = min(len(prints), len(self._prints))
        changed = compress(range(common), map(operator.ne, prints, self._prints))
        host_dict = _HOST.encode  # HostTrack.to_dict, one call less per host
        for i in changed:
            texts[i] = _dumps(host_dict(tracks[i]))
        for i in range(common, len(prints)):
            texts[i] = _dumps(host_dict(tracks[i]))
        self._prints, self._hosts = prints, texts
        return texts


# ---------------------------------------------------------------- JSON codec

_T = TypeVar("_T")
_Convert = Callable[[Any], Any]


def _shift_from(raw: dict[str, Any]) -> Shift:
    step = step_from_dict(raw)
    if not isinstance(step, Shift):
        raise SpecError(f"stored rollout state: shift_back is a {type(step).__name__} step, not a shift")
    return step


# Types with a JSON form of their own: plan steps carry a "type" tag (headway.engine.plan).
_SPECIAL: dict[Any, tuple[_Convert, _Convert]] = {
    Step: (step_to_dict, step_from_dict),
    Shift: (step_to_dict, _shift_from),
}
_PLAIN = (str, int, float, bool)  # stored as they are, in both directions
_NONE = type(None)
_value = operator.attrgetter("value")


class _Codec(Generic[_T]):
    """The JSON form of one dataclass, planned once from its fields and type hints.

    The plan is a converter per field (None: stored as it is), from the
    field's type. ``encode`` is compiled from it into one dict display, the
    same code as a hand-written ``to_dict`` (``{"name": obj.name, "phase":
    obj.phase.value, ...}``; see ``encode_source``): a generic loop or
    ``dict(zip(...))`` would double the cost of encoding a host. ``decode``
    reads all fields in one C-level ``itemgetter`` call and converts only
    those that need it. A mapping that lacks a field (stored before the field
    existed) gets the field's default; lacking a field with no default, it is
    refused. Keys the class does not know are ignored. ``header`` keys come
    first in the JSON and are ignored on decoding; ``blank`` fields are
    encoded as None (`RolloutState._fields`). ``_SPARSE`` fields (declared
    after every other stored field, each with a plain default) are added to
    the dict only while they differ from their default, and read with it when
    absent.
    """

    def __init__(
        self, cls: type[_T], header: Mapping[str, Any] | None = None, blank: Collection[str] = ()
    ) -> None:
        hints = get_type_hints(cls)
        every = fields(cls)  # type: ignore[arg-type]  # cls is a dataclass, checked by _codec_of
        stored = [f for f in every if not f.metadata.get(_DERIVED)]
        for f in every:
            has_default = f.default is not MISSING or f.default_factory is not MISSING
            if f.metadata.get(_DERIVED) and f.init and not has_default:
                raise TypeError(f"{cls.__name__}.{f.name} is not stored, so it needs a default")
            if not f.metadata.get(_DERIVED) and not f.init:
                raise TypeError(f"{cls.__name__}.{f.name} is stored, so it must be an __init__ argument")
        dense = [f for f in stored if not f.metadata.get(_SPARSE)]
        sparse = stored[len(dense) :]
        for f in sparse:
            if not f.metadata.get(_SPARSE):
                raise TypeError(f"{cls.__name__}.{f.name} comes after a sparse field, so it must be sparse")
            if f.default is MISSING:
                raise TypeError(f"{cls.__name__}.{f.name} is sparse, so it needs a plain default")
        unknown = set(blank) - {f.name for f in dense}
        if unknown:
            raise TypeError(f"{cls.__name__} stores no field {sorted(unknown)} (that is not sparse)")
        self._make: Callable[..., _T] = cls
        self._name = cls.__name__
        self._header = dict(header or {})
        self._names = tuple(f.name for f in dense)
        self._take = _items(self._names)
        self._required = frozenset(
            f.name for f in dense if f.default is MISSING and f.default_factory is MISSING
        )
        # the stored fields are the first __init__ parameters, in order: call with positions
        init = [f.name for f in every if f.init and not f.kw_only]
        self._positional = tuple(init[: len(stored)]) == tuple(f.name for f in stored)
        to: list[_Convert | None] = []
        self._back: list[tuple[int, _Convert]] = []
        for i, f in enumerate(dense):
            convert, back = _converters(hints[f.name], f.metadata.get(_KEYED_BY), f"{cls.__name__}.{f.name}")
            to.append(_blank if f.name in blank else convert)
            if back is not None:
                self._back.append((i, back))
        sparse_to: list[tuple[str, _Convert | None, Any]] = []
        self._sparse: list[tuple[str, Any, _Convert | None]] = []
        for f in sparse:
            convert, back = _converters(hints[f.name], f.metadata.get(_KEYED_BY), f"{cls.__name__}.{f.name}")
            sparse_to.append((f.name, convert, f.default))
            self._sparse.append((f.name, f.default, back))
        self.encode_source, self.encode = _compile_encoder(
            self._header, zip(self._names, to, strict=True), sparse_to
        )

    def decode(self, data: Mapping[str, Any]) -> _T:
        try:
            values: Any = self._take(data)
        except KeyError:
            return self._decode_older(data)
        if self._back:
            values = list(values)
            for i, back in self._back:
                values[i] = back(values[i])
        if self._sparse:
            values = [*values, *(self._sparse_value(data, s) for s in self._sparse)]
        if self._positional:
            return self._make(*values)
        names = (*self._names, *(name for name, _, _ in self._sparse))
        return self._make(**dict(zip(names, values, strict=True)))

    @staticmethod
    def _sparse_value(data: Mapping[str, Any], sparse: tuple[str, Any, _Convert | None]) -> Any:
        name, default, back = sparse
        if name not in data:
            return default
        return data[name] if back is None else back(data[name])

    def _decode_older(self, data: Mapping[str, Any]) -> _T:
        """Stored before some fields existed: those get their defaults."""
        missing = sorted(self._required.difference(data))
        if missing:
            raise SpecError(
                f"stored rollout state: {self._name} has no {', '.join(missing)}",
                "the stored record is damaged or was not written by Headway; the rollout cannot resume",
            )
        back = dict(self._back)
        kwargs: dict[str, Any] = {}
        for i, name in enumerate(self._names):
            if name in data:
                convert = back.get(i)
                kwargs[name] = data[name] if convert is None else convert(data[name])
        for sparse in self._sparse:
            kwargs[sparse[0]] = self._sparse_value(data, sparse)
        return self._make(**kwargs)


_CODECS: dict[type[Any], _Codec[Any]] = {}


def _codec_of(cls: type[_T]) -> _Codec[_T]:
    codec = _CODECS.get(cls)
    if codec is None:
        if not is_dataclass(cls):
            raise TypeError(f"{cls.__name__} is not a dataclass")
        codec = _CODECS[cls] = _Codec(cls)
    return codec


def _compile_encoder(
    header: Mapping[str, Any],
    plan: Iterable[tuple[str, _Convert | None]],
    sparse: Iterable[tuple[str, _Convert | None, Any]] = (),
) -> tuple[str, Callable[[Any], dict[str, Any]]]:
    """The source of ``encode(obj) -> dict`` for a plan of (field, converter), and the function.

    Keys are ``repr``s of the field names (identifiers, as dataclass fields are);
    values are ``obj.field``, ``obj.field.value`` for an enum, None for a blank
    field, or a call of the field's converter, passed in by name. Each sparse
    (field, converter, default) is added after the others, only when it is not
    its default.
    """
    namespace: dict[str, Any] = {}
    items: list[str] = []
    for j, (key, value) in enumerate(header.items()):
        namespace[f"_h{j}"] = value
        items.append(f"{key!r}: _h{j}")

    def source_of(j: int, name: str, convert: _Convert | None) -> str:
        if convert is None:
            return f"obj.{name}"
        if convert is _value:
            return f"obj.{name}.value"
        if convert is _blank:
            return "None"
        namespace[f"_c{j}"] = convert
        return f"_c{j}(obj.{name})"

    j = 0
    for j, (name, convert) in enumerate(plan):
        items.append(f"{name!r}: {source_of(j, name, convert)}")
    extra: list[str] = []
    for k, (name, convert, default) in enumerate(sparse, start=j + 1):
        namespace[f"_d{k}"] = default
        test = f"obj.{name} is not None" if default is None else f"obj.{name} != _d{k}"
        extra.append(f"    if {test}:\n        d[{name!r}] = {source_of(k, name, convert)}\n")
    body = "{\n" + "".join(f"        {i},\n" for i in items) + "    }\n"
    if extra:
        source = "def encode(obj):\n    d = " + body + "".join(extra) + "    return d\n"
    else:
        source = "def encode(obj):\n    return " + body
    exec(source, namespace)
    encode: Callable[[Any], dict[str, Any]] = namespace["encode"]
    return source, encode


def _items(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """``operator.itemgetter(*names)``, giving a tuple for any number of names."""
    if len(names) > 1:
        return operator.itemgetter(*names)
    if not names:
        return lambda _data: ()
    one = operator.itemgetter(names[0])
    return lambda data: (one(data),)


def _blank(_v: Any) -> None:
    return None


def _converters(tp: Any, keyed_by: str | None, where: str) -> tuple[_Convert | None, _Convert | None]:
    """(to JSON, from JSON) for a value of type ``tp``; None: stored as it is.

    From JSON, lists and dicts are copied, as the hand-written codec did, so
    a state shares no container with the mapping it was read from.
    """
    if keyed_by is not None:
        return _keyed(tp, keyed_by, where)
    special = _SPECIAL.get(tp)
    if special is not None:
        return special
    origin, args = get_origin(tp), get_args(tp)
    if origin is UnionType or origin is Union:
        if _NONE not in args:
            raise TypeError(f"{where}: a union ({tp}) has no JSON form; add it to _SPECIAL")
        rest = [a for a in args if a is not _NONE]
        to, back = _converters(functools.reduce(operator.or_, rest), None, where)
        return _or_none(to), _or_none(back)
    if tp is Any or tp in _PLAIN:
        return None, None
    if isinstance(tp, type) and issubclass(tp, Enum):
        return _value, tp
    if isinstance(tp, type) and is_dataclass(tp):
        codec = _codec_of(tp)
        return codec.encode, codec.decode
    if tp is list or origin is list:
        return _list_of(args[0] if args else Any, where)
    if tp is dict or origin is dict:
        return _dict_of(args[1] if args else Any, args[0] if args else str, where)
    if tp is tuple or origin is tuple:
        return _tuple_of(args, where)
    raise TypeError(f"{where}: no JSON form for {tp}; use plain values, enums, dataclasses or containers")


def _or_none(convert: _Convert | None) -> _Convert | None:
    if convert is None:
        return None
    return lambda v: None if v is None else convert(v)


def _list_of(item: Any, where: str) -> tuple[_Convert | None, _Convert]:
    to, back = _converters(item, None, where)
    return (
        None if to is None else lambda v: [to(x) for x in v],
        list if back is None else lambda v: [back(x) for x in v],
    )


def _dict_of(value: Any, key: Any, where: str) -> tuple[_Convert | None, _Convert]:
    if key is not str:
        raise TypeError(f"{where}: JSON object keys are strings, not {key}")
    to, back = _converters(value, None, where)
    return (
        None if to is None else lambda v: {k: to(x) for k, x in v.items()},
        dict if back is None else lambda v: {k: back(x) for k, x in v.items()},
    )


def _tuple_of(args: tuple[Any, ...], where: str) -> tuple[_Convert, _Convert]:
    """Stored as a list (so that ``to_dict`` equals its own JSON read back)."""
    if not args or (len(args) == 2 and args[1] is Ellipsis):
        to, back = _converters(args[0] if args else Any, None, where)
        return (
            list if to is None else lambda v: [to(x) for x in v],
            tuple if back is None else lambda v: tuple(back(x) for x in v),
        )
    pairs = [_converters(a, None, where) for a in args]
    tos, backs = [p[0] for p in pairs], [p[1] for p in pairs]
    return (
        lambda v: [x if c is None else c(x) for c, x in zip(tos, v, strict=True)],
        lambda v: tuple(x if c is None else c(x) for c, x in zip(backs, v, strict=True)),
    )


def _keyed(tp: Any, key: str, where: str) -> tuple[_Convert, _Convert]:
    """A dict of dataclasses by one of their fields, stored as the list of its values."""
    args = get_args(tp)
    if get_origin(tp) is not dict or not (isinstance(args[1], type) and is_dataclass(args[1])):
        raise TypeError(f"{where}: only a dict of dataclasses is stored as a list of its values")
    if key not in {f.name for f in fields(args[1])}:
        raise TypeError(f"{where}: {args[1].__name__} has no field {key!r} to key the dict by")
    codec = _codec_of(args[1])
    key_of = operator.attrgetter(key)
    encode, decode = codec.encode, codec.decode
    return (
        lambda v: [encode(x) for x in v.values()],
        lambda v: {key_of(x): x for x in map(decode, v)},
    )


_VERSION = {"version": 1}  # the first key of a stored state; not read back
_HOST = _codec_of(HostTrack)
_ROLLOUT = _Codec(RolloutState, header=_VERSION)
_ROLLOUT_TOP = _Codec(RolloutState, header=_VERSION, blank=_LISTS)
