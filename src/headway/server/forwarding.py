"""Requests a server that does not lead hands to the leader, through the database.

A follower serves the API and its agents like the leader does, but the
rollout runner runs only on the leader. What the follower's callers would
queue for the runner (agent hellos and reports, operator commands) goes into
the store's inbox instead, in order, and the leader's runner takes it from
there into its next batch (`Runner` and `ClusterTx`). Requests are stored
in batches: whatever arrives within ``FLUSH_DELAY`` goes in one transaction
(one NOTIFY), in order, which keeps a wave of agents reconnecting to a
follower from costing a transaction each. A caller that wants an answer
waits for the reply the leader writes in the same transaction as the
request's effect; the leader's NOTIFY names the requests it answered, so a
follower reads replies only when one of its own is among them; a poll every
second covers a lost notification.
A request no leader takes within ``reply_timeout`` is withdrawn (nothing was
done, `NoLeader`), unless it was taken meanwhile, when its reply is returned.

    encode_request / decode_request   runner requests <-> (kind, JSON)
    encode_reply / decode_reply       results and HeadwayErrors <-> JSON
    Forwarder                         the follower's side: queue, flush, wait
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from headway import errors
from headway.clock import Clock
from headway.domain.models import RolloutSummary
from headway.engine.events import Command
from headway.errors import HeadwayError, NoLeader, StoreUnavailable
from headway.protocol.messages import Observation
from headway.server import requests as r
from headway.store import Store

log = logging.getLogger("headway.forwarding")

REPLY_TIMEOUT = 30.0
FLUSH_DELAY = 0.02  # seconds reports wait so that several go in one transaction
MAX_BUFFERED = 50_000  # reports kept while the database is away; the oldest go first

FORWARDABLE: dict[str, type[r.Request]] = {
    cls.__name__: cls
    for cls in (
        r.HostHello,
        r.HostReport,
        r.HostGone,
        r.StartRollout,
        r.RolloutCommand,
        r.ServiceRollback,
        r.ReleaseCreated,
        r.RestoreConfig,
    )
}


def forwardable(request: r.Request) -> bool:
    return type(request).__name__ in FORWARDABLE


# what every request carries for the server handling it (reply future, inbox id, origin):
# never sent to another server
_LOCAL_FIELDS = frozenset(f.name for f in dataclasses.fields(r.HostGone) if f.kw_only)


def encode_request(request: r.Request) -> tuple[str, str]:
    values: dict[str, Any] = {}
    for item in dataclasses.fields(request):
        if item.name in _LOCAL_FIELDS:
            continue
        value = getattr(request, item.name)
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        elif isinstance(value, enum.Enum):
            value = value.value
        values[item.name] = value
    return type(request).__name__, json.dumps(values, separators=(",", ":"))


def decode_request(kind: str, payload: str) -> r.Request:
    """The request back; ValueError (with the reason) for one this version cannot read."""
    cls = FORWARDABLE.get(kind)
    if cls is None:
        raise ValueError(f"unknown request kind {kind!r}")
    try:
        values = json.loads(payload)
        if "observed" in values:
            values["observed"] = Observation.model_validate(values["observed"])
        if "command" in values:
            values["command"] = Command(values["command"])
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"malformed {kind}: {error}") from None


def encode_reply(result: object) -> str:
    if isinstance(result, HeadwayError):
        body: dict[str, Any] = {
            "error": type(result).__name__,
            "message": result.message,
            "hint": result.hint,
        }
    elif isinstance(result, BaseException):
        body = {"error": "HeadwayError", "message": f"internal error: {result}", "hint": "see its log"}
    elif isinstance(result, RolloutSummary):
        body = {"summary": result.model_dump(mode="json")}
    elif isinstance(result, list):
        body = {"list": [str(x) for x in result]}
    else:
        body = {"none": None}
    return json.dumps(body, separators=(",", ":"))


def decode_reply(text: str) -> Any:
    """The result, or raises the error the leader answered with."""
    body = json.loads(text)
    if "error" in body:
        cls = getattr(errors, str(body["error"]), HeadwayError)
        if not (isinstance(cls, type) and issubclass(cls, HeadwayError)):
            cls = HeadwayError
        raise cls(str(body.get("message", "")), str(body.get("hint", "")))
    if "summary" in body:
        return RolloutSummary.model_validate(body["summary"])
    if "list" in body:
        return list(body["list"])
    return None


class Forwarder:
    """The follower's side of the inbox."""

    def __init__(
        self, store: Store, sender: str, clock: Clock, *, reply_timeout: float = REPLY_TIMEOUT
    ) -> None:
        self.store = store
        self.sender = sender
        self.clock = clock
        self.reply_timeout = reply_timeout
        # requests not yet stored, in order; a caller's future gets its request's id
        self._buffer: list[tuple[str, str, asyncio.Future[int] | None]] = []
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._flush_handle: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- callers

    def submit(self, request: r.Request) -> None:
        """Hand a request over without waiting (agent reports): stored within FLUSH_DELAY."""
        kind, payload = encode_request(request)
        self._add(kind, payload, None)

    async def call(self, request: r.Request) -> Any:
        """Hand a request over and wait for the leader's answer (or its error)."""
        kind, payload = encode_request(request)
        stored: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._add(kind, payload, stored)
        request_id = await stored  # StoreUnavailable if it could not be stored
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            # No reply can be in yet: the leader's NOTIFY of it is handled on this loop,
            # after this coroutine yields; a lost one is covered by `run`'s poll.
            return await asyncio.wait_for(asyncio.shield(future), self.reply_timeout)
        except TimeoutError:
            return self._give_up(request_id, kind)
        finally:
            self._waiting.pop(request_id, None)

    # ---------------------------------------------------------------- plumbing

    def _add(self, kind: str, payload: str, stored: asyncio.Future[int] | None) -> None:
        self._buffer.append((kind, payload, stored))
        if len(self._buffer) > MAX_BUFFERED:
            dropped = self._buffer[: len(self._buffer) - MAX_BUFFERED]
            del self._buffer[: len(dropped)]
            self._fail(dropped, StoreUnavailable("too many requests wait for the database", hint="retry"))
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        try:
            self._flush()
        except Exception as error:  # nothing was stored
            if not isinstance(error, StoreUnavailable):
                log.exception("storing requests for the leader failed")
            # callers hear it now; reports wait for the database
            calls = [item for item in self._buffer if item[2] is not None]
            self._buffer = [item for item in self._buffer if item[2] is None]
            self._fail(calls, error)
            if self._buffer:
                log.warning("cannot hand agent reports to the leader yet: %s", error)
                self._flush_handle = asyncio.get_running_loop().call_later(1.0, self._flush_soon)

    @staticmethod
    def _fail(items: Iterable[tuple[str, str, asyncio.Future[int] | None]], error: Exception) -> None:
        for _, _, stored in items:
            if stored is not None and not stored.done():
                stored.set_exception(error)

    def _flush(self) -> None:
        """Store the buffered requests in order, in one transaction with one NOTIFY; hand
        each caller its request's id."""
        items = self._buffer
        if not items:
            return
        with self.store.tx() as tx:
            ids = tx.add_inbox(self.sender, [(k, p, f is not None) for k, p, f in items], self.clock.now())
            tx.notify("inbox")
        self._buffer = []
        callers = [f for _, _, f in items if f is not None]
        for stored, request_id in zip(callers, ids, strict=True):
            if not stored.done():  # a caller cancelled meanwhile: the leader still answers
                stored.set_result(request_id)

    def take_replies(self, answered: Iterable[int] | None = None) -> None:
        """Resolve the callers whose replies are in: on the leader's NOTIFY (``answered``:
        the ids it names, so nothing is read unless one of them waits here), and every
        second (None: look for every caller waiting)."""
        if not self._waiting:
            return
        wanted = list(self._waiting) if answered is None else [i for i in answered if i in self._waiting]
        if not wanted:
            return
        try:
            with self.store.tx() as tx:
                replies = tx.take_replies(wanted)
        except StoreUnavailable as error:
            log.warning("cannot read the leader's replies yet: %s", error)
            return
        for request_id, text in replies.items():
            future = self._waiting.get(request_id)
            if future is None or future.done():
                continue
            try:
                future.set_result(decode_reply(text))
            except HeadwayError as error:
                future.set_exception(error)
            except ValueError as error:
                future.set_exception(HeadwayError(f"unreadable reply from the leader: {error}"))

    def _give_up(self, request_id: int, kind: str) -> Any:
        with self.store.tx() as tx:
            withdrawn = tx.withdraw_inbox(request_id)
            replies = {} if withdrawn else tx.take_replies([request_id])
        if request_id in replies:
            return decode_reply(replies[request_id])
        raise NoLeader(
            f"no leader handled the {kind} request within {self.reply_timeout:g}s; it was "
            "withdrawn and nothing was done",
            hint="check that a server leads (GET /api/v1/cluster) and that the database is "
            "reachable, then retry",
        )

    async def run(self) -> None:
        """Poll for replies every second: a NOTIFY can be lost while the database reconnects."""
        while True:
            await asyncio.sleep(1.0)
            self.take_replies()
