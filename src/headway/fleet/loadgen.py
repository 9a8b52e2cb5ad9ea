"""An open-loop HTTP load generator: requests go out on a fixed schedule, answered or not.

A closed loop (send, wait, send again) slows down when the service does and so hides
exactly the stalls a rollout might cause. Here the send times are fixed up front from a
rate (request ``i`` is due at ``i / rate`` seconds), each request runs as its own task,
and a late answer never delays the next send. Latency is measured from the *scheduled*
time, so a generator that fell behind would show it rather than hide it (``lag`` says
whether it did).

    settings = LoadSettings(url="http://127.0.0.1:7480", rate=50, duration=30)
    records = await LoadGenerator(settings).run()          # or, from synchronous code:
    with BackgroundLoad(LoadGenerator(settings)) as load:  # a thread with its own loop
        ...                                                # roll something out
        records = load.stop()                              # no new sends; wait for answers
    print(summarize(records).to_json())
    print(summarize(records, since=t_start, until=t_end))  # a window, by scheduled time

Every record keeps the scheduled, start and end time (seconds since the run's start),
the status or the kind of error, and the ``X-App-Version`` header of the answer.
Requests use one `httpx.AsyncClient` without a connection limit: httpx's pool queues
requests once ``max_connections`` are busy, and a queued request would be a closed loop
again. Idle connections are dropped after ``keepalive_expiry`` (5 s), before HAProxy's
own keep-alive timeout (10 s) could close one under a request being sent.

The schedule is bounded by ``duration`` and ``max_requests``, and the paths are drawn
from a seeded `random.Random`: a share ``slow_share`` of requests go to
``/slow?ms=N`` with N uniform in ``slow_ms``, the rest to ``/``.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any

import httpx

from headway.clock import Clock, SystemClock

VERSION_HEADER = "X-App-Version"


class ErrorKind(StrEnum):
    """Why a request got no HTTP answer (a non-2xx answer is not an error here)."""

    CONNECT = "connect"  # refused or unreachable
    CONNECT_TIMEOUT = "connect_timeout"
    TIMEOUT = "timeout"  # no answer within the request timeout
    DISCONNECTED = "disconnected"  # the peer closed the connection without an answer
    READ = "read"  # reset while reading the answer
    WRITE = "write"  # reset while sending the request
    OTHER = "other"


@dataclass(frozen=True)
class LoadSettings:
    url: str  # base URL, e.g. HAProxy's http://127.0.0.1:7480
    rate: float = 50.0  # requests per second, evenly spaced
    duration: float = 60.0  # seconds of sending at most
    max_requests: int = 1_000_000
    slow_share: float = 0.05  # share of requests to /slow
    slow_ms: tuple[int, int] = (2000, 5000)
    timeout: float = 30.0  # per request, connect to last byte
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration <= 0 or self.max_requests < 0:
            raise ValueError("rate and duration must be more than 0, max_requests 0 or more")
        if not 0 <= self.slow_share <= 1 or not 0 <= self.slow_ms[0] <= self.slow_ms[1]:
            raise ValueError("slow_share must be within 0..1 and slow_ms a (low, high) pair")


@dataclass(frozen=True)
class RequestRecord:
    index: int
    path: str
    scheduled: float  # seconds since the run's start when it was due
    started: float  # when it was handed to the client
    ended: float
    status: int | None  # None: no HTTP answer, see ``error``
    error: ErrorKind | None = None
    version: str | None = None  # the answer's X-App-Version

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def slow(self) -> bool:
        return self.path.startswith("/slow")

    @property
    def latency(self) -> float:
        """Seconds from the scheduled send to the end of the answer."""
        return self.ended - self.scheduled


@dataclass(frozen=True)
class Planned:
    index: int
    at: float  # seconds since the run's start
    path: str


def plan_requests(settings: LoadSettings) -> list[Planned]:
    """The whole schedule: request ``i`` at ``i / rate`` seconds, paths from ``seed``.

    >>> [(p.at, p.path) for p in plan_requests(LoadSettings("http://x", rate=4, duration=1))]
    [(0.0, '/'), (0.25, '/'), (0.5, '/'), (0.75, '/')]
    """
    count = min(settings.max_requests, math.ceil(settings.rate * settings.duration - 1e-9))
    rng = random.Random(settings.seed)
    low, high = settings.slow_ms
    planned = []
    for i in range(count):
        path = "/"
        if rng.random() < settings.slow_share:
            path = f"/slow?ms={rng.randint(low, high)}"
        planned.append(Planned(i, i / settings.rate, path))
    return planned


def _error_kind(error: Exception) -> ErrorKind:
    if isinstance(error, httpx.ConnectTimeout):
        return ErrorKind.CONNECT_TIMEOUT
    if isinstance(error, httpx.ConnectError):
        return ErrorKind.CONNECT
    if isinstance(error, httpx.TimeoutException):
        return ErrorKind.TIMEOUT
    if isinstance(error, httpx.RemoteProtocolError):
        return ErrorKind.DISCONNECTED
    if isinstance(error, httpx.ReadError):
        return ErrorKind.READ
    if isinstance(error, httpx.WriteError):
        return ErrorKind.WRITE
    return ErrorKind.OTHER


class LoadGenerator:
    """Runs one schedule once. `stop` (from any thread) ends the sending early; `run`
    returns once every request sent has its answer or error."""

    def __init__(
        self,
        settings: LoadSettings,
        *,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock or SystemClock()
        self._transport = transport
        self._records: list[RequestRecord] = []
        self._sent = 0
        self._start: float | None = None
        self._stopping = threading.Event()

    @property
    def records(self) -> list[RequestRecord]:
        """The requests answered (or failed) so far, in the order they ended (a copy)."""
        return list(self._records)

    @property
    def sent(self) -> int:
        return self._sent

    @property
    def in_flight(self) -> int:
        return self._sent - len(self._records)

    def elapsed(self) -> float:
        """Seconds since the run started (0 before), on the records' time base."""
        return 0.0 if self._start is None else self._clock.monotonic() - self._start

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> list[RequestRecord]:
        planned = plan_requests(self.settings)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=5.0)
        async with httpx.AsyncClient(
            base_url=self.settings.url,
            limits=limits,
            timeout=self.settings.timeout,
            transport=self._transport,
        ) as client:
            tasks: set[asyncio.Task[None]] = set()
            self._start = self._clock.monotonic()
            for item in planned:
                while not self._stopping.is_set():
                    delay = item.at - self.elapsed()
                    if delay <= 0:
                        break
                    await asyncio.sleep(min(delay, 0.05))
                if self._stopping.is_set():
                    break
                task = asyncio.create_task(self._one(client, item), name=f"load-{item.index}")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self._sent += 1
            if tasks:
                await asyncio.gather(*tasks)
        return self.records

    async def _one(self, client: httpx.AsyncClient, item: Planned) -> None:
        started = self.elapsed()
        status: int | None = None
        error: ErrorKind | None = None
        version: str | None = None
        try:
            response = await client.get(item.path)
            status = response.status_code
            version = response.headers.get(VERSION_HEADER)
        except (httpx.HTTPError, OSError) as caught:
            error = _error_kind(caught)
        self._records.append(
            RequestRecord(item.index, item.path, item.at, started, self.elapsed(), status, error, version)
        )


class BackgroundLoad:
    """A `LoadGenerator` running on its own thread and event loop, for synchronous callers."""

    def __init__(self, generator: LoadGenerator) -> None:
        self.generator = generator
        self._result: list[RequestRecord] = []
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="headway-load", daemon=True)

    def _main(self) -> None:
        try:
            self._result = asyncio.run(self.generator.run())
        except BaseException as error:  # handed to the caller of stop()
            self._failure = error

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> list[RequestRecord]:
        """Stop sending, wait for the answers in flight (up to ``timeout``); every record."""
        self.generator.stop()
        self._thread.join(timeout)
        if self._failure is not None:
            raise self._failure
        return self._result if not self._thread.is_alive() else self.generator.records

    def __enter__(self) -> BackgroundLoad:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of ``values`` (``q`` in 0..1); None when there are none.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5), percentile([1.0, 2.0, 3.0, 4.0], 0.99)
    (2.0, 4.0)
    """
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True)
class LoadSummary:
    """What happened to the requests scheduled in one window."""

    sent: int
    ok: int  # 2xx answers
    non_2xx: int
    connection_errors: int  # requests with no HTTP answer at all
    p50: float | None  # seconds, over every answered request
    p99: float | None
    p50_fast: float | None  # the same over requests to / only (no /slow)
    p99_fast: float | None
    max_lag: float  # the most a send left after its scheduled time (the generator's own delay)
    versions: dict[str, int] = field(default_factory=dict)  # answers by X-App-Version
    errors: dict[str, int] = field(default_factory=dict)  # by ErrorKind, and "http <status>"

    @property
    def failed(self) -> int:
        return self.non_2xx + self.connection_errors

    def to_json(self) -> dict[str, Any]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 1)

        return {
            "sent": self.sent,
            "ok": self.ok,
            "non_2xx": self.non_2xx,
            "connection_errors": self.connection_errors,
            "failed": self.failed,
            "p50_ms": ms(self.p50),
            "p99_ms": ms(self.p99),
            "p50_fast_ms": ms(self.p50_fast),
            "p99_fast_ms": ms(self.p99_fast),
            "max_lag_ms": ms(self.max_lag),
            "versions": dict(self.versions),
            "errors": dict(self.errors),
        }


def summarize(
    records: Iterable[RequestRecord], *, since: float = -math.inf, until: float = math.inf
) -> LoadSummary:
    """Totals, latencies and versions of the requests *scheduled* in ``[since, until)``."""
    chosen = [r for r in records if since <= r.scheduled < until]
    answered = [r for r in chosen if r.status is not None]
    fast = [r.latency for r in answered if not r.slow]
    versions = Counter(r.version or "unknown" for r in answered)
    errors = Counter(str(r.error) if r.error else f"http {r.status}" for r in chosen if not r.ok)
    return LoadSummary(
        sent=len(chosen),
        ok=sum(1 for r in chosen if r.ok),
        non_2xx=sum(1 for r in answered if not r.ok),
        connection_errors=len(chosen) - len(answered),
        p50=percentile([r.latency for r in answered], 0.50),
        p99=percentile([r.latency for r in answered], 0.99),
        p50_fast=percentile(fast, 0.50),
        p99_fast=percentile(fast, 0.99),
        max_lag=max((r.started - r.scheduled for r in chosen), default=0.0),
        versions=dict(sorted(versions.items())),
        errors=dict(sorted(errors.items())),
    )


@dataclass(frozen=True)
class Bucket:
    start: float  # seconds since the run's start
    answers: dict[str, int]  # by X-App-Version
    failed: int

    def to_json(self) -> dict[str, Any]:
        return {"t": self.start, "answers": self.answers, "failed": self.failed}


def timeline(records: Iterable[RequestRecord], bucket: float = 1.0) -> list[Bucket]:
    """Which versions answered over time: requests grouped by the ``bucket`` their answer
    ended in (failures counted apart)."""
    grouped: dict[int, tuple[Counter[str], list[int]]] = {}
    for r in records:
        answers, failed = grouped.setdefault(int(r.ended // bucket), (Counter(), [0]))
        if r.ok:
            answers[r.version or "unknown"] += 1
        else:
            failed[0] += 1
    return [
        Bucket(i * bucket, dict(sorted(answers.items())), failed[0])
        for i, (answers, failed) in sorted(grouped.items())
    ]
