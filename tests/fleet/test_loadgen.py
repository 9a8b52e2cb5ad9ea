"""The open-loop load generator against small local HTTP servers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from headway.clock import SystemClock
from headway.fleet.demo import DemoFrame, LoadRun, Phase
from headway.fleet.loadgen import (
    BackgroundLoad,
    ErrorKind,
    LoadGenerator,
    LoadSettings,
    RequestRecord,
    percentile,
    plan_requests,
    summarize,
    timeline,
)
from headway.fleet.local import Fleet


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        time.sleep(float(query.get("ms", ["0"])[0]) / 1000)
        path = url.path.rstrip("/")
        if path == "/hangup":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        code = 503 if path == "/busy" else 200
        body = b"ok\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-App-Version", "v7")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_the_schedule_is_fixed_evenly_spaced_bounded_and_seeded() -> None:
    settings = LoadSettings("http://x", rate=50, duration=10, slow_share=0.2, slow_ms=(2000, 5000), seed=4)
    plan = plan_requests(settings)
    assert len(plan) == 500
    assert [p.at for p in plan[:3]] == [0.0, 0.02, 0.04]
    assert plan[-1].at == pytest.approx(9.98)
    slow = [p for p in plan if p.path.startswith("/slow?ms=")]
    assert 60 < len(slow) < 140
    assert all(2000 <= int(p.path.split("=")[1]) <= 5000 for p in slow)
    assert plan == plan_requests(settings)
    assert plan != plan_requests(LoadSettings("http://x", rate=50, duration=10, slow_share=0.2, seed=5))
    assert len(plan_requests(LoadSettings("http://x", rate=50, duration=10, max_requests=7))) == 7
    with pytest.raises(ValueError):
        LoadSettings("http://x", rate=0)


def test_requests_go_out_on_schedule_however_slow_the_answers(server: str) -> None:
    # Every answer takes 400 ms; 25 req/s for 0.4 s is 10 requests, all sent before the
    # first answer comes back: a closed loop would have sent one.
    settings = LoadSettings(server, rate=25, duration=0.4, slow_share=1.0, slow_ms=(400, 400))
    started = time.monotonic()
    records = asyncio.run(LoadGenerator(settings).run())
    took = time.monotonic() - started
    assert len(records) == 10
    assert all(r.ok and r.version == "v7" and r.slow for r in records)
    assert took < 1.5
    assert max(r.started for r in records) < min(r.ended for r in records)
    summary = summarize(records)
    assert summary.max_lag < 0.2
    assert summary.p50 is not None and 0.4 <= summary.p50 < 1.0
    assert (summary.sent, summary.ok, summary.failed) == (10, 10, 0)
    assert summary.versions == {"v7": 10}
    assert summary.p50_fast is None  # every request was slow


def test_errors_and_non_2xx_are_counted_apart(server: str) -> None:
    def one(path: str, url: str = server) -> RequestRecord:
        """A run of exactly one request, at t=0, to ``url + path``."""
        records = asyncio.run(LoadGenerator(LoadSettings(url + path, rate=1, duration=1)).run())
        assert len(records) == 1
        return records[0]

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: refused
        refused = one("", dead)
    busy = one("/busy")
    hangup = one("/hangup")
    fine = one("")
    assert (refused.status, refused.error) == (None, ErrorKind.CONNECT)
    assert (busy.status, busy.error, busy.ok) == (503, None, False)
    assert (hangup.status, hangup.error) == (None, ErrorKind.DISCONNECTED)
    assert fine.ok and fine.version == "v7"

    summary = summarize([refused, busy, hangup, fine])
    assert (summary.sent, summary.ok, summary.non_2xx, summary.connection_errors) == (4, 1, 1, 2)
    assert summary.failed == 3
    assert summary.errors == {"connect": 1, "disconnected": 1, "http 503": 1}


def test_background_load_stops_early_and_keeps_every_answer(server: str) -> None:
    settings = LoadSettings(server, rate=40, duration=60, slow_share=0.1, slow_ms=(300, 300))
    with BackgroundLoad(LoadGenerator(settings)) as load:
        time.sleep(0.5)
        assert load.generator.sent > 5
        records = load.stop()
    assert not load.running
    assert 10 <= len(records) <= 40  # stopped long before the 2,400 planned
    assert len(records) == load.generator.sent and load.generator.in_flight == 0
    assert all(r.ok for r in records)
    assert sorted(r.index for r in records) == list(range(len(records)))


def test_windows_percentiles_and_timeline() -> None:
    def rec(i: int, at: float, took: float, status: int | None = 200, version: str = "v1") -> RequestRecord:
        error = None if status else ErrorKind.READ
        return RequestRecord(i, "/", at, at, at + took, status, error, version if status else None)

    records = [rec(0, 0.1, 0.01), rec(1, 0.5, 0.03), rec(2, 1.2, 0.02, version="v2"),
               rec(3, 1.5, 0.2, status=None), rec(4, 2.5, 0.01, version="v2")]
    assert summarize(records, until=1.0).versions == {"v1": 2}
    during = summarize(records, since=1.0, until=2.0)
    assert (during.sent, during.connection_errors, during.versions) == (2, 1, {"v2": 1})
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    buckets = timeline(records)
    assert [(b.start, b.answers, b.failed) for b in buckets] == [
        (0.0, {"v1": 2}, 0), (1.0, {"v2": 1}, 1), (2.0, {"v2": 1}, 0),
    ]
    assert buckets[1].to_json() == {"t": 1.0, "answers": {"v2": 1}, "failed": 1}
    assert summarize(records).to_json()["p50_ms"] == 10.0  # nearest rank of 10, 10, 20, 30 ms


def test_load_run_draws_frames_and_keeps_every_answer(server: str, tmp_path: Path) -> None:
    """The demos' load (headway.fleet.demo.LoadRun): sending while the block runs, a frame
    per interval, every answer kept once the block ends."""
    fleet = Fleet(server="http://127.0.0.1:1", token="", state_dir=tmp_path, traffic=server)
    frames: list[DemoFrame] = []
    lines: list[str] = []
    clock = SystemClock()
    with LoadRun(
        fleet, "canary", rate=40, on_frame=frames.append, clock=clock, sleep=time.sleep, log=lines.append
    ) as load:
        assert abs(load.started_at - clock.now()) < 5.0
        deadline = time.monotonic() + 5.0
        # three requests out, well before the first slow one (at 0.225 s of the load with seed 1)
        while load.generator.sent < 3 and time.monotonic() < deadline:
            load.hold(Phase.BEFORE, 0.01)
        assert load.records == []
    assert lines == [f"sending 40 requests/s through HAProxy at {server}"]
    assert frames and frames[0].phase is Phase.BEFORE and frames[0].rollout is None
    assert {f.strategy for f in frames} == {"canary"}
    records = load.records
    assert 2 <= len(records) == load.generator.sent and load.generator.in_flight == 0
    assert all(r.ok and r.version == "v7" and r.path == "/" for r in records)
    assert sorted(r.index for r in records) == list(range(len(records)))
