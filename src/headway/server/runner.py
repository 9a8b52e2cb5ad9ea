"""The driver: the one impure loop around the engine.

Every change that involves hosts or rollouts goes through one queue and is
handled in batches: load, step the engine, then persist the new state, the
audit events, the hosts' desired state and the outbox of actions in one
transaction; only after the commit are agents told (the outbox is then
marked done). A crash between commit and execution repeats the pushes on
restart, which is harmless: desired state is level-triggered and each
`SetDesired` carries a generation. If the database fails, the in-memory
rollout states are thrown away and reloaded: nothing advances on state that
was not stored (reliability 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from headway.clock import Clock
from headway.domain.models import HostView, Release, RolloutStatus, RolloutSummary
from headway.domain.spec import BalancerKind, ServiceSpec
from headway.engine import machine
from headway.engine.actions import (
    Action,
    Admit,
    Analyze,
    Drain,
    RecordEvent,
    SetDesired,
    SetLivePool,
    SetServiceRelease,
)
from headway.engine.events import (
    AnalysisDone,
    Command,
    EngineEvent,
    HostObserved,
    LoadReport,
    OperatorCommand,
    Tick,
    TrafficDone,
    Verdict,
)
from headway.engine.state import RolloutState, StateEncoder
from headway.errors import Conflict, Fenced, HeadwayError, NotFound, StoreUnavailable
from headway.protocol.messages import ConfigBundle, Desired, DesiredRelease, Observation
from headway.server import configs, forwarding
from headway.server.forwarding import Forwarder
from headway.server.hub import AgentHub, AgentSession
from headway.server.leadership import Leadership
from headway.server.readiness import StoreServeFlags
from headway.server.requests import (
    HostGone,
    HostHello,
    HostReport,
    ReleaseCreated,
    Request,
    RestoreConfig,
    RolloutCommand,
    ServiceLoad,
    ServiceRollback,
    StartRollout,
    TrafficResult,
    VerificationResult,
    Wake,
)
from headway.server.traffic_driver import TrafficDriver, TrafficOutcome
from headway.server.verification import VerificationOutcome, Verifier
from headway.store import HostObservation, NewEvent, OutboxItem, Store, Tx

log = logging.getLogger("headway.runner")

BATCH_LIMIT = 5000
BATCH_MIN = 50
# A batch runs on the event loop; the size is chosen from the measured cost per request so
# that one holds the loop about this long at most: the API, agents' sessions and the lease
# renewal go on between batches (5,000 hellos at once held a PostgreSQL leader 8-15 s, past
# its lease).
BATCH_SECONDS = 1.0
INBOX_STRIKES = 3  # batches an inbox request may break before it is dropped with an error reply


def live_pool_key(service: str) -> str:
    return f"live_pool:{service}"


def _chunks(names: list[str], size: int) -> Iterator[str]:
    """Comma-joined runs of ``names``, each under ``size`` characters (NOTIFY's limit is 8000)."""
    chunk: list[str] = []
    length = 0
    for name in names:
        if chunk and length + len(name) + 1 > size:
            yield ",".join(chunk)
            chunk, length = [], 0
        chunk.append(name)
        length += len(name) + 1
    if chunk:
        yield ",".join(chunk)


# -------------------------------------------------------------------- runner


class Runner:
    def __init__(
        self,
        store: Store,
        hub: AgentHub,
        clock: Clock,
        *,
        reconnect_grace: float,
        traffic: TrafficDriver | None = None,
        verifier: Verifier | None = None,
        leadership: Leadership | None = None,
        forwarder: Forwarder | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.clock = clock
        self.traffic = traffic
        if traffic is not None and traffic.serve_flags is None:  # readiness balancers' flags
            traffic.serve_flags = StoreServeFlags(store, self._desired_message, self._push)
        # Several servers on one database: only the leader runs; the others forward.
        self.leadership = leadership
        self.forwarder = forwarder
        self.fence: int | None = None  # the token every transaction of this runner checks
        self.leading = False  # True while this runner handles requests (ready is set)
        self._election = asyncio.Event()
        self._inbox_signal = asyncio.Event()
        self._inbox_taken: set[int] = set()  # inbox requests queued, not yet committed
        self._inbox_strikes: dict[int, int] = {}  # inbox requests whose batches hit a bug
        self._cost = 0.0  # measured seconds per request in a batch (batch_limit)
        self._session_origin: dict[str, str] = {}  # host -> the server its last hello came from
        self._remote_pushes: set[str] = set()  # hosts whose sessions live on other servers
        # a follower: the session each host was last pushed to, and what (push_local)
        self._pushed: dict[str, tuple[AgentSession, Desired]] = {}
        self._late: set[asyncio.Future[None]] = set()  # requests re-sent to the new leader
        if leadership is not None:
            leadership.subscribe(self._election_changed)
        self.verifier = verifier
        self.reconnect_grace = reconnect_grace
        self.queue: asyncio.Queue[Request] = asyncio.Queue()
        self.states: dict[str, RolloutState] = {}  # active rollouts by id
        self._creators: dict[str, str] = {}  # who started each active rollout
        self.by_service: dict[str, str] = {}
        self.host_service: dict[str, str] = {}
        self.connected_since_start: set[str] = set()
        self._release_cache: dict[tuple[str, int], Release] = {}
        # persistence: per active rollout, its encoder and the state text last committed
        self._encoders: dict[str, StateEncoder] = {}
        self._saved: dict[str, str] = {}
        self._saving: dict[str, str] = {}  # written by the batch in progress
        self._observations: dict[str, HostObservation] = {}  # reports not yet written
        self._service_cache: dict[str, ServiceSpec] = {}
        self._started_at = 0.0
        self._grace_done = False
        self.ready = asyncio.Event()

    # ---------------------------------------------------------------- public

    async def call(self, request: Request) -> Any:
        """Queue a request and wait for its result (or its error); on a server that does
        not lead, the leader handles it (`headway.server.forwarding`)."""
        if self.forwarder is not None and not self.leading and forwarding.forwardable(request):
            return await self.forwarder.call(request)
        request.reply = asyncio.get_running_loop().create_future()
        await self.queue.put(request)
        return await request.reply

    def submit(self, request: Request) -> None:
        if self.forwarder is not None and not self.leading:
            if forwarding.forwardable(request):
                self.forwarder.submit(request)
            else:  # a balancer or gate result of a term that ended: the leader redoes it
                log.info("dropped %s: this server no longer leads", type(request).__name__)
            return
        self.queue.put_nowait(request)

    async def accepting(self) -> None:
        """Wait until requests can be taken: at once with a forwarder, else when ready."""
        if self.forwarder is None:
            await self.ready.wait()

    def forget_service_spec(self, name: str) -> None:
        self._service_cache.pop(name, None)

    def forget_all(self) -> None:
        self._service_cache.clear()

    def service_changed(self, name: str) -> None:
        """A service's spec was stored here: forget it here and on the other servers."""
        self.forget_service_spec(name)
        if self.store.shared:
            try:
                with self.store.tx() as tx:
                    tx.notify("service", name)
            except StoreUnavailable as error:
                log.warning("could not tell the other servers that %s changed: %s", name, error)

    # -- leadership -----------------------------------------------------------------------

    def _election_changed(self) -> None:
        self._election.set()
        self.queue.put_nowait(Wake())  # a loop waiting for requests looks again

    def _elected(self) -> bool:
        """This runner's term still stands (always, without an election)."""
        return self.leadership is None or (
            self.leadership.leading and self.leadership.token == self.fence
        )

    async def _wait_for_election(self) -> None:
        while self.leadership is not None and not self.leadership.leading:
            self._election.clear()
            await self._election.wait()
        self.fence = self.leadership.token if self.leadership is not None else None

    def inbox_arrived(self) -> None:
        """Another server added requests to the inbox (NOTIFY)."""
        self._inbox_signal.set()

    async def _pump_inbox(self) -> None:
        """While leading: move other servers' requests from the inbox into the queue.

        Each look reads the ids of the requests not handled yet, then the payloads of
        those not taken yet: requests queued but not yet answered are not read again on
        every notification (a wave of agents arriving through a follower left thousands).
        Ids are not a watermark: a follower's transaction may commit after a later one's.
        """
        purged_at = 0.0
        while True:
            self._inbox_signal.clear()
            try:
                with self.store.tx() as tx:
                    new = [i for i in tx.pending_inbox_ids() if i not in self._inbox_taken]
                    items = tx.inbox_items(new) if new else []
                    if self.clock.monotonic() - purged_at > 60:
                        purged_at = self.clock.monotonic()
                        tx.purge_inbox(self.clock.now() - 600)
            except StoreUnavailable as error:
                log.warning("cannot read the inbox: %s", error)
                items = []
            for item in items:
                self._inbox_taken.add(item.id)
                if self._inbox_strikes.get(item.id, 0) >= INBOX_STRIKES:
                    self._inbox_strikes.pop(item.id, None)
                    problem = f"the leader failed {INBOX_STRIKES} times on this {item.kind}; it was dropped"
                    log.error("inbox request %d from %s: %s", item.id, item.sender, problem)
                    self._refuse_inbox(item.id, item.wants_reply, problem, "see the leader's log")
                    continue
                try:
                    request = forwarding.decode_request(item.kind, item.payload)
                except ValueError as error:
                    log.error("inbox request %d from %s: %s", item.id, item.sender, error)
                    hint = "the servers run different versions; upgrade them all"
                    self._refuse_inbox(item.id, item.wants_reply, str(error), hint)
                    continue
                request.inbox = (item.id, item.wants_reply)
                request.origin = item.sender
                self.queue.put_nowait(request)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._inbox_signal.wait(), 0.5)

    def _refuse_inbox(self, request_id: int, wants_reply: bool, problem: str, hint: str) -> None:
        error = HeadwayError(problem, hint=hint)
        try:
            with self.store.tx(fence=self.fence) as tx:
                tx.answer_inbox([(request_id, forwarding.encode_reply(error) if wants_reply else None)])
                tx.notify("reply", str(request_id))
        except HeadwayError as failure:
            log.error("could not answer inbox request %d: %s", request_id, failure)

    def _stand_down(self, batch: Iterable[Request] = (), *, forward: bool = True) -> None:
        """The term ended: forget the in-memory rollouts; queued requests go to the new leader."""
        was_leading = self.leading
        self.leading = False
        self.ready.clear()
        self.states.clear()
        self.by_service.clear()
        self._encoders.clear()
        self._saved.clear()
        self._inbox_taken.clear()
        pending = list(batch)
        while not self.queue.empty():
            pending.append(self.queue.get_nowait())
        for request in pending:
            if request.inbox is not None or isinstance(request, Wake):
                continue  # still in the inbox: the next leader takes it from there
            if request.reply is not None and not request.reply.done():
                if forward and self.forwarder is not None and forwarding.forwardable(request):
                    task = asyncio.ensure_future(self._forward_late(request))
                    self._late.add(task)
                    task.add_done_callback(self._late.discard)
                else:
                    request.reply.set_exception(
                        StoreUnavailable(
                            "this server stopped leading while the request waited",
                            hint="nothing was done; retry",
                        )
                    )
            elif forward and self.forwarder is not None and forwarding.forwardable(request):
                self.forwarder.submit(request)
        if was_leading:
            log.warning("runner stopped: this server follows now")

    async def _forward_late(self, request: Request) -> None:
        reply = request.reply
        assert reply is not None and self.forwarder is not None
        try:
            result = await self.forwarder.call(request)
        except BaseException as error:  # handed to the caller, who waits on it
            if not reply.done():
                reply.set_exception(error)
            return
        if not reply.done():
            reply.set_result(result)

    def state_of(self, rollout_id: str) -> RolloutState | None:
        return self.states.get(rollout_id)

    async def run(self) -> None:
        """Lead whenever elected (always, without an election), until cancelled."""
        while True:
            await self._wait_for_election()
            pump = asyncio.create_task(self._pump_inbox()) if self.forwarder is not None else None
            stopping = False
            try:
                await self._lead()
            except Fenced as error:
                log.error("%s", error)
                if self.leadership is not None:
                    self.leadership.step_down(error.message)
            except asyncio.CancelledError:
                stopping = True  # the server stops: nobody is left to hand requests to
                raise
            finally:
                if pump is not None:
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pump
                self._stand_down(forward=not stopping)

    async def _lead(self) -> None:
        """One term: load the stored rollouts, then handle batches while still elected."""
        self._started_at = self.clock.now()
        self._grace_done = False
        self.connected_since_start = set()
        while self._elected():
            try:
                self._recover()
                break
            except StoreUnavailable as error:
                log.error("cannot load rollouts: %s; retrying in 2s", error)
                await asyncio.sleep(2)
        if not self._elected():
            return
        self.leading = True
        self.ready.set()
        while self._elected():
            batch = await self._next_batch()
            started = self.clock.monotonic()
            try:
                self._handle(batch)
                self._measure(len(batch), self.clock.monotonic() - started)
            except Fenced as error:
                self._stand_down(batch)
                raise error
            except StoreUnavailable as error:
                log.error("database unavailable, nothing advanced: %s", error)
                self._fail_requests(batch, error)
                await self._reload_after_failure()
            except Exception as error:  # a bug: never lose the loop, never half-apply
                log.exception("runner batch failed; reloading stored state")
                # Another server's request stays in the inbox and comes back; one that keeps
                # failing (with whatever shared its batches) is dropped after INBOX_STRIKES.
                for request in batch:
                    if request.inbox is not None:
                        key = request.inbox[0]
                        self._inbox_strikes[key] = self._inbox_strikes.get(key, 0) + 1
                self._fail_requests(
                    batch, HeadwayError(f"internal error: {error}", hint="see the server log")
                )
                await self._reload_after_failure()

    # -------------------------------------------------------------- plumbing

    async def _next_batch(self) -> list[Request]:
        timeout = self._seconds_to_next_deadline()
        batch: list[Request] = []
        try:
            if timeout is None:
                batch.append(await self.queue.get())
            elif timeout > 0:
                batch.append(await asyncio.wait_for(self.queue.get(), timeout))
        except TimeoutError:
            pass
        limit = self.batch_limit()
        while len(batch) < limit and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch

    def batch_limit(self) -> int:
        """How many requests the next batch takes: about `BATCH_SECONDS` of work.

        >>> r = Runner.__new__(Runner); r._cost = 0.0025  # 2.5 ms a request (PostgreSQL hellos)
        >>> r.batch_limit()
        400
        """
        if self._cost <= 0:
            return BATCH_LIMIT
        return max(BATCH_MIN, min(BATCH_LIMIT, int(BATCH_SECONDS / self._cost)))

    def _measure(self, requests: int, seconds: float) -> None:
        if requests >= 10:  # small batches say more about fixed costs than about requests
            self._cost = 0.7 * self._cost + 0.3 * (seconds / requests)

    def _seconds_to_next_deadline(self) -> float | None:
        deadlines = [d for s in self.states.values() if (d := machine.next_deadline(s)) is not None]
        if not self._grace_done and self.states:
            deadlines.append(self._started_at + self.reconnect_grace)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - self.clock.now())

    def _fail_requests(self, batch: Iterable[Request], error: Exception) -> None:
        self._inbox_taken.clear()  # not answered: read again from the inbox
        for request in batch:
            if request.reply is not None and not request.reply.done():
                request.reply.set_exception(error)

    async def _reload_after_failure(self) -> None:
        while self._elected():
            await asyncio.sleep(1)
            try:
                self._recover()
                return
            except StoreUnavailable as error:
                log.error("database still unavailable: %s", error)

    def _recover(self) -> None:
        """Load active rollouts from the store and re-run the pending outbox."""
        self.states.clear()
        self.by_service.clear()
        self._encoders.clear()
        self._saved.clear()
        self._release_cache.clear()
        self._service_cache.clear()
        with self.store.tx(fence=self.fence) as tx:
            for summary, raw in tx.active_rollouts():
                try:
                    state = RolloutState.from_dict(raw)
                except Exception as error:  # a bad record must not stop the server
                    log.error("rollout %s has unreadable state (%s); marking it failed", summary.id, error)
                    tx.save_rollout(
                        summary.model_copy(
                            update={
                                "status": RolloutStatus.FAILED,
                                "reason": f"stored state unreadable: {error}",
                                "updated_at": self.clock.now(),
                            }
                        ),
                        raw,
                    )
                    continue
                self.states[state.rollout_id] = state
                self._creators[state.rollout_id] = summary.created_by
                self.by_service[state.service] = state.rollout_id
            for host in tx.list_hosts():
                self.host_service[host.name] = host.service
            pending = tx.pending_outbox()
        self._execute(pending)

    # -------------------------------------------------------------- handling

    def _handle(self, batch: list[Request]) -> None:
        now = self.clock.now()
        changed: dict[str, list[Action]] = {}
        results: list[tuple[Request, Any]] = []
        outbox: list[OutboxItem] = []
        pushes: list[str] = []  # hosts whose desired state changed outside the engine
        self._observations = {}
        self._saving = {}
        with self.store.tx(fence=self.fence) as tx:
            for request in batch:
                self._flush_observations_for(tx, request, now)
                try:
                    result = self._apply(tx, request, now, changed, pushes)
                    results.append((request, result))
                except HeadwayError as error:
                    results.append((request, error))
            if not self._grace_done and now >= self._started_at + self.reconnect_grace:
                self._grace_done = True
                self._mark_absent_hosts(tx, now, changed)
            for rollout_id, state in list(self.states.items()):
                deadline = machine.next_deadline(state)
                if deadline is not None and deadline <= now:
                    decision = machine.step(state, Tick(), now)
                    changed.setdefault(rollout_id, []).extend(decision.actions)
            self._flush_observations(tx, now)
            for rollout_id, actions in changed.items():
                outbox.extend(self._persist(tx, rollout_id, actions, now))
            if outbox:
                tx.add_outbox(outbox)
            desired_now = {h: self._desired_message(tx, h) for h in pushes}
            answered = self._answer_inbox(tx, results)
        # committed: remember what the store holds, act, then answer
        self._inbox_taken.difference_update(answered)
        for rollout_id, text in self._saving.items():
            if rollout_id in self.states:
                self._saved[rollout_id] = text
        for rollout_id in [r for r in self._encoders if r not in self.states]:
            del self._encoders[rollout_id]
            self._saved.pop(rollout_id, None)
        for host, message in desired_now.items():
            if message is not None:
                self._push(host, message)
        self._execute(outbox)
        self._notify_remote_pushes()
        for request, result in results:
            if request.reply is None or request.reply.done():
                continue
            if isinstance(result, BaseException):
                request.reply.set_exception(result)
            else:
                request.reply.set_result(result)

    def _answer_inbox(self, tx: Tx, results: list[tuple[Request, Any]]) -> list[int]:
        """Write the replies of other servers' requests in the batch's transaction."""
        answers = [
            (request.inbox[0], forwarding.encode_reply(result) if request.inbox[1] else None)
            for request, result in results
            if request.inbox is not None
        ]
        if answers:
            tx.answer_inbox(answers)
            # every id named (the followers read replies only when one of theirs is)
            for chunk in _chunks([str(i) for i, reply in answers if reply is not None], 7000):
                tx.notify("reply", chunk)
        return [i for i, _ in answers]

    def _push(self, host: str, message: Desired) -> None:
        """Hand a host its desired state: here if its agent is connected here, else tell the
        other servers (after this batch, `_notify_remote_pushes`)."""
        if host in self.hub.sessions or not self.store.shared:
            self.hub.push(host, message)
        else:
            self._remote_pushes.add(host)

    def _notify_remote_pushes(self) -> None:
        if not self._remote_pushes:
            return
        hosts, self._remote_pushes = sorted(self._remote_pushes), set()
        try:
            with self.store.tx() as tx:
                for chunk in _chunks(hosts, 7000):
                    tx.notify("desired", chunk)
        except StoreUnavailable as error:  # the followers' resync finds them (push_stale)
            log.warning("could not tell the other servers about %d host(s): %s", len(hosts), error)

    def push_local(self, hosts: Iterable[str] | None = None) -> None:
        """Push the stored desired state to agents connected here (all, or ``hosts``):
        the leader changed them (NOTIFY) or a notification may have been lost.

        The hosts are read in one statement. Hosts that share a service, a desired release
        and a serve flag get the same message but for its generation, so it is built once
        (`_desired_message`) and copied with each one's generation.
        """
        if self.leading and hosts is not None:
            return  # the leader pushed its own sessions already
        names = [h for h in (self.hub.sessions if hosts is None else hosts) if h in self.hub.sessions]
        if not names:
            return
        messages: dict[str, Desired | None] = {}
        try:
            with self.store.tx() as tx:
                targets = tx.host_targets(names)
                built: dict[tuple[str, int | None, bool], Desired] = {}
                for name in names:
                    target = targets.get(name)
                    if target is None:
                        continue  # not registered
                    key = (target.service, target.desired_release, target.serve)
                    model = built.get(key)
                    if model is None:
                        message = messages[name] = self._desired_message(tx, name)
                        number = message.release.number if message and message.release else None
                        if (
                            message is not None
                            and message.generation == target.generation
                            and number == target.desired_release
                            and message.serve == target.serve
                        ):  # else it changed between the two reads: built per host
                            built[key] = message
                    elif model.generation == target.generation:
                        messages[name] = model
                    else:
                        messages[name] = model.model_copy(update={"generation": target.generation})
        except StoreUnavailable as error:
            log.warning("cannot read desired states to push: %s", error)
            return
        for host, pushed in messages.items():
            session = self.hub.sessions.get(host)
            if pushed is None or session is None:
                continue
            last = self._pushed.get(host)
            if last is not None and last[0] is session and last[1] == pushed:
                continue  # handed this very message already (the sweep came before the NOTIFY)
            self.hub.push(host, pushed)
            self._pushed[host] = (session, pushed)

    def push_stale(self) -> None:
        """A follower's safety net: push to local agents whose stored generation is ahead
        of what they last reported (a notification was lost), unless this very session
        was handed that generation already (the agent is still applying it: a host in
        the middle of its restart is not told again)."""
        sessions = self.hub.sessions
        self._pushed = {h: pushed for h, pushed in self._pushed.items() if h in sessions}
        if self.leading or not sessions:
            return
        try:
            with self.store.tx() as tx:
                behind = tx.hosts_behind()
        except StoreUnavailable:
            return
        stale = []
        for host, generation in behind:
            session = sessions.get(host)
            if session is None:
                continue
            pushed = self._pushed.get(host)
            if pushed is None or pushed[0] is not session or pushed[1].generation < generation:
                stale.append(host)
        if stale:
            self.push_local(stale)

    def _apply(
        self,
        tx: Tx,
        request: Request,
        now: float,
        changed: dict[str, list[Action]],
        pushes: list[str],
    ) -> Any:
        if isinstance(request, HostReport):
            self.connected_since_start.add(request.host)  # present: not absent after the grace
            return self._observe(tx, request.host, request.observed, True, now, changed)
        if isinstance(request, Wake):
            return None
        if isinstance(request, HostHello):
            return self._hello(tx, request, now, changed, pushes)
        if isinstance(request, HostGone):
            if self._session_origin.get(request.host, request.origin) != request.origin:
                return None  # the agent said hello through another server since: still there
            view = tx.get_host(request.host)
            tx.set_disconnected(request.host, now)
            observation = Observation(
                release=view.observed_release,
                generation=view.observed_generation,
                health=view.health,
            )
            return self._feed_engine(request.host, observation, False, now, changed)
        if isinstance(request, StartRollout):
            return self._start(tx, request, now, changed)
        if isinstance(request, RolloutCommand):
            return self._command(request, now, changed)
        if isinstance(request, ServiceRollback):
            return self._service_rollback(tx, request, now, changed)
        if isinstance(request, ReleaseCreated):
            return self._release_created(tx, request, now, pushes)
        if isinstance(request, RestoreConfig):
            bumped = configs.restore_drifted(
                tx, request.service, self.by_service.get(request.service), now, request.actor
            )
            pushes.extend(bumped)
            return bumped
        if isinstance(request, TrafficResult):
            return self._traffic_result(tx, request.outcome, now, changed)
        if isinstance(request, VerificationResult):
            return self._verification_result(tx, request.outcome, now, changed)
        if isinstance(request, ServiceLoad):
            rollout_id = self.by_service.get(request.service)
            if rollout_id is not None:
                decision = machine.step(self.states[rollout_id], LoadReport(request.rps), now)
                changed.setdefault(rollout_id, []).extend(decision.actions)
            return None
        raise AssertionError(f"unknown request {request!r}")

    def _observe(
        self,
        tx: Tx,
        host: str,
        observed: Observation,
        connected: bool,
        now: float,
        changed: dict[str, list[Action]],
    ) -> None:
        self._buffer_observation(host, observed)
        self._feed_engine(host, observed, connected, now, changed)

    def _buffer_observation(self, host: str, observed: Observation) -> None:
        """Written with the batch's other reports in one statement (`_flush_observations`)."""
        self._observations[host] = HostObservation(
            host,
            observed.release,
            observed.generation,
            observed.health.value,
            observed.detail,
            observed.config_applied,
            observed.config_on_disk,
        )

    def _flush_observations_for(self, tx: Tx, request: Request, now: float) -> None:
        """Write the buffered reports before ``request`` could read or overwrite them.

        Reports of one host only meet a hello or a disconnect of that host; any
        other request may read hosts (a rollout start lists them), so it sees them all.
        """
        if not self._observations or isinstance(request, HostReport):
            return
        if isinstance(request, HostHello | HostGone) and request.host not in self._observations:
            return
        self._flush_observations(tx, now)

    def _flush_observations(self, tx: Tx, now: float) -> None:
        if self._observations:
            tx.record_observations(list(self._observations.values()), now)
            self._observations = {}

    def _feed_engine(
        self,
        host: str,
        observed: Observation,
        connected: bool,
        now: float,
        changed: dict[str, list[Action]],
    ) -> None:
        service = self.host_service.get(host)
        rollout_id = self.by_service.get(service) if service else None
        if rollout_id is None:
            return
        state = self.states[rollout_id]
        event = HostObserved(
            host=host,
            release=observed.release,
            generation=observed.generation,
            health=observed.health,
            connected=connected,
            detail=observed.detail,
        )
        decision = machine.step(state, event, now)
        # saved even without actions: the observation itself changed the state
        changed.setdefault(rollout_id, []).extend(decision.actions)

    def _hello(
        self,
        tx: Tx,
        request: HostHello,
        now: float,
        changed: dict[str, list[Action]],
        pushes: list[str],
    ) -> None:
        view = tx.upsert_host(request.host, request.service, request.address, request.labels, now)
        self.host_service[request.host] = request.service
        self._session_origin[request.host] = request.origin
        self.connected_since_start.add(request.host)
        self._buffer_observation(request.host, request.observed)
        rollout_id = self.by_service.get(request.service)
        if rollout_id is None and view.desired_release is None:
            current = self._current_release(tx, request.service)
            if current is not None:
                tx.set_host_desired(request.host, current, view.generation + 1)
                tx.append_events(
                    [
                        NewEvent(
                            ts=now,
                            kind="host.assigned",
                            message=f"{request.host} joined; it runs the current release v{current}",
                            service=request.service,
                            host=request.host,
                        )
                    ]
                )
        self._feed_engine(request.host, request.observed, True, now, changed)
        # pushed after the commit, in order with every other push of this batch, so a
        # drain or readmit decided in the same batch is never overwritten by an older reply
        pushes.append(request.host)
        return None

    def _current_release(self, tx: Tx, service: str) -> int | None:
        try:
            return tx.service_current_release(service)
        except NotFound:
            return None

    def _mark_absent_hosts(self, tx: Tx, now: float, changed: dict[str, list[Action]]) -> None:
        """After a restart, hosts whose agents did not come back count as disconnected."""
        for state in self.states.values():
            for name, track in state.hosts.items():
                if name not in self.connected_since_start and track.connected:
                    observation = Observation(
                        release=track.observed_release,
                        generation=track.observed_generation,
                        health=track.health,
                    )
                    decision = machine.step(
                        state,
                        HostObserved(
                            name,
                            observation.release,
                            observation.generation,
                            observation.health,
                            connected=False,
                        ),
                        now,
                    )
                    changed.setdefault(state.rollout_id, []).extend(decision.actions)

    def _start(
        self, tx: Tx, request: StartRollout, now: float, changed: dict[str, list[Action]]
    ) -> RolloutSummary:
        spec = tx.get_service(request.service)
        if request.service in self.by_service:
            raise Conflict(
                f"service {request.service} already has an active rollout "
                f"({self.by_service[request.service]})",
                hint="wait for it to end, or `headway rollout abort ID` first",
            )
        releases = tx.list_releases(request.service)
        if not releases:
            raise NotFound(
                f"service {request.service} has no releases",
                hint=f"create one with `headway release create {request.service} --artifact FILE`",
            )
        target = request.to_release or releases[-1].number
        tx.get_release(request.service, target)  # NotFound with the versions that exist
        current = self._current_release(tx, request.service)
        hosts = tx.list_hosts(request.service)
        if current == target and all(h.desired_release == target for h in hosts):
            raise Conflict(
                f"every host of {request.service} already runs v{target}",
                hint="create a new release first (`headway release create`)",
            )
        return self._begin(
            tx, spec, hosts, current, target, request.actor, now, changed, hotfix=request.hotfix
        )

    def _begin(
        self,
        tx: Tx,
        spec: ServiceSpec,
        hosts: list[HostView],
        current: int | None,
        target: int,
        actor: str,
        now: float,
        changed: dict[str, list[Action]],
        *,
        hotfix: bool = False,
    ) -> RolloutSummary:
        rollout_id = f"{spec.name}-v{target}-{uuid.uuid4().hex[:6]}"
        # A release that keeps the current artifact and params and only changes config,
        # for a service that applies config by reload, restarts nothing: each agent writes
        # the files, validates them and reloads the app in place, which keeps serving. So
        # the rollout runs without traffic steps (no drain before, no readmit after); the
        # batches, health checks and gates are the same. Rolling back to the previous
        # release is the same kind of change, so it too goes without drains.
        reload_only = current is not None and configs.config_only_reload(
            spec, tx.get_release(spec.name, current), tx.get_release(spec.name, target)
        )
        # A hotfix is the service's strategy with bigger batches and a short bake
        # (configs.hotfix_strategy): a plan for the engine like any other, not a new branch.
        strategy = configs.hotfix_strategy(spec.strategy) if hotfix else spec.strategy
        decision = machine.new_rollout(
            rollout_id=rollout_id,
            service=spec.name,
            from_release=current,
            to_release=target,
            strategy=strategy,
            hosts=hosts,
            now=now,
            actor=actor,
            traffic=spec.traffic.balancer is not BalancerKind.NONE and not reload_only,
            live_pool=tx.get_meta(live_pool_key(spec.name)),
            max_rps_per_host=spec.traffic.max_rps_per_host,
            verification=spec.verification,
        )
        summary = self._summary(decision.state, now, actor)
        text = self._encoders.setdefault(rollout_id, StateEncoder()).encode(decision.state)
        tx.create_rollout(summary, text)
        self._saving[rollout_id] = text
        if hotfix or reload_only:
            how = ["hotfix: 25% batches, 1s healthy" if hotfix else ""]
            how.append("reload: no drain" if reload_only else "")
            tx.append_events(
                [
                    NewEvent(
                        ts=now,
                        kind="rollout.config_plan",
                        message=f"rollout {rollout_id}: " + "; ".join(h for h in how if h),
                        service=spec.name,
                        rollout_id=rollout_id,
                        actor=actor,
                    )
                ]
            )
        self.states[rollout_id] = decision.state
        self.by_service[spec.name] = rollout_id
        changed.setdefault(rollout_id, []).extend(decision.actions)
        return summary

    def _command(
        self, request: RolloutCommand, now: float, changed: dict[str, list[Action]]
    ) -> RolloutSummary:
        state = self.states.get(request.rollout_id)
        if state is None:
            raise Conflict(
                f"rollout {request.rollout_id} is not active",
                hint="see `headway rollout status` for the rollouts of a service",
            )
        event: EngineEvent = OperatorCommand(request.command, request.actor, request.reason)
        decision = machine.step(state, event, now)
        changed.setdefault(state.rollout_id, []).extend(decision.actions)
        return self._summary(state, now, "")

    def _service_rollback(
        self, tx: Tx, request: ServiceRollback, now: float, changed: dict[str, list[Action]]
    ) -> RolloutSummary:
        rollout_id = self.by_service.get(request.service)
        if rollout_id is not None:
            return self._command(
                RolloutCommand(rollout_id, Command.ROLLBACK, request.actor, request.reason),
                now,
                changed,
            )
        spec = tx.get_service(request.service)
        current = self._current_release(tx, request.service)
        previous = next(
            (
                r.from_release
                for r in tx.list_rollouts(request.service, limit=100)
                if r.status is RolloutStatus.SUCCEEDED
                and r.to_release == current
                and r.from_release is not None
            ),
            None,
        )
        if current is None or previous is None:
            raise Conflict(
                f"service {request.service} has no earlier release to roll back to",
                hint="a rollback needs a rollout that succeeded from an earlier release",
            )
        hosts = tx.list_hosts(request.service)
        return self._begin(tx, spec, hosts, current, previous, request.actor, now, changed)

    def _release_created(self, tx: Tx, request: ReleaseCreated, now: float, pushes: list[str]) -> None:
        """The first release of a service becomes current; idle hosts get it at once."""
        if self._current_release(tx, request.service) is not None:
            return
        tx.set_service_current_release(request.service, request.number)
        assigned = []
        for host in tx.list_hosts(request.service):
            if host.desired_release is None:
                tx.set_host_desired(host.name, request.number, host.generation + 1)
                pushes.append(host.name)
                assigned.append(host.name)
        tx.append_events(
            [
                NewEvent(
                    ts=now,
                    kind="service.initial_release",
                    message=f"v{request.number} is the first release of {request.service}; "
                    f"{len(assigned)} idle host(s) install it",
                    service=request.service,
                )
            ]
        )

    # ----------------------------------------------------------- persistence

    def _persist(self, tx: Tx, rollout_id: str, actions: list[Action], now: float) -> list[OutboxItem]:
        state = self.states[rollout_id]
        events: list[NewEvent] = []
        outbox: list[OutboxItem] = []
        desired: list[tuple[str, int | None, int]] = []
        for action in actions:
            if isinstance(action, RecordEvent):
                events.append(
                    NewEvent(
                        ts=now,
                        kind=action.kind,
                        message=action.message,
                        service=state.service,
                        rollout_id=rollout_id,
                        host=action.host,
                        actor=action.actor,
                    )
                )
            elif isinstance(action, SetDesired):
                desired.append((action.host, action.release, action.generation))
                outbox.append(
                    OutboxItem(
                        action_id=action.action_id,
                        rollout_id=rollout_id,
                        payload={
                            "type": "set_desired",
                            "host": action.host,
                            "release": action.release,
                            "generation": action.generation,
                        },
                    )
                )
            elif isinstance(action, SetServiceRelease):
                tx.set_service_current_release(action.service, action.release)
            elif isinstance(action, SetLivePool):
                tx.set_meta(live_pool_key(action.service), action.pool)
            elif isinstance(action, Analyze):
                outbox.append(
                    OutboxItem(
                        action_id=action.action_id,
                        rollout_id=rollout_id,
                        payload={
                            "type": "analyze",
                            "service": state.service,
                            "canary": list(action.canary),
                            "baseline": list(action.baseline),
                            "comparative": action.comparative,
                        },
                    )
                )
            elif isinstance(action, Drain | Admit):
                outbox.append(
                    OutboxItem(
                        action_id=action.action_id,
                        rollout_id=rollout_id,
                        payload={
                            "type": "traffic",
                            "kind": "drain" if isinstance(action, Drain) else "admit",
                            "host": action.host,
                            "weight": action.weight if isinstance(action, Admit) else None,
                            "service": state.service,
                        },
                    )
                )
        tx.set_hosts_desired(desired)
        if events:
            tx.append_events(events)
        # Saved whenever it changed, in this transaction, before any action runs. Only
        # the hosts that changed since the last save are encoded again (StateEncoder);
        # a state identical to the stored one (a heartbeat changed nothing) is not rewritten.
        text = self._encoders.setdefault(rollout_id, StateEncoder()).encode(state)
        if text != self._saving.get(rollout_id, self._saved.get(rollout_id)):
            tx.save_rollout(self._summary(state, now, ""), text)
            self._saving[rollout_id] = text
        if state.phase.terminal:
            del self.states[rollout_id]
            if self.by_service.get(state.service) == rollout_id:
                del self.by_service[state.service]
        return outbox

    def _summary(self, state: RolloutState, now: float, actor: str) -> RolloutSummary:
        """The rollout's row; ``actor`` (who started it) is remembered across saves."""
        if actor:
            self._creators[state.rollout_id] = actor
        actor = self._creators.get(state.rollout_id, "")
        if state.phase.terminal:
            self._creators.pop(state.rollout_id, None)
        counts = machine.progress(state)
        return RolloutSummary(
            id=state.rollout_id,
            service=state.service,
            from_release=state.from_release,
            to_release=state.to_release,
            strategy=state.strategy,
            status=state.phase,
            reason=state.reason or state.blocked,
            step=counts["step"],
            steps=counts["steps"],
            hosts_total=counts["hosts_total"],
            hosts_done=counts["hosts_done"],
            hosts_failed=counts["hosts_failed"],
            created_at=state.created_at,
            updated_at=now,
            created_by=actor,
        )

    # ------------------------------------------------------------- execution

    def _execute(self, items: list[OutboxItem]) -> None:
        """Carry out committed actions: tell connected agents their new desired state."""
        if not items:
            return
        done: list[str] = []
        with self.store.tx(fence=self.fence) as tx:
            for item in items:
                kind = item.payload.get("type")
                if kind == "set_desired":
                    host = str(item.payload["host"])
                    message = self._desired_message(tx, host)
                    if message is not None:
                        self._push(host, message)
                    done.append(item.action_id)
                elif kind == "traffic":
                    # marked done when the balancer's answer is stored with its effect
                    self._start_traffic(tx, item)
                elif kind == "analyze":
                    self._start_analysis(tx, item)
                else:
                    done.append(item.action_id)
            tx.mark_done(done)

    def _start_traffic(self, tx: Tx, item: OutboxItem) -> None:
        payload = item.payload
        try:
            spec = tx.get_service(str(payload["service"]))
            host = tx.get_host(str(payload["host"]))
        except NotFound as error:
            self.submit(
                TrafficResult(
                    TrafficOutcome(
                        item.rollout_id,
                        item.action_id,
                        str(payload["host"]),
                        str(payload["kind"]),
                        False,
                        str(error),
                    )
                )
            )
            return
        if self.traffic is None:
            self.submit(
                TrafficResult(
                    TrafficOutcome(
                        item.rollout_id,
                        item.action_id,
                        host.name,
                        str(payload["kind"]),
                        True,
                        "no balancer driver",
                    )
                )
            )
            return
        weight = payload.get("weight")
        self.traffic.start(
            rollout_id=item.rollout_id,
            action_id=item.action_id,
            kind=str(payload["kind"]),
            spec=spec,
            host=host,
            weight=int(weight) if weight is not None else None,
        )

    def _start_analysis(self, tx: Tx, item: OutboxItem) -> None:
        payload = item.payload
        spec = tx.get_service(str(payload["service"]))
        hosts = {h.name: h for h in tx.list_hosts(spec.name)}
        canary = [hosts[n] for n in payload["canary"] if n in hosts]
        baseline = [hosts[n] for n in payload["baseline"] if n in hosts]
        if self.verifier is None:
            self.submit(
                VerificationResult(
                    VerificationOutcome(item.rollout_id, item.action_id, Verdict.PASS, "no verifier", False)
                )
            )
            return
        self.verifier.start(
            rollout_id=item.rollout_id,
            action_id=item.action_id,
            spec=spec,
            canary=canary,
            baseline=baseline,
            comparative=bool(payload.get("comparative", True)),
        )

    def _verification_result(
        self, tx: Tx, outcome: VerificationOutcome, now: float, changed: dict[str, list[Action]]
    ) -> None:
        tx.mark_done([outcome.action_id])
        state = self.states.get(outcome.rollout_id)
        service = state.service if state else ""
        tx.append_events(
            [
                NewEvent(
                    ts=now,
                    kind=f"gate.{gate['verdict']}",
                    message=f"{gate['gate']}: {gate['explanation']}",
                    service=service,
                    rollout_id=outcome.rollout_id,
                )
                for gate in outcome.gates
            ]
        )
        for gate in outcome.gates:
            key = f"gate:{outcome.rollout_id}:{outcome.action_id}:{gate['gate']}"
            tx.set_meta(key, json.dumps(gate, default=str)[:65536])
        if state is None:
            return
        event = AnalysisDone(outcome.action_id, outcome.verdict, outcome.summary, outcome.errored)
        decision = machine.step(state, event, now)
        changed.setdefault(outcome.rollout_id, []).extend(decision.actions)

    def _traffic_result(
        self, tx: Tx, outcome: TrafficOutcome, now: float, changed: dict[str, list[Action]]
    ) -> None:
        tx.mark_done([outcome.action_id])
        state = self.states.get(outcome.rollout_id)
        if state is None:
            if not outcome.ok:
                log.warning(
                    "%s of %s after its rollout ended failed: %s", outcome.kind, outcome.host, outcome.detail
                )
            return
        event = TrafficDone(outcome.action_id, outcome.host, outcome.ok, outcome.detail)
        decision = machine.step(state, event, now)
        changed.setdefault(outcome.rollout_id, []).extend(decision.actions)

    def busy_hosts(self, service: str) -> set[str]:
        """Hosts an active rollout of ``service`` is handling (the reconciler leaves them be)."""
        rollout_id = self.by_service.get(service)
        if rollout_id is None:
            return set()
        return set(self.states[rollout_id].hosts)

    def _desired_message(self, tx: Tx, host_name: str) -> Desired | None:
        try:
            host = tx.get_host(host_name)
        except NotFound:
            return None
        spec = self._service_cache.get(host.service)
        if spec is None:
            try:
                spec = tx.get_service(host.service)
            except NotFound:
                return Desired(generation=host.generation, release=None, service=None, serve=host.serve)
            self._service_cache[host.service] = spec
        release_msg = None
        if host.desired_release is not None:
            key = (host.service, host.desired_release)
            release = self._release_cache.get(key)
            if release is None:
                release = tx.get_release(host.service, host.desired_release)
                self._release_cache[key] = release
            bundle = None
            if release.config is not None:
                bundle = ConfigBundle(
                    digest=release.config.digest,
                    size=release.config.size,
                    url=configs.bundle_url(release.config.digest),
                    revision=release.config.revision,
                )
            release_msg = DesiredRelease(
                number=release.number, artifact=release.artifact, params=release.params, config=bundle
            )
        return Desired(generation=host.generation, release=release_msg, service=spec, serve=host.serve)
