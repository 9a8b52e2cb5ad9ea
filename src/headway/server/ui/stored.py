"""Rollouts as the store holds them: what the pages of a server that does not lead show.

Only the leader runs the rollout runner, so only it has the live states in memory
(`Runner.states`). The other servers read them from the store, where the leader saves
each state in the transaction of its change. A state is large (about 3 MB of JSON and
50 ms to decode and parse at 10,000 hosts) and the pages look often (the fleet feed
four times a second, each rollout page's stream twice), so `StoredRollouts`:

- reads the narrow stamp ``(id, service, status, updated_at)`` of the rollouts it needs
  first (`reads.rollout_stamps`), and reads and parses a state only when its
  ``updated_at`` moved: the parsed states are kept by ``(rollout id, updated_at)``;
- reads a rollout that keeps changing at most every `REFRESH` seconds (a follower's
  pages trail the leader's by that much at most), except that a new status shows at once;
- keeps the states of the active rollouts and of the `KEEP` rollouts looked at last.

Call it from a worker thread (`asyncio.to_thread`) inside a `Store.tx()`; one cache per
server serves the fleet feed and every rollout page (it has its own lock).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

from headway.clock import Clock
from headway.domain.models import RolloutSummary
from headway.engine.state import RolloutState
from headway.errors import NotFound
from headway.server.ui.reads import RolloutStamp, rollout_stamps
from headway.store import CorruptRecord, Tx

log = logging.getLogger("headway.ui")

REFRESH = 1.0  # seconds: a rollout whose state keeps changing is parsed again at most this often
KEEP = 16  # parsed states kept besides the active rollouts' (pages of finished ones)


def with_starter(tx: Tx, summary: RolloutSummary) -> RolloutSummary:
    """The summary with who started it: the stored summary may have lost it, the audit log
    has it (the rollout's first event)."""
    if summary.created_by:
        return summary
    first = tx.list_events(rollout_id=summary.id, limit=1)
    if first and first[0].kind == "rollout.started" and first[0].actor:
        return summary.model_copy(update={"created_by": first[0].actor})
    return summary


@dataclass(frozen=True, slots=True, eq=False)
class StoredRollout:
    """One rollout as read from the store. Shared between threads: never change it."""

    summary: RolloutSummary
    state: RolloutState | None  # None: the stored state no longer parses
    updated_at: float  # with the rollout's id, what this was read for
    read_at: float  # monotonic seconds

    @property
    def active(self) -> bool:
        return not self.summary.status.terminal


class StoredRollouts:
    def __init__(self, clock: Clock, *, refresh: float = REFRESH, keep: int = KEEP) -> None:
        self._clock = clock
        self._refresh = refresh
        self._keep = keep
        self._entries: OrderedDict[str, StoredRollout] = OrderedDict()  # least recently used first
        self._unreadable: dict[str, float] = {}  # rollout id -> updated_at of a row that does not decode
        self._active = 0  # active rollouts at the last look: their states are always kept
        self._lock = threading.Lock()
        self.reads = 0  # rows read and parsed so far (the tests count them)

    def active(self, tx: Tx) -> list[StoredRollout]:
        """Every active rollout, oldest first (one whose row does not decode is left out)."""
        out = []
        for stamp in rollout_stamps(tx):
            try:
                out.append(self._get(tx, stamp))
            except CorruptRecord:
                continue
        self._active = len(out)
        self._trim()
        return out

    def one(self, tx: Tx, rollout_id: str) -> StoredRollout:
        """Rollout ``rollout_id``, active or not; NotFound when there is none."""
        stamps = rollout_stamps(tx, rollout_id)
        if not stamps:
            raise NotFound(
                f"rollout {rollout_id} does not exist",
                hint="check the id against the list of recent rollouts",
            )
        entry = self._get(tx, stamps[0])
        self._trim()
        return entry

    def _get(self, tx: Tx, stamp: RolloutStamp) -> StoredRollout:
        now = self._clock.monotonic()
        with self._lock:
            entry = self._entries.get(stamp.rollout_id)
            if entry is not None:
                self._entries.move_to_end(stamp.rollout_id)
                if stamp.updated_at == entry.updated_at or (
                    stamp.status == entry.summary.status.value and now - entry.read_at < self._refresh
                ):
                    return entry
            if self._unreadable.get(stamp.rollout_id) == stamp.updated_at:
                raise CorruptRecord(f"the stored rollout {stamp.rollout_id!r} no longer decodes")
        entry = self._read(tx, stamp, now)
        with self._lock:
            self._entries[stamp.rollout_id] = entry
            self._entries.move_to_end(stamp.rollout_id)
            self.reads += 1
        return entry

    def _read(self, tx: Tx, stamp: RolloutStamp, now: float) -> StoredRollout:
        try:
            summary, raw = tx.get_rollout(stamp.rollout_id)
        except CorruptRecord as error:
            with self._lock:
                if self._unreadable.get(stamp.rollout_id) != stamp.updated_at:
                    log.warning("rollout page: %s", error.message)
                self._unreadable[stamp.rollout_id] = stamp.updated_at
            raise
        summary = with_starter(tx, summary)
        try:
            state: RolloutState | None = RolloutState.from_dict(raw)
        except Exception as error:  # unreadable stored state: the pages show the summary only
            log.warning("rollout %s: stored state unreadable (%s); showing its summary", summary.id, error)
            state = None
        # summary.updated_at is the row's updated_at (written together). It may differ from the
        # stamp when the row changed in between: the key is what was read. Only equality
        # counts, never "newer": a new leader's clock may be behind the old one's.
        return StoredRollout(summary, state, summary.updated_at, now)

    def _trim(self) -> None:
        with self._lock:
            while len(self._entries) > self._active + self._keep:
                self._entries.popitem(last=False)
            while len(self._unreadable) > 4 * self._keep:
                del self._unreadable[next(iter(self._unreadable))]
