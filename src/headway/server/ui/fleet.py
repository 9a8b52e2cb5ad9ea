"""The fleet page's data: a compact, columnar snapshot of every host, and deltas between two.

The browser draws hosts on a canvas from this (no DOM per host). A snapshot::

    {"type": "snapshot", "v": 7,
     "services": [{"name": "web", "current": 1, "rollout": "web-v2-1a2b3c", "status": "running",
                   "from": 1, "to": 2, "hosts": 4, "healthy": 4}],
     "groups": [{"service": 0, "label": "zone=a · pool=blue", "start": 0, "count": 2}, ...],
     "health": ["unknown", "starting", "healthy", "unhealthy", "failed"],
     "phases": ["", "pending", "updating", ...],
     "hosts": {"n": names, "a": addresses, "r": observed releases (0: none),
               "d": desired releases (0: none), "h": health codes, "c": connected 0/1,
               "p": phase codes in the service's active rollout (0: none)}}

Hosts are ordered by service, then group (the ``zone`` and ``pool`` labels), then
name; a group is a contiguous run. A delta carries only hosts whose release,
health, connection or phase changed, as ``[index, r, d, h, c, p]``, plus the
(small) services list; when hosts come, go or change group, a new snapshot is
sent instead.

`FleetFeed` polls the store (and, on the leader, the runner's in-memory rollout
states; on another server, the states stored, see `stored.StoredRollouts`) while
at least one browser watches (and `IDLE_STOP` seconds longer, so that going
from page to page finds it warm), at most every `INTERVAL` seconds, and hands
each watcher the deltas it missed, or a fresh snapshot when it fell too far
behind. Each poll reads six narrow columns and compares them with the last
poll's: nothing more happens while nothing changed. Addresses and labels are
read every `META_EVERY` polls, or at once when a host appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from headway.domain.models import Health
from headway.engine.state import HostPhase, RolloutState
from headway.server.context import ServerContext
from headway.server.ui.reads import HostRow, HostState, host_meta, host_states
from headway.server.ui.stored import StoredRollout, StoredRollouts
from headway.store import Tx

log = logging.getLogger("headway.ui")

INTERVAL = 0.25  # seconds between polls while someone watches
IDLE_STOP = 30.0  # seconds the feed keeps polling after the last watcher left (page changes)
META_EVERY = 40  # polls between two reads of addresses and labels (10 s)
KEPT_DELTAS = 32  # a watcher further behind than this gets a snapshot
GROUP_LABELS = ("zone", "pool")

HEALTH_CODES = [h.value for h in Health]
PHASE_CODES = ["", *(p.value for p in HostPhase)]
_HEALTH_INDEX = {name: i for i, name in enumerate(HEALTH_CODES)}
_PHASE_INDEX = {name: i for i, name in enumerate(PHASE_CODES)}


@dataclass(frozen=True, slots=True)
class RolloutBrief:
    """What the fleet page shows of a service's active rollout."""

    rollout_id: str
    status: str
    from_release: int | None
    to_release: int
    phases: dict[str, str]  # host -> phase value


def brief_of(state: RolloutState) -> RolloutBrief:
    return RolloutBrief(
        state.rollout_id,
        state.phase.value,
        state.from_release,
        state.to_release,
        {name: track.phase.value for name, track in state.hosts.items()},
    )


def rollout_briefs(ctx: ServerContext) -> dict[str, RolloutBrief]:
    """The runner's active rollouts by service (on the leader). Call on the event loop: the
    runner changes these states there, so reading them from another thread could race."""
    out: dict[str, RolloutBrief] = {}
    for service, rollout_id in list(ctx.runner.by_service.items()):
        state = ctx.runner.state_of(rollout_id)
        if state is None:
            continue
        out[service] = brief_of(state)
    return out


def stored_briefs(
    tx: Tx, rollouts: StoredRollouts, memo: dict[str, tuple[StoredRollout, RolloutBrief]]
) -> dict[str, RolloutBrief]:
    """The active rollouts by service as the store holds them (on a server that does not
    lead). ``memo`` keeps each rollout's brief for as long as its stored state is unchanged
    (the same `StoredRollout`); it is pruned to the rollouts still active."""
    out: dict[str, RolloutBrief] = {}
    seen: set[str] = set()
    for entry in rollouts.active(tx):
        summary = entry.summary
        seen.add(summary.id)
        kept = memo.get(summary.id)
        if kept is not None and kept[0] is entry:
            brief = kept[1]
        elif entry.state is not None:
            brief = brief_of(entry.state)
        else:  # the state does not parse: the summary's figures, no host phases
            brief = RolloutBrief(
                summary.id, summary.status.value, summary.from_release, summary.to_release, {}
            )
        memo[summary.id] = (entry, brief)
        out[summary.service] = brief
    for gone in [rollout_id for rollout_id in memo if rollout_id not in seen]:
        del memo[gone]
    return out


def _group_label(labels_json: str) -> str:
    try:
        labels = json.loads(labels_json)
    except ValueError:
        return ""
    if not isinstance(labels, dict):
        return ""
    return " · ".join(f"{k}={labels[k]}" for k in GROUP_LABELS if labels.get(k))


@dataclass
class Columns:
    """The hosts part of a snapshot, as Python lists (index-aligned)."""

    names: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    releases: list[int] = field(default_factory=list)
    desired: list[int] = field(default_factory=list)
    health: list[int] = field(default_factory=list)
    connected: list[int] = field(default_factory=list)
    phases: list[int] = field(default_factory=list)

    def row(self, i: int) -> list[int]:
        return [i, self.releases[i], self.desired[i], self.health[i], self.connected[i], self.phases[i]]

    def as_json(self) -> dict[str, Any]:
        return {
            "n": self.names,
            "a": self.addresses,
            "r": self.releases,
            "d": self.desired,
            "h": self.health,
            "c": self.connected,
            "p": self.phases,
        }


@dataclass
class Snapshot:
    version: int
    services: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    columns: Columns
    group_keys: list[tuple[str, str]]
    index: dict[str, int] = field(default_factory=dict)  # host name -> position

    def as_json(self) -> dict[str, Any]:
        return {
            "type": "snapshot",
            "v": self.version,
            "services": self.services,
            "groups": self.groups,
            "health": HEALTH_CODES,
            "phases": PHASE_CODES,
            "hosts": self.columns.as_json(),
        }


def build_snapshot(
    version: int,
    rows: Sequence[HostRow],
    services: Sequence[tuple[str, int | None]],
    briefs: dict[str, RolloutBrief],
    label_cache: dict[str, str] | None = None,
) -> Snapshot:
    """A snapshot from the store's rows (ordered by service and name), the services with
    their current release, and the active rollouts. Pure."""
    labels = label_cache if label_cache is not None else {}
    keyed: list[tuple[str, str, str, HostRow]] = []
    for row in rows:
        label = labels.get(row.labels)
        if label is None:
            label = labels[row.labels] = _group_label(row.labels)
        keyed.append((row.service, label, row.name, row))
    keyed.sort(key=lambda item: (item[0], item[1], item[2]))

    service_names = sorted({name for name, _ in services} | {row.service for row in rows})
    service_index = {name: i for i, name in enumerate(service_names)}
    current = dict(services)
    cols = Columns()
    groups: list[dict[str, Any]] = []
    group_keys: list[tuple[str, str]] = []
    for i, (service, label, name, row) in enumerate(keyed):
        if not group_keys or group_keys[-1] != (service, label):
            group_keys.append((service, label))
            groups.append({"service": service_index[service], "label": label, "start": i, "count": 0})
        groups[-1]["count"] += 1
        cols.names.append(name)
        cols.addresses.append(row.address)
        cols.groups.append(len(groups) - 1)
        cols.releases.append(row.observed_release or 0)
        cols.desired.append(row.desired_release or 0)
        cols.health.append(_HEALTH_INDEX.get(row.health, 0))
        cols.connected.append(1 if row.connected else 0)
    cols.phases = _phases(cols.names, groups, service_names, briefs)
    service_list = _services(service_names, current, briefs, groups, cols)
    index = {name: i for i, name in enumerate(cols.names)}
    return Snapshot(version, service_list, groups, cols, group_keys, index)


def _phases(
    names: list[str], groups: list[dict[str, Any]], service_names: list[str], briefs: dict[str, RolloutBrief]
) -> list[int]:
    phases = [0] * len(names)
    for group in groups:
        brief = briefs.get(service_names[group["service"]])
        if brief is None:
            continue
        for i in range(group["start"], group["start"] + group["count"]):
            phases[i] = _PHASE_INDEX.get(brief.phases.get(names[i], ""), 0)
    return phases


_HEALTHY = _HEALTH_INDEX[Health.HEALTHY.value]


def _services(
    service_names: list[str],
    current: dict[str, int | None],
    briefs: dict[str, RolloutBrief],
    groups: list[dict[str, Any]],
    cols: Columns,
) -> list[dict[str, Any]]:
    counts = [[0, 0] for _ in service_names]
    for group in groups:
        start, end = group["start"], group["start"] + group["count"]
        tally = counts[group["service"]]
        tally[0] += end - start
        pairs = zip(cols.health[start:end], cols.connected[start:end], strict=True)
        tally[1] += sum(1 for h, c in pairs if c and h == _HEALTHY)
    out = []
    for i, name in enumerate(service_names):
        brief = briefs.get(name)
        out.append(
            {
                "name": name,
                "current": current.get(name),
                "rollout": brief.rollout_id if brief else None,
                "status": brief.status if brief else None,
                "from": brief.from_release if brief else None,
                "to": brief.to_release if brief else None,
                "hosts": counts[i][0],
                "healthy": counts[i][1],
            }
        )
    return out


def patch_snapshot(
    old: Snapshot,
    version: int,
    changed: Sequence[HostState],
    services: Sequence[tuple[str, int | None]],
    briefs: dict[str, RolloutBrief],
    briefs_changed: bool,
) -> Snapshot | None:
    """``old`` with the hosts in ``changed`` (same names, same services) updated and the
    rollouts' phases applied: the cheap path of a poll in which a few hosts changed.
    None when a full `build_snapshot` is needed (a host or a service came or went)."""
    service_names = [s["name"] for s in old.services]
    if sorted({name for name, _ in services} | set(service_names)) != service_names:
        return None
    cols = Columns(
        names=old.columns.names,
        addresses=old.columns.addresses,
        groups=old.columns.groups,
        releases=old.columns.releases.copy(),
        desired=old.columns.desired.copy(),
        health=old.columns.health.copy(),
        connected=old.columns.connected.copy(),
        phases=old.columns.phases,
    )
    for _service, name, observed, desired, health, connected in changed:
        i = old.index.get(name)
        if i is None:
            return None
        cols.releases[i] = observed or 0
        cols.desired[i] = desired or 0
        cols.health[i] = _HEALTH_INDEX.get(health, 0)
        cols.connected[i] = 1 if connected else 0
    if briefs_changed:
        cols.phases = _phases(cols.names, old.groups, service_names, briefs)
    service_list = _services(service_names, dict(services), briefs, old.groups, cols)
    return Snapshot(version, service_list, old.groups, cols, old.group_keys, old.index)


def delta(old: Snapshot, new: Snapshot) -> dict[str, Any] | None:
    """What changed from ``old`` to ``new`` as a delta message; None when a snapshot is
    needed (hosts came, went or moved group) or when nothing changed at all."""
    if old.columns.names != new.columns.names or old.group_keys != new.group_keys:
        return None
    a, b = old.columns, new.columns
    changed = [
        b.row(i)
        for i in range(len(b.names))
        if a.releases[i] != b.releases[i]
        or a.health[i] != b.health[i]
        or a.connected[i] != b.connected[i]
        or a.phases[i] != b.phases[i]
        or a.desired[i] != b.desired[i]
        or a.addresses[i] != b.addresses[i]
    ]
    if not changed and old.services == new.services:
        return None
    return {
        "type": "delta",
        "v": new.version,
        "base": old.version,
        "services": new.services,
        "groups": new.groups,
        "ch": changed,
    }


def _same(old: Snapshot, new: Snapshot) -> bool:
    a, b = old.columns, new.columns
    return (
        old.services == new.services
        and old.group_keys == new.group_keys
        and a.names == b.names
        and a.addresses == b.addresses
        and a.releases == b.releases
        and a.desired == b.desired
        and a.health == b.health
        and a.connected == b.connected
        and a.phases == b.phases
    )


_Poll = tuple[list[HostState], list[tuple[str, int | None]], dict[str, RolloutBrief]]


class FleetFeed:
    """Polls while watched; keeps the current snapshot (encoded once) and recent deltas."""

    def __init__(
        self, ctx: ServerContext, interval: float = INTERVAL, rollouts: StoredRollouts | None = None
    ) -> None:
        self._ctx = ctx
        self._interval = interval
        self._rollouts = rollouts  # the stored states, read when this server does not lead
        self._briefs: dict[str, tuple[StoredRollout, RolloutBrief]] = {}  # worker thread only
        self._snapshot: Snapshot | None = None
        self._encoded: str | None = None  # the snapshot as JSON, made when a watcher needs it
        self._deltas: deque[tuple[int, str]] = deque(maxlen=KEPT_DELTAS)  # (version, encoded)
        self._changed = asyncio.Condition()
        self._watchers = 0
        self._idle_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._labels: dict[str, str] = {}
        # the last poll, to see whether anything changed (used by the worker thread only)
        self._last: _Poll | None = None
        self._meta: dict[str, tuple[str, str]] = {}
        self._polls_since_meta = 0

    @property
    def version(self) -> int:
        return self._snapshot.version if self._snapshot else 0

    def watch(self) -> None:
        self._watchers += 1
        self._idle_since = None
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="headway-ui-fleet")

    def unwatch(self) -> None:
        self._watchers -= 1
        if self._watchers <= 0:
            self._idle_since = asyncio.get_running_loop().time()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._idle_since is None or loop.time() - self._idle_since < IDLE_STOP:
                started = loop.time()
                try:
                    await self.poll()
                except Exception as error:  # the store may be down: keep the last picture
                    log.warning("fleet page: cannot read the fleet: %s", error)
                await asyncio.sleep(max(0.05, self._interval - (loop.time() - started)))
        finally:
            # nobody watches: forget the picture, it would be stale by the next visit
            self._snapshot = None
            self._encoded = None
            self._deltas.clear()
            self._last = None
            self._meta = {}

    async def poll(self) -> None:
        """Read the fleet once; publish a delta (or snapshot) if anything changed."""
        # the leader's live states, read here on the event loop; elsewhere the stored ones,
        # read in the worker thread with the hosts
        briefs = rollout_briefs(self._ctx) if self._ctx.runner.leading else None
        version = self.version + 1
        snapshot = await asyncio.to_thread(self._read, version, briefs)
        old = self._snapshot
        if snapshot is None or (old is not None and _same(old, snapshot)):
            return
        change = delta(old, snapshot) if old is not None else None
        self._snapshot = snapshot
        self._encoded = None
        if change is None:
            self._deltas.clear()  # watchers behind this version need the snapshot
        else:
            self._deltas.append((snapshot.version, json.dumps(change, separators=(",", ":"))))
        async with self._changed:
            self._changed.notify_all()

    def _read(self, version: int, briefs: dict[str, RolloutBrief] | None) -> Snapshot | None:
        """A new snapshot, or None when nothing changed since the last poll. ``briefs``:
        the runner's active rollouts, or None to read them from the store."""
        self._polls_since_meta += 1
        with self._ctx.store.tx() as tx:
            if briefs is None:
                if self._rollouts is None:
                    self._rollouts = StoredRollouts(self._ctx.clock)
                briefs = stored_briefs(tx, self._rollouts, self._briefs)
            elif self._briefs:
                self._briefs.clear()  # this server leads now: the stored ones are stale
            states = host_states(tx)
            services = [(s.name, tx.service_current_release(s.name)) for s in tx.list_services()]
            meta_due = self._polls_since_meta >= META_EVERY
            if meta_due or any(state[1] not in self._meta for state in states):
                meta = host_meta(tx)
                self._polls_since_meta = 0
                if meta == self._meta:
                    meta = self._meta  # unchanged: the cheap path below still applies
            else:
                meta = self._meta
        current = (states, services, briefs)
        last, old = self._last, self._snapshot
        if old is not None and meta is self._meta and current == last:
            return None
        self._last = current
        if old is not None and last is not None and meta is self._meta and len(states) == len(last[0]):
            diffs = [(was, new) for was, new in zip(last[0], states, strict=True) if was != new]
            if all(was[:2] == new[:2] for was, new in diffs):  # same hosts, in the same services
                changed = [new for _, new in diffs]
                patched = patch_snapshot(old, version, changed, services, briefs, briefs != last[2])
                if patched is not None:
                    return patched
        self._meta = meta
        if len(self._labels) > 4 * len(meta) + 1000:
            self._labels.clear()
        rows = [
            HostRow(name, service, *meta.get(name, ("", "{}")), observed, desired, health, connected)
            for service, name, observed, desired, health, connected in states
        ]
        return build_snapshot(version, rows, services, briefs, self._labels)

    def messages_since(self, version: int | None) -> list[str]:
        """Encoded messages that bring a watcher at ``version`` up to date (maybe none)."""
        if self._snapshot is None or version == self._snapshot.version:
            return []
        if version is not None:
            missing = [encoded for v, encoded in self._deltas if v > version]
            if missing and self._deltas[0][0] <= version + 1:
                return missing
        if self._encoded is None:
            self._encoded = json.dumps(self._snapshot.as_json(), separators=(",", ":"))
        return [self._encoded]

    async def wait_change(self, version: int | None, timeout: float) -> None:
        """Return when the snapshot is newer than ``version``, or after ``timeout``."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.version != (version or 0)), timeout
                )
