"""The one HTTP client of the Headway REST API (see `headway.api_models` for the routes).

Every method returns the pydantic model of its route. Failures come out as the
`headway.errors` tree, never as httpx exceptions:

    connection refused, DNS, timeout -> ServerUnreachable
    401 -> Unauthorized     404 -> NotFound     409 -> Conflict
    413 -> ArtifactError    422 -> SpecError or ArtifactError (by the problem's ``error``)
    503 -> StoreUnavailable (or ServerUnreachable when no Problem body came back)
    anything else that is not 2xx -> HeadwayError
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from headway.api_models import (
    ApplyService,
    ClusterOut,
    ConfigFromUrl,
    ConfigPushOut,
    ConfigRestoreOut,
    CreateRelease,
    OperatorAction,
    Problem,
    RolloutOut,
    ServiceOut,
    StartRollout,
)
from headway.domain.models import ArtifactRef, ConfigRevision, Event, HostView, Release
from headway.errors import (
    ArtifactError,
    Conflict,
    HeadwayError,
    IllegalTransition,
    NotFound,
    ServerUnreachable,
    SpecError,
    StoreUnavailable,
    Unauthorized,
)

DEFAULT_SERVER = "http://127.0.0.1:7400"
UNREACHABLE_HINT = "is `headway server` running? set --server or HEADWAY_SERVER"
_CHUNK = 1 << 16

_KINDS: dict[str, type[HeadwayError]] = {
    cls.kind: cls
    for cls in (
        SpecError,
        NotFound,
        Conflict,
        Unauthorized,
        ArtifactError,
        IllegalTransition,
        StoreUnavailable,
        ServerUnreachable,
    )
}
_STATUSES: dict[int, type[HeadwayError]] = {
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: ArtifactError,
    422: SpecError,
    503: StoreUnavailable,
}

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

_SERVICES = TypeAdapter(list[ServiceOut])
_RELEASES = TypeAdapter(list[Release])
_ROLLOUTS = TypeAdapter(list[RolloutOut])
_HOSTS = TypeAdapter(list[HostView])
_EVENTS = TypeAdapter(list[Event])
_CONFIGS = TypeAdapter(list[ConfigRevision])

ROLLOUT_ACTIONS = ("pause", "resume", "abort", "promote")


def error_from_response(response: httpx.Response) -> HeadwayError:
    """The `HeadwayError` an error response stands for (its Problem body when it has one)."""
    status = response.status_code
    problem: Problem | None = None
    try:
        problem = Problem.model_validate_json(response.content)
    except ValidationError:
        problem = None
    if problem is not None:
        cls = _KINDS.get(problem.error) or _STATUSES.get(status, HeadwayError)
        if status == 413:
            cls = ArtifactError
        return cls(problem.message, hint=problem.hint)
    if status == 503:
        return ServerUnreachable(
            f"{response.request.url} answered 503 Service Unavailable", hint=UNREACHABLE_HINT
        )
    detail = _plain_detail(response)
    cls = _STATUSES.get(status, HeadwayError)
    return cls(
        f"the server answered {status} {response.reason_phrase}{detail}",
        hint="check the server log for details" if status >= 500 else "",
    )


def _plain_detail(response: httpx.Response) -> str:
    """A short text from a non-Problem error body (FastAPI's ``{"detail": ...}`` or plain text)."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = response.text.strip()
        return f": {text[:200]}" if text else ""
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        if isinstance(detail, list):
            parts = []
            for item in detail:
                if isinstance(item, dict):
                    where = ".".join(str(p) for p in item.get("loc", ()))
                    parts.append(f"{where}: {item.get('msg', '')}")
            return ": " + "; ".join(parts) if parts else ""
        return f": {detail}"
    return ""


class ApiClient:
    """A synchronous client of one Headway server.

    ``transport`` lets tests plug in an ``httpx.MockTransport`` or an ASGI app.
    Use as a context manager, or call `close`.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_SERVER,
        token: str = "",
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- plumbing ---------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | None = None,
        params: Mapping[str, str | int] | None = None,
        content: Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        query = {k: v for k, v in (params or {}).items() if v != ""}
        try:
            response = self._http.request(
                method,
                path,
                params=query,
                content=body.model_dump_json().encode() if body is not None else content,
                headers={
                    **({"Content-Type": "application/json"} if body is not None else {}),
                    **(headers or {}),
                },
            )
        except httpx.TimeoutException:
            raise ServerUnreachable(
                f"{self.base_url} did not answer {method} {path} in time",
                hint=f"the server may be overloaded or stuck; {UNREACHABLE_HINT}",
            ) from None
        except httpx.TransportError as error:
            raise ServerUnreachable(
                f"cannot reach the Headway server at {self.base_url} ({error})",
                hint=UNREACHABLE_HINT,
            ) from None
        if response.is_error:
            raise error_from_response(response)
        return response

    def _model(self, model: type[M], response: httpx.Response) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as error:
            raise _not_understood(response, error) from None

    def _list(self, adapter: TypeAdapter[list[T]], response: httpx.Response) -> list[T]:
        try:
            return adapter.validate_json(response.content)
        except ValidationError as error:
            raise _not_understood(response, error) from None

    # --- routes -----------------------------------------------------------------------------

    def healthz(self) -> bool:
        """True when ``GET /healthz`` answers 2xx (no token needed)."""
        self._request("GET", "/healthz")
        return True

    def cluster(self) -> ClusterOut:
        return self._model(ClusterOut, self._request("GET", "/api/v1/cluster"))

    def list_services(self) -> list[ServiceOut]:
        return self._list(_SERVICES, self._request("GET", "/api/v1/services"))

    def apply_service(self, spec: dict[str, Any]) -> ServiceOut:
        response = self._request("POST", "/api/v1/services", body=ApplyService(spec=spec))
        return self._model(ServiceOut, response)

    def get_service(self, name: str) -> ServiceOut:
        return self._model(ServiceOut, self._request("GET", f"/api/v1/services/{name}"))

    def upload_artifact(self, path: Path, *, name: str | None = None) -> ArtifactRef:
        """Stream a tarball to the server's artifact store; the server pins it by digest."""
        try:
            handle = path.open("rb")
        except OSError as error:
            raise ArtifactError(
                f"cannot read artifact {path}: {error.strerror}",
                hint="pass the path of a .tar.gz release artifact",
            ) from None
        with handle:
            size = path.stat().st_size
            response = self._request(
                "POST",
                "/api/v1/artifacts",
                params={"name": name or path.name},
                content=iter(lambda: handle.read(_CHUNK), b""),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                },
            )
        return self._model(ArtifactRef, response)

    def download_artifact(self, digest: str, dest: Path) -> Path:
        """Stream ``GET /api/v1/artifacts/{digest}`` into ``dest``."""
        try:
            with self._http.stream("GET", f"/api/v1/artifacts/{digest}") as response:
                if response.is_error:
                    response.read()
                    raise error_from_response(response)
                with dest.open("wb") as out:
                    for chunk in response.iter_bytes(_CHUNK):
                        out.write(chunk)
        except httpx.TransportError as error:
            raise ServerUnreachable(
                f"cannot fetch artifact {digest} from {self.base_url} ({error})",
                hint=UNREACHABLE_HINT,
            ) from None
        return dest

    def list_releases(self, service: str) -> list[Release]:
        return self._list(_RELEASES, self._request("GET", f"/api/v1/services/{service}/releases"))

    def create_release(self, service: str, release: CreateRelease) -> Release:
        response = self._request("POST", f"/api/v1/services/{service}/releases", body=release)
        return self._model(Release, response)

    def get_release(self, service: str, version: str | int) -> Release:
        response = self._request("GET", f"/api/v1/services/{service}/releases/{version}")
        return self._model(Release, response)

    def start_rollout(
        self, service: str, to: str | None = None, note: str = "", *, hotfix: bool = False
    ) -> RolloutOut:
        response = self._request(
            "POST",
            f"/api/v1/services/{service}/rollouts",
            body=StartRollout(to=to, note=note, hotfix=hotfix),
        )
        return self._model(RolloutOut, response)

    # --- config -----------------------------------------------------------------------------

    def push_config(self, service: str, bundle: bytes) -> ConfigPushOut:
        """Upload a config bundle (.tar.gz, see `headway.server.config_bundle`) as a revision."""
        response = self._request(
            "POST",
            f"/api/v1/services/{service}/configs",
            content=iter([bundle]),
            headers={"Content-Type": "application/gzip", "Content-Length": str(len(bundle))},
        )
        return self._model(ConfigPushOut, response)

    def push_config_url(self, service: str, url: str, digest: str) -> ConfigPushOut:
        """Have the server fetch a bundle from ``url``, pinned by ``digest``."""
        response = self._request(
            "POST", f"/api/v1/services/{service}/configs", body=ConfigFromUrl(url=url, digest=digest)
        )
        return self._model(ConfigPushOut, response)

    def list_configs(self, service: str, limit: int | None = None) -> list[ConfigRevision]:
        params: dict[str, str | int] = {"limit": limit} if limit is not None else {}
        response = self._request("GET", f"/api/v1/services/{service}/configs", params=params)
        return self._list(_CONFIGS, response)

    def restore_config(self, service: str) -> ConfigRestoreOut:
        response = self._request("POST", f"/api/v1/services/{service}/config/restore")
        return self._model(ConfigRestoreOut, response)

    def rollback(self, service: str, reason: str = "") -> RolloutOut:
        response = self._request(
            "POST", f"/api/v1/services/{service}/rollback", body=OperatorAction(reason=reason)
        )
        return self._model(RolloutOut, response)

    def list_rollouts(
        self, service: str | None = None, limit: int | None = None
    ) -> list[RolloutOut]:
        params: dict[str, str | int] = {}
        if service:
            params["service"] = service
        if limit is not None:
            params["limit"] = limit
        return self._list(_ROLLOUTS, self._request("GET", "/api/v1/rollouts", params=params))

    def get_rollout(self, rollout_id: str) -> RolloutOut:
        return self._model(RolloutOut, self._request("GET", f"/api/v1/rollouts/{rollout_id}"))

    def rollout_action(self, rollout_id: str, action: str, reason: str = "") -> RolloutOut:
        if action not in ROLLOUT_ACTIONS:
            raise SpecError(
                f"unknown rollout action {action!r}",
                hint=f"use one of {', '.join(ROLLOUT_ACTIONS)}",
            )
        response = self._request(
            "POST", f"/api/v1/rollouts/{rollout_id}/{action}", body=OperatorAction(reason=reason)
        )
        return self._model(RolloutOut, response)

    def pause(self, rollout_id: str, reason: str = "") -> RolloutOut:
        return self.rollout_action(rollout_id, "pause", reason)

    def resume(self, rollout_id: str, reason: str = "") -> RolloutOut:
        return self.rollout_action(rollout_id, "resume", reason)

    def abort(self, rollout_id: str, reason: str = "") -> RolloutOut:
        return self.rollout_action(rollout_id, "abort", reason)

    def promote(self, rollout_id: str, reason: str = "") -> RolloutOut:
        return self.rollout_action(rollout_id, "promote", reason)

    def list_hosts(self, service: str | None = None) -> list[HostView]:
        params: dict[str, str | int] = {"service": service} if service else {}
        return self._list(_HOSTS, self._request("GET", "/api/v1/hosts", params=params))

    def list_events(
        self,
        *,
        service: str | None = None,
        rollout: str | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Events oldest first; ``after`` is the id of the last event already seen."""
        params: dict[str, str | int] = {}
        if service:
            params["service"] = service
        if rollout:
            params["rollout"] = rollout
        if after is not None:
            params["after"] = after
        if limit is not None:
            params["limit"] = limit
        return self._list(_EVENTS, self._request("GET", "/api/v1/events", params=params))

    def iter_events(
        self,
        *,
        service: str | None = None,
        rollout: str | None = None,
        after: int = 0,
        page: int = 500,
    ) -> Iterator[Event]:
        """Every event after ``after``, paging through the log oldest first."""
        cursor = after
        while True:
            batch = self.list_events(service=service, rollout=rollout, after=cursor, limit=page)
            yield from batch
            if len(batch) < page:
                return
            cursor = batch[-1].id


def _not_understood(response: httpx.Response, error: ValidationError) -> HeadwayError:
    first = error.errors()[0] if error.errors() else None
    where = ".".join(str(p) for p in first["loc"]) if first else ""
    return HeadwayError(
        f"{response.request.method} {response.request.url.path} returned a body this client "
        f"does not understand ({where}: {first['msg'] if first else error})",
        hint="the server and the CLI may be different versions of Headway; upgrade the older one",
    )
