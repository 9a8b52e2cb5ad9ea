"""A small HTTP service to roll out: the sample app of Headway's local fleet.

Standard library only; this one file is copied into release tarballs and run
by the agent as ``python app.py``. It knows nothing about Headway itself, only
the environment it is started with:

    HEADWAY_ADDRESS, HEADWAY_PORT   where to listen (127.0.0.1:8080)
    HEADWAY_HOST                    the host name shown in ``GET /``
    HEADWAY_RELEASE                 version, unless a VERSION file sits beside this file
    HEADWAY_CONFIG_FILE             ``key=value`` lines; ``greeting`` is shown in ``GET /``,
                                    ``fail_health = 1`` makes ``/healthz`` answer 503
                                    (re-read on SIGHUP)
    HEADWAY_CONFIG_DIR              used when HEADWAY_CONFIG_FILE is not set: the config is
                                    ``app.conf`` in that directory (re-read on SIGHUP, so a
                                    flipped ``current`` link is followed)
    HEADWAY_SEED                    seed of the fault injector (default: the pid)
    HEADWAY_PARAM_ERROR_RATE        0..1 share of ``/`` and ``/slow`` answering 500
    HEADWAY_PARAM_LATENCY_MS        milliseconds added to every request
    HEADWAY_PARAM_CRASH_AT_START    1: exit with code 1 before listening
    HEADWAY_PARAM_FAIL_HEALTH       1: ``/healthz`` answers 503, the rest works

``python app.py --check-config DIR`` checks ``DIR/app.conf`` (or a file) and exits 0, or 1
with one line per problem: usable as the service's ``config.validate`` command.

Routes: ``/`` (text), ``/slow?ms=N``, ``/healthz``, ``/metrics`` (Prometheus
text format). Every answer carries ``X-App-Version``. On SIGTERM or SIGINT it
stops accepting connections, lets the requests in flight finish (slow ones
too) and exits 0. Connections are closed after each answer (HTTP/1.0), so an
idle keep-alive connection can never hold up a shutdown.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_SLOW_MS = 60_000
CONFIG_NAME = "app.conf"


def _truthy(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _flag(name: str) -> bool:
    return _truthy(os.environ.get(name, ""))


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        print(f"app: ignoring {name}={raw!r}: not a number", file=sys.stderr, flush=True)
        return default


def read_version() -> str:
    path = Path(__file__).resolve().with_name("VERSION")
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or os.environ.get("HEADWAY_RELEASE", "unknown")


def config_path() -> str:
    """Where the config is: HEADWAY_CONFIG_FILE, else ``app.conf`` in HEADWAY_CONFIG_DIR."""
    explicit = os.environ.get("HEADWAY_CONFIG_FILE", "")
    if explicit:
        return explicit
    directory = os.environ.get("HEADWAY_CONFIG_DIR", "")
    return os.path.join(directory, CONFIG_NAME) if directory else ""


def parse_config(text: str) -> tuple[dict[str, str], list[str]]:
    """The ``key=value`` pairs of ``text`` and one message per line that is not one."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            problems.append(f"line {number}: expected 'key = value', got {line[:60]!r}")
            continue
        values[key.strip()] = value.strip()
    return values, problems


def read_config(path: str) -> dict[str, str]:
    if not path:
        return {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        print(f"app: cannot read config {path}: {error}", file=sys.stderr, flush=True)
        return {}
    return parse_config(text)[0]


def check_config(target: str) -> int:
    """``--check-config``: 0 when the config parses, else 1 and the problems on stderr."""
    path = Path(target)
    if path.is_dir():
        path = path / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        print(f"{path}: cannot read: {error}", file=sys.stderr, flush=True)
        return 1
    problems = parse_config(text)[1]
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr, flush=True)
    return 1 if problems else 0


class Metrics:
    """Counters kept in memory and rendered in the Prometheus text format."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.bucket_counts = [0] * len(BUCKETS)
        self.duration_sum = 0.0
        self.duration_count = 0
        self.in_flight = 0

    def begin(self) -> None:
        with self.lock:
            self.in_flight += 1

    def end(self, code: int, seconds: float) -> None:
        with self.lock:
            self.in_flight -= 1
            self.requests[str(code)] = self.requests.get(str(code), 0) + 1
            self.duration_sum += seconds
            self.duration_count += 1
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.bucket_counts[i] += 1

    def render(self) -> str:
        with self.lock:
            lines = [
                "# HELP requests_total Requests answered, by status code.",
                "# TYPE requests_total counter",
            ]
            for code in sorted(self.requests):
                lines.append(f'requests_total{{code="{code}"}} {self.requests[code]}')
            lines += [
                "# HELP request_duration_seconds Time to answer a request.",
                "# TYPE request_duration_seconds histogram",
            ]
            for bound, count in zip(BUCKETS, self.bucket_counts, strict=True):
                lines.append(f'request_duration_seconds_bucket{{le="{bound:g}"}} {count}')
            lines.append(f'request_duration_seconds_bucket{{le="+Inf"}} {self.duration_count}')
            lines.append(f"request_duration_seconds_sum {self.duration_sum:.6f}")
            lines.append(f"request_duration_seconds_count {self.duration_count}")
            lines += [
                "# HELP in_flight Requests being answered now.",
                "# TYPE in_flight gauge",
                f"in_flight {self.in_flight}",
                "# HELP app_version_info The version this process runs.",
                "# TYPE app_version_info gauge",
                f'app_version_info{{version="{self.version}"}} 1',
            ]
        return "\n".join(lines) + "\n"


class App:
    """Settings read once at start, plus the mutable bits (config, randomness, metrics)."""

    def __init__(self) -> None:
        self.version = read_version()
        self.host = os.environ.get("HEADWAY_HOST", "")
        self.config_path = config_path()
        self.config = read_config(self.config_path)
        self.error_rate = min(1.0, max(0.0, _number("HEADWAY_PARAM_ERROR_RATE", 0.0)))
        self.latency = max(0.0, _number("HEADWAY_PARAM_LATENCY_MS", 0.0)) / 1000
        self.fail_health = _flag("HEADWAY_PARAM_FAIL_HEALTH")
        seed = os.environ.get("HEADWAY_SEED", "").strip() or str(os.getpid())
        self.random = random.Random(seed)
        self.random_lock = threading.Lock()
        self.metrics = Metrics(self.version)

    def reload(self) -> None:
        self.config = read_config(self.config_path)
        print(f"app: config reloaded from {self.config_path or '(none)'}", file=sys.stderr,
              flush=True)

    def unhealthy(self) -> bool:
        return self.fail_health or _truthy(self.config.get("fail_health", ""))

    def inject_error(self) -> bool:
        if self.error_rate <= 0:
            return False
        with self.random_lock:
            return self.random.random() < self.error_rate


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.0"
    server_version = "headway-sample-app"

    def do_GET(self) -> None:
        app = self.server.app
        started = time.monotonic()
        app.metrics.begin()
        code = 500
        try:
            if app.latency:
                time.sleep(app.latency)
            code, body, content_type = self.route(app)
            self.answer(code, body, content_type)
        finally:
            app.metrics.end(code, time.monotonic() - started)

    def route(self, app: App) -> tuple[int, str, str]:
        url = urlsplit(self.path)
        text = "text/plain; charset=utf-8"
        if url.path == "/healthz":
            if app.unhealthy():
                return 503, "unhealthy (fail_health is set)\n", text
            return 200, "ok\n", text
        if url.path == "/metrics":
            return 200, app.metrics.render(), "text/plain; version=0.0.4; charset=utf-8"
        if url.path == "/":
            if app.inject_error():
                return 500, "injected error\n", text
            greeting = app.config.get("greeting", "hello")
            return 200, f"{greeting} from {app.host or 'sample app'}, version {app.version}\n", text
        if url.path == "/slow":
            try:
                ms = float(parse_qs(url.query).get("ms", ["100"])[0])
            except ValueError:
                return 400, "ms must be a number of milliseconds\n", text
            time.sleep(min(max(ms, 0.0), MAX_SLOW_MS) / 1000)
            if app.inject_error():
                return 500, "injected error\n", text
            return 200, f"slept {ms:g} ms, version {app.version}\n", text
        return 404, "not found\n", text

    def answer(self, code: int, body: str, content_type: str) -> None:
        data = body.encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-App-Version", self.server.app.version)
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        self.answer(code, f"{message or 'error'}\n", "text/plain; charset=utf-8")

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown the log; /metrics counts them


class Server(ThreadingHTTPServer):
    daemon_threads = False   # server_close() waits for the requests in flight
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        super().__init__(address, Handler)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        """A client that went away before its answer was written (HAProxy closes its health
        checks' connections with a reset once it has read the status line) is normal: say
        nothing. Anything else is printed with its traceback, as by default."""
        if isinstance(sys.exc_info()[1], ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
            return
        super().handle_error(request, client_address)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--check-config":
        return check_config(sys.argv[2])
    if _flag("HEADWAY_PARAM_CRASH_AT_START"):
        print("app: crash_at_start is set; exiting with code 1", file=sys.stderr, flush=True)
        return 1
    app = App()
    address = os.environ.get("HEADWAY_ADDRESS", "127.0.0.1")
    port = int(os.environ.get("HEADWAY_PORT", "8080"))
    try:
        server = Server((address, port), app)
    except OSError as error:
        print(f"app: cannot listen on {address}:{port}: {error}", file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()
    hangup = threading.Event()
    wake = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()
        wake.set()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        hangup.set()          # reloaded by the loop below, not inside the handler
        wake.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hangup)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    print(f"app: version {app.version} listening on {address}:{port}", file=sys.stderr, flush=True)
    while not stop.is_set():
        wake.wait(0.2)
        wake.clear()
        if hangup.is_set() and not stop.is_set():
            hangup.clear()
            app.reload()
    server.shutdown()       # no more accepts
    server.server_close()   # close the socket, then wait for every request in flight
    serving.join()
    print("app: stopped after finishing the requests in flight", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
