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
    POST /api/v1/services/{name}/configs  raw .tar.gz -> ConfigPushOut (a config revision; 413 over
                                          config.max_bytes, 422 on a bad name or file kind)
    POST /api/v1/services/{name}/configs  ConfigFromUrl (JSON) -> ConfigPushOut (fetched, pinned by digest)
    GET  /api/v1/services/{name}/configs?limit=N   -> list[ConfigRevision], newest first
    GET  /api/v1/configs/{digest}                  -> the bundle's bytes (operator or agent token)
    POST /api/v1/services/{name}/config/restore    -> ConfigRestoreOut (drifted hosts re-apply)
    GET  /api/v1/cluster                            -> ClusterOut (which server leads, the lease)
    WS   /agent/v1/channel                          the agent protocol (headway.protocol)

Errors are ``Problem`` bodies with the matching status (401, 404, 409, 413, 422, 503).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from headway.domain.models import ConfigRevision, HostView, Release, RolloutSummary


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

    ``from_version`` copies that release's artifact, params and config, then applies
    ``params`` on top (an empty value removes a key). ``config`` sets the release's
    config revision (an id, digest or git commit; ``none`` for no config); without it
    the release keeps the config of ``from_version``, or with ``artifact`` the config
    of the current release. ``config`` alone makes a config-only release: the current
    release's artifact and params with the new config.
    """

    artifact: str | None = Field(default=None, description="sha256:... of an uploaded artifact")
    from_version: str | None = Field(default=None, description="v3 or 3")
    params: dict[str, str] = Field(default_factory=dict)
    config: str | None = Field(default=None, description="config revision id, digest, or 'none'")
    note: str = ""


class StartRollout(_Body):
    to: str | None = Field(default=None, description="target version; default: the newest release")
    note: str = ""
    hotfix: bool = Field(
        default=False, description="bigger batches (25%), 1s healthy time; gates still run"
    )


class ConfigFromUrl(_Body):
    """A config bundle (.tar.gz) to fetch from an HTTP(S) URL, pinned by its digest."""

    url: str = Field(min_length=8, max_length=2048)
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")


class ConfigPushOut(_Body):
    revision: ConfigRevision
    created: bool  # False: the service had these exact files already


class ConfigRestoreOut(_Body):
    service: str
    hosts: list[str] = Field(default_factory=list)  # drifted hosts told to re-apply their release


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
    "ConfigFromUrl",
    "ConfigPushOut",
    "ConfigRestoreOut",
    "ConfigRevision",
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


class LeaseOut(BaseModel):
    holder: str
    about: str
    token: int
    expires_in: float  # seconds; negative: expired that long ago


class ClusterOut(BaseModel):
    server: str  # this server's id
    role: str  # "leader" or "follower"
    database: str  # "sqlite" (one server) or "postgresql" (several may share it)
    lease: LeaseOut | None  # None on SQLite: there is no election
