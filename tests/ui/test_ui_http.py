"""The web UI over HTTP against a real server process (SQLite in a temporary directory,
which the tests also open to seed hosts and gate records): who may see what, how actions
are checked and recorded, what the pages show."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from headway.domain.models import Health
from headway.store import NewEvent, Store
from headway.testing.api_helpers import tiny_tarball
from headway.testing.server_process import ServerProcess, start_server

pytestmark = pytest.mark.integration

SPEC = {
    "name": "named-by-each-test",
    "run": {"start": ["python3", "app.py"]},
    "health": {"http": {"path": "/healthz"}},
    "strategy": {"batch_size": 1, "min_healthy_time": "1s", "progress_deadline": "60s"},
}
HOSTS = ("h1", "h2", "h3")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module; each test has its own browser-like client (cookies) and
    seeds its own service."""
    proc = start_server(tmp_path_factory.mktemp("ui-http") / "server")
    yield proc
    proc.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def store(server: ServerProcess) -> Iterator[Store]:
    """The server's own database, opened from the test (SQLite allows both)."""
    db = Store(f"sqlite:///{server.state_dir / 'headway.db'}")
    yield db
    db.close()


@pytest.fixture
def token(server: ServerProcess) -> str:
    return server.tokens["api"]


def api(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sign_in(client: httpx.Client, token: str, name: str = "alice") -> str:
    """Sign in; the page's CSRF token."""
    response = client.post(
        "/ui/signin", data={"token": token, "name": name, "next": "/ui"}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/ui"
    page = client.get("/ui")
    assert page.status_code == 200
    found = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def seed_rollout(client: httpx.Client, store: Store, token: str, service: str) -> str:
    """A service (v1 on three hosts that never run an agent), v2, and a rollout to it."""
    spec = {**SPEC, "name": service}
    assert client.post("/api/v1/services", json={"spec": spec}, headers=api(token)).status_code == 200
    digest = client.post("/api/v1/artifacts", content=tiny_tarball("v1"), headers=api(token)).json()["digest"]
    client.post(f"/api/v1/services/{service}/releases", json={"artifact": digest}, headers=api(token))
    with store.tx() as tx:
        for i, host in enumerate(HOSTS, start=1):
            name = f"{service}-{host}"
            tx.upsert_host(name, service, f"127.0.0.{i}", {"service": service, "pool": "blue"}, 1.0)
            tx.set_host_desired(name, 1, 1)
            tx.record_observation(name, 1, 1, Health.HEALTHY, "", 1.0)
    created = client.post(
        f"/api/v1/services/{service}/releases",
        json={"from_version": "v1", "params": {"color": "green"}},
        headers=api(token),
    )
    assert created.status_code == 201
    started = client.post(f"/api/v1/services/{service}/rollouts", json={}, headers=api(token))
    assert started.status_code == 201, started.text
    rollout_id: str = started.json()["rollout"]["id"]
    return rollout_id


def test_nothing_is_visible_without_signing_in(client: httpx.Client) -> None:
    for path in ("/ui", "/ui/services/web", "/ui/rollouts/x"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/ui/signin?next=")
    assert client.get("/ui/events/stream").status_code == 401
    assert client.post("/ui/actions/rollouts/x/pause", json={}).status_code == 401
    page = client.get("/ui/signin")
    assert page.status_code == 200 and 'name="token"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_sign_in_sets_a_strict_http_only_cookie_and_refuses_other_tokens(
    client: httpx.Client, server: ServerProcess, token: str
) -> None:
    refused = client.post("/ui/signin", data={"token": server.tokens["agent"]})
    assert refused.status_code == 401 and "not the operator token" in refused.text
    assert "set-cookie" not in refused.headers
    response = client.post(
        "/ui/signin", data={"token": token, "next": "/ui/services/web"}, follow_redirects=False
    )
    assert response.headers["location"] == "/ui/services/web"
    cookie = response.headers["set-cookie"].lower()
    for attribute in ("httponly", "samesite=strict", "path=/ui"):
        assert attribute in cookie
    assert token.lower() not in cookie


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/ui", "/api/v1/services", "/ui/signin"]
)
def test_sign_in_only_returns_to_ui_pages(client: httpx.Client, token: str, target: str) -> None:
    response = client.post("/ui/signin", data={"token": token, "next": target}, follow_redirects=False)
    assert response.headers["location"] == "/ui"


def test_actions_need_the_csrf_token_and_are_recorded_with_the_ui_actor(
    client: httpx.Client, store: Store, token: str
) -> None:
    rollout_id = seed_rollout(client, store, token, "acted")
    csrf = sign_in(client, token, "alice")
    url = f"/ui/actions/rollouts/{rollout_id}/pause"
    assert client.post(url, json={"reason": "x"}).status_code == 403
    assert client.post(url, json={}, headers={"X-CSRF-Token": "wrong"}).status_code == 403
    foreign = client.post(url, json={}, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert (
        client.post(
            f"/ui/actions/rollouts/{rollout_id}/explode", json={}, headers={"X-CSRF-Token": csrf}
        ).status_code
        == 404
    )

    paused = client.post(
        url,
        json={"reason": "look closer"},
        headers={"X-CSRF-Token": csrf, "Origin": str(client.base_url).rstrip("/")},
    )
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    again = client.post(f"/ui/actions/rollouts/{rollout_id}/promote", json={}, headers={"X-CSRF-Token": csrf})
    assert again.status_code == 200 and again.json()["status"] == "running"
    events = client.get("/api/v1/events", params={"rollout": rollout_id}, headers=api(token)).json()
    by_ui = [(e["kind"], e["actor"]) for e in events if e["actor"].startswith("ui:")]
    assert by_ui == [("rollout.paused", "ui:alice"), ("rollout.promoted", "ui:alice")]
    assert any("look closer" in e["message"] for e in events if e["kind"] == "rollout.paused")

    rolled = client.post("/ui/actions/services/acted/rollback", json={}, headers={"X-CSRF-Token": csrf})
    assert rolled.status_code == 200  # an active rollout: the service's rollback is the rollout's
    assert client.get(f"/api/v1/rollouts/{rollout_id}", headers=api(token)).json()["rollout"]["status"] in (
        "rolling_back",
        "rolled_back",
    )


def test_sign_out_ends_the_session_on_the_server(client: httpx.Client, token: str) -> None:
    csrf = sign_in(client, token)
    cookie = client.cookies.get("headway_session")
    assert client.post("/ui/signout", data={"csrf": "wrong"}, follow_redirects=False).status_code == 403
    out = client.post("/ui/signout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/ui/signin"
    client.cookies.set("headway_session", cookie or "", path="/ui")  # a copy of the old cookie
    assert client.get("/ui", follow_redirects=False).status_code == 303
    assert client.get("/ui/events/stream").status_code == 401


def test_pages_show_releases_the_plan_and_gate_charts(client: httpx.Client, store: Store, token: str) -> None:
    rollout_id = seed_rollout(client, store, token, "web")
    sign_in(client, token)
    gate = {
        "gate": "errors",
        "verdict": "fail",
        "explanation": "canary 4.0% errors against baseline 0.5%",
        "data": {"canary": [[0, 0.5], [10, 4.0]], "baseline": [[0, 0.5], [10, 0.5]], "unit": "%"},
    }
    with store.tx() as tx:
        tx.set_meta(f"gate:{rollout_id}:{rollout_id}:5:errors", json.dumps(gate))
        tx.append_events(
            [
                NewEvent(
                    ts=2.0,
                    kind="gate.fail",
                    message="errors: canary 4.0%",
                    service="web",
                    rollout_id=rollout_id,
                )
            ]
        )

    service = client.get("/ui/services/web")
    assert service.status_code == 200
    assert "color=green" in service.text and "v2" in service.text and rollout_id in service.text

    page = client.get(f"/ui/rollouts/{rollout_id}")
    assert page.status_code == 200
    assert page.text.count('class="step ') == 3  # three batches of one host
    assert 'data-action="pause"' in page.text and 'id="act-pause"' in page.text
    assert "canary 4.0% errors against baseline 0.5%" in page.text
    assert '<polyline class="canary" points="0.0,0.0 320.0,0.0"' not in page.text
    assert re.search(r'<polyline class="canary" points="0\.0,[0-9.]+ 320\.0,0\.0"', page.text)
    assert "gate.fail" in page.text
    assert "by operator" in page.text  # who started it, from the audit log

    missing = client.get("/ui/rollouts/nope")
    assert missing.status_code == 404 and "does not exist" in missing.text
    assert client.get("/ui/events/stream", params={"view": "nonsense"}).status_code == 404
