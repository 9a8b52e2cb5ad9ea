"""The web UI of a server that does not lead, with two real servers on one PostgreSQL schema.

Only the leader runs the rollouts; the follower's pages read them from the store. A
rollout started on the leader shows on the follower's fleet stream (as it progresses),
the same as on the leader's once it waits for a promote, and on the follower's rollout
page and its stream; an abort through the follower's UI reaches the leader, and the
follower's pages show the rollout end.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest

from headway.testing.cluster import Cluster, agents_for, publish, run_with_agents, start_v2, wait_rollout
from headway.testing.server_process import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

HOSTS = 4
TIMING = {"lease_ttl": 2.0, "heartbeat": 1.0, "reconnect_grace": 3.0}
CANARY = {
    "type": "canary",
    "steps": [{"hosts": "50%"}, {"pause": "promote"}],
    "min_healthy_time": "1s",
    "progress_deadline": "60s",
}
STREAM_TIMEOUT = httpx.Timeout(10.0, read=30.0)  # a quiet stream sends a keep-alive every 15 s


def sign_in(server: ServerProcess, name: str) -> tuple[httpx.Client, str]:
    """A browser-like client signed in to ``server``'s UI, and its CSRF token."""
    client = httpx.Client(base_url=server.url, timeout=STREAM_TIMEOUT)
    response = client.post(
        "/ui/signin",
        data={"token": server.tokens["api"], "name": name, "next": "/ui"},
        follow_redirects=True,
    )
    assert response.status_code == 200 and response.url.path == "/ui", response.text
    found = re.search(r'name="csrf-token" content="([^"]+)"', response.text)
    assert found is not None
    return client, found.group(1)


class Stream:
    """One of the UI's server-sent event streams, read event by event."""

    def __init__(self, client: httpx.Client, **params: str) -> None:
        self._context: AbstractContextManager[httpx.Response] = client.stream(
            "GET", "/ui/events/stream", params=params
        )
        response = self._context.__enter__()
        assert response.status_code == 200, response.read()
        self._events = self._parse(response.iter_lines())

    @staticmethod
    def _parse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
        """``(event, data)``; a comment (the keep-alive) as ``("", "")``."""
        event, data = "", list[str]()
        for line in lines:
            if not line:
                if data:
                    yield event, "\n".join(data)
                event, data = "", []
            elif line.startswith(":"):
                yield "", ""
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))

    def next(self, kind: str, timeout: float = 30.0) -> Any:
        """The next ``kind`` event's data; fails after ``timeout`` (checked at each event
        and keep-alive, so a quiet stream fails up to 15 s late, but fails)."""
        deadline = time.monotonic() + timeout
        for event, data in self._events:
            if event == kind:
                return json.loads(data)
            assert time.monotonic() < deadline, f"no {kind!r} event within {timeout:g}s"
        raise AssertionError(f"the stream ended before a {kind!r} event")

    def close(self) -> None:
        self._context.__exit__(None, None, None)


class Fleet:
    """The fleet page's picture, kept up to date from its stream as the page's script does."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.version = 0
        self.services: list[dict[str, Any]] = []
        self.names: list[str] = []
        self.phase_names: list[str] = []
        self.rows: list[list[int]] = []  # per host: release, desired, health, connected, phase

    def read(self, timeout: float = 30.0) -> None:
        message = self.stream.next("fleet", timeout)
        if message["type"] == "snapshot":
            hosts = message["hosts"]
            self.names, self.phase_names = hosts["n"], message["phases"]
            columns = (hosts["r"], hosts["d"], hosts["h"], hosts["c"], hosts["p"])
            self.rows = [list(row) for row in zip(*columns, strict=True)]
        else:
            assert message["base"] == self.version, "deltas follow one another"
            for index, *row in message["ch"]:
                self.rows[index] = row
        self.version = message["v"]
        self.services = message["services"]

    def until(self, check: Callable[[Fleet], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not check(self):
            assert time.monotonic() < deadline, f"the fleet stream never showed it: {self.picture()}"
            self.read(max(1.0, deadline - time.monotonic()))

    def web(self) -> dict[str, Any]:
        return next(s for s in self.services if s["name"] == "web")

    def phases(self) -> dict[str, str]:
        return {name: self.phase_names[row[4]] for name, row in zip(self.names, self.rows, strict=True)}

    def picture(self) -> tuple[dict[str, Any], dict[str, str]]:
        return (self.web() if self.services else {}), self.phases()


def test_a_follower_ui_shows_the_leaders_rollout_and_aborts_it(cluster: Callable[..., Cluster]) -> None:
    c = cluster(2, **TIMING)
    publish(c, CANARY)
    agents = agents_for(c, HOSTS, "ui", "127.0.37", restart_time=0.3, heartbeat=1.0)
    names = sorted(a.name for a in agents)
    seen: dict[str, Any] = {}

    def scenario() -> None:
        leader = c.leader()
        follower = next(s for s in c.alive() if s is not leader)
        with follower.client() as api:
            assert api.get("/api/v1/cluster").json()["role"] == "follower"
        rollout_id = start_v2(c, leader, HOSTS)["id"]
        ui, csrf = sign_in(follower, "carol")
        streams: list[Stream] = []
        try:
            # the follower's fleet stream shows the leader's rollout, and follows it
            fleet = Fleet(stream := Stream(ui, view="fleet"))
            streams.append(stream)
            fleet.until(lambda f: bool(f.services) and f.web()["rollout"] == rollout_id)
            assert (fleet.web()["status"], fleet.web()["from"], fleet.web()["to"]) == ("running", 1, 2)
            assert sorted(n for n, p in fleet.phases().items() if p) == names  # every host has a phase
            seen["first"] = fleet.phases()
            fleet.until(lambda f: sorted(f.phases().values()) == ["done", "done", "pending", "pending"])
            assert seen["first"] != fleet.phases(), "the stream showed the canary hosts change"

            # waiting for a promote: the same picture as the leader's UI, and as the API's
            wait_rollout(c, rollout_id, lambda b: b["hosts_done"] == 2 and b["step"] == 2)
            # carol's sign-in on the follower is good on the leader too (sessions in the store)
            leader_ui = httpx.Client(base_url=leader.url, timeout=STREAM_TIMEOUT, cookies=ui.cookies)
            assert leader_ui.get("/ui", follow_redirects=False).status_code == 200
            leaders = Fleet(stream := Stream(leader_ui, view="fleet"))
            streams.append(stream)
            leaders.read()
            assert leaders.picture() == fleet.picture()
            with follower.client() as api:
                hosts = api.get(f"/api/v1/rollouts/{rollout_id}").json()["hosts"]
            assert {h["name"]: h["phase"] for h in hosts} == {
                n: p for n, p in fleet.phases().items() if n in names
            }
            leader_ui.close()

            # the rollout page and its stream on the follower
            page = ui.get(f"/ui/rollouts/{rollout_id}")
            assert page.status_code == 200
            for text in (
                'data-status="running"',
                'data-state="current" data-kind="pause"',
                "waiting for an operator to promote",
                '<i class="dot c-done"></i>2 done',
            ):
                assert text in page.text, text
            abort_button = re.search(r'<button[^>]*id="act-abort"[^>]*>', page.text)
            assert abort_button is not None and "disabled" not in abort_button.group(0)
            live = Stream(ui, view="rollout", id=rollout_id)
            streams.append(live)
            swap = live.next("swap")
            assert swap["target"] == "live" and "waiting for an operator to promote" in swap["html"]

            # an abort through the follower's UI reaches the leader
            aborted = ui.post(
                f"/ui/actions/rollouts/{rollout_id}/abort",
                json={"reason": "seen enough"},
                headers={"X-CSRF-Token": csrf, "Origin": follower.url},
            )
            assert aborted.status_code == 200, aborted.text
            assert aborted.json()["status"] in ("rolling_back", "aborted", "rolled_back")
            ended = wait_rollout(c, rollout_id, lambda b: b["status"] not in ("running", "rolling_back"))
            assert ended["status"] in ("aborted", "rolled_back"), ended
            seen["ended"] = ended["status"]
            with leader.client() as api:
                events = api.get("/api/v1/events", params={"rollout": rollout_id}).json()
            assert any(e["actor"] == "ui:carol" and "seen enough" in e["message"] for e in events), events

            # and the follower's pages show it end
            while f'data-status="{seen["ended"]}"' not in swap["html"]:
                swap = live.next("swap")
            assert "act-abort" in swap["html"] and 'id="act-abort"' in swap["html"]
            assert all(
                "disabled" in b for b in re.findall(r'<button[^>]*id="act-[a-z]+"[^>]*>', swap["html"])
            )
            fleet.until(lambda f: f.web()["rollout"] is None)
            page = ui.get(f"/ui/rollouts/{rollout_id}")
            assert f'data-status="{seen["ended"]}"' in page.text
        finally:
            for stream in streams:
                stream.close()
            ui.close()

    run_with_agents(agents, scenario)
    print(f"follower saw {seen['first']} first; the rollout ended {seen['ended']}")
