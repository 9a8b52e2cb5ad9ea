"""Request and response bodies of the REST API, shared by the server and the client.

Routes (all under a bearer token except ``GET /healthz``):

    GET  /healthz                                   liveness, no auth
    GET  /api/v1/services                           -> list[ServiceOut]
    POST /api/v1/services            ApplyService   -> ServiceOut   (create or update; 422 on bad spec)
    GET  /api/v1/services/{name}                    -> ServiceOut
    POST /api/v1/artifacts           raw tarball    -> ArtifactRef  (?name=file.tar.gz; 413 over the limit)
    GET  /api/v1/artifacts/{digest}                 -> the bytes    (agents fetch with their token)
    GET  /api/v1/services/{name}/releases           -> list[Release]
    POST /api/v1/services/{name}/releases CreateRelease -> Release
    GET  /api/v1/services/{name}/releases/{version} -> Release      (version: v3 or 3)
    POST /api/v1/services/{name}/rollouts StartRollout -> RolloutOut (409 if one is active)
    POST /api/v1/services/{name}/rollback OperatorAction -> RolloutOut
    GET  /api/v1/rollouts?service=S&limit=N         -> list[RolloutOut], newest first
    GET  /api/v1/rollouts/{id}                      -> RolloutOut (with hosts)
    POST /api/v1/rollouts/{id}/{pause|resume|abort|promote} OperatorAction -> RolloutOut
    GET  /api/v1/hosts?service=S                    -> list[HostView]
    GET  /api/v1/events?service=S&rollout=ID&after=N&limit=N -> list[Event], oldest first
    WS   /agent/v1/channel                          the agent protocol (headway.protocol)

Errors are ``Problem`` bodies with the matching status (401, 404, 409, 413, 422, 503).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from headway.domain.models import HostView, Release, RolloutSummary


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(_Body):
    error: str
    message: str
    hint: str = ""


class ApplyService(_Body):
    spec: dict[str, Any]


class ServiceOut(_Body):
    name: str
    spec: dict[str, Any]
    current_release: int | None = None
    hosts: int = 0
    hosts_healthy: int = 0
    active_rollout: str | None = None


class CreateRelease(_Body):
    """A new release: from an uploaded artifact digest, or copied from an existing release.

    ``from_version`` copies that release's artifact and params, then applies
    ``params`` on top (an empty value removes a key).
    """

    artifact: str | None = Field(default=None, description="sha256:... of an uploaded artifact")
    from_version: str | None = Field(default=None, description="v3 or 3")
    params: dict[str, str] = Field(default_factory=dict)
    note: str = ""


class StartRollout(_Body):
    to: str | None = Field(default=None, description="target version; default: the newest release")
    note: str = ""


class OperatorAction(_Body):
    reason: str = ""


class HostProgressOut(_Body):
    name: str
    phase: str
    release: int | None = None
    detail: str = ""


class RolloutOut(_Body):
    rollout: RolloutSummary
    hosts: list[HostProgressOut] = Field(default_factory=list)


__all__ = [
    "ApplyService",
    "CreateRelease",
    "HostProgressOut",
    "HostView",
    "OperatorAction",
    "Problem",
    "Release",
    "RolloutOut",
    "RolloutSummary",
    "ServiceOut",
    "StartRollout",
]
