"""ApiClient: routes, bodies, streaming upload and the mapping of errors to headway.errors."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from headway.api_models import CreateRelease
from headway.client.api import ApiClient
from headway.errors import (
    ArtifactError,
    Conflict,
    HeadwayError,
    NotFound,
    ServerUnreachable,
    SpecError,
    StoreUnavailable,
    Unauthorized,
)

DIGEST = "sha256:" + "ab" * 32
RELEASE = {
    "service": "web",
    "number": 2,
    "artifact": {"digest": DIGEST, "size": 10, "url": f"/api/v1/artifacts/{DIGEST}"},
    "params": {"color": "blue"},
    "created_at": 1700000000.0,
}
ROLLOUT = {
    "rollout": {
        "id": "r1",
        "service": "web",
        "from_release": 1,
        "to_release": 2,
        "strategy": "rolling",
        "status": "running",
        "created_at": 1.0,
        "updated_at": 2.0,
    },
    "hosts": [{"name": "host-01", "phase": "upgrading", "release": 1}],
}

Handler = Callable[[httpx.Request], httpx.Response]


def client_for(handler: Handler, token: str = "secret") -> ApiClient:
    return ApiClient("http://headway.test", token, transport=httpx.MockTransport(handler))


def problem(status: int, kind: str, message: str = "it broke", hint: str = "do this") -> Handler:
    body = {"error": kind, "message": message, "hint": hint}
    return lambda request: httpx.Response(status, json=body)


@pytest.mark.parametrize(
    ("status", "kind", "expected"),
    [
        (401, "unauthorized", Unauthorized),
        (404, "not_found", NotFound),
        (409, "conflict", Conflict),
        (413, "too_large", ArtifactError),
        (413, "bad_artifact", ArtifactError),
        (422, "invalid", SpecError),
        (422, "bad_artifact", ArtifactError),
        (503, "store_unavailable", StoreUnavailable),
        (500, "internal", HeadwayError),
    ],
)
def test_problem_bodies_map_to_the_error_tree(
    status: int, kind: str, expected: type[HeadwayError]
) -> None:
    with client_for(problem(status, kind)) as client, pytest.raises(expected) as caught:
        client.get_service("web")
    assert type(caught.value) is expected
    assert caught.value.message == "it broke"
    assert caught.value.hint == "do this"


def test_fastapi_validation_body_becomes_a_spec_error() -> None:
    body = {"detail": [{"loc": ["body", "spec"], "msg": "Field required", "type": "missing"}]}
    with (
        client_for(lambda r: httpx.Response(422, json=body)) as client,
        pytest.raises(SpecError, match=r"422 Unprocessable .*body.spec: Field required"),
    ):
        client.apply_service({})


def test_plain_text_error() -> None:
    with (
        client_for(lambda r: httpx.Response(404, text="no such route")) as client,
        pytest.raises(NotFound, match="no such route"),
    ):
        client.get_rollout("r9")


def test_bare_503_means_unreachable() -> None:
    with (
        client_for(lambda r: httpx.Response(503)) as client,
        pytest.raises(ServerUnreachable) as caught,
    ):
        client.list_hosts()
    assert "HEADWAY_SERVER" in caught.value.hint


def test_unexpected_body_is_reported_not_raised_raw() -> None:
    with (
        client_for(lambda r: httpx.Response(200, json={"nope": 1})) as client,
        pytest.raises(HeadwayError, match="does not understand") as caught,
    ):
        client.get_release("web", "v2")
    assert "versions" in caught.value.hint


def test_connection_refused_is_server_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with (
        ApiClient(f"http://127.0.0.1:{port}", "t", timeout=2) as client,
        pytest.raises(ServerUnreachable) as caught,
    ):
        client.list_services()
    assert f"127.0.0.1:{port}" in caught.value.message
    assert caught.value.hint == "is `headway server` running? set --server or HEADWAY_SERVER"


def test_requests_carry_the_token_and_the_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=RELEASE)

    with client_for(handler) as client:
        release = client.create_release(
            "web", CreateRelease(from_version="v1", params={"color": "blue"}, note="n")
        )
    assert release.version == "v2"
    (request,) = seen
    assert request.method == "POST"
    assert request.url.path == "/api/v1/services/web/releases"
    assert request.headers["authorization"] == "Bearer secret"
    assert json.loads(request.content) == {
        "artifact": None, "from_version": "v1", "params": {"color": "blue"}, "config": None, "note": "n",
    }


def test_query_parameters() -> None:
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, json=[])

    with client_for(handler) as client:
        client.list_events(service="web", rollout="r1", after=5, limit=10)
        client.list_rollouts(service="web", limit=1)
        client.list_hosts()
    assert dict(seen[0].params) == {"service": "web", "rollout": "r1", "after": "5", "limit": "10"}
    assert dict(seen[1].params) == {"service": "web", "limit": "1"}
    assert dict(seen[2].params) == {}


def test_iter_events_pages_with_the_cursor() -> None:
    calls: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        calls.append(params)
        after, limit = int(params["after"]), int(params["limit"])
        ids = [i for i in range(after + 1, min(after + limit, 5) + 1)]
        return httpx.Response(
            200, json=[{"id": i, "ts": 1.0, "kind": "k", "message": f"m{i}"} for i in ids]
        )

    with client_for(handler) as client:
        events = list(client.iter_events(service="web", page=2))
    assert [e.id for e in events] == [1, 2, 3, 4, 5]
    assert [c["after"] for c in calls] == ["0", "2", "4"]


def test_rollout_actions() -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        assert json.loads(request.content) == {"reason": "why"}
        return httpx.Response(200, json=ROLLOUT)

    with client_for(handler) as client:
        for action in ("pause", "resume", "abort", "promote"):
            out = client.rollout_action("r1", action, reason="why")
            assert out.rollout.id == "r1"
            assert out.hosts[0].phase == "upgrading"
        with pytest.raises(SpecError):
            client.rollout_action("r1", "explode")
    assert paths == [f"/api/v1/rollouts/r1/{a}" for a in ("pause", "resume", "abort", "promote")]


def test_upload_streams_the_file(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 1000  # 256 kB: several chunks
    artifact = tmp_path / "app-v2.tar.gz"
    artifact.write_bytes(payload)
    received: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(request)
        body = request.read()
        assert body == payload
        return httpx.Response(
            201, json={"digest": DIGEST, "size": len(body), "url": f"/api/v1/artifacts/{DIGEST}"}
        )

    with client_for(handler) as client:
        ref = client.upload_artifact(artifact)
    assert ref.digest == DIGEST
    assert ref.size == len(payload)
    (request,) = received
    assert request.url.params["name"] == "app-v2.tar.gz"
    assert request.headers["content-length"] == str(len(payload))
    assert request.headers["content-type"] == "application/octet-stream"


def test_upload_of_a_missing_file(tmp_path: Path) -> None:
    with (
        client_for(lambda r: httpx.Response(500)) as client,
        pytest.raises(ArtifactError, match="cannot read artifact"),
    ):
        client.upload_artifact(tmp_path / "missing.tar.gz")


def test_download_streams_to_a_file(tmp_path: Path) -> None:
    payload = b"x" * 200_000
    with client_for(lambda r: httpx.Response(200, content=payload)) as client:
        path = client.download_artifact(DIGEST, tmp_path / "a.tar.gz")
    assert path.read_bytes() == payload
    with (
        client_for(problem(404, "not_found")) as client,
        pytest.raises(NotFound),
    ):
        client.download_artifact(DIGEST, tmp_path / "b.tar.gz")
