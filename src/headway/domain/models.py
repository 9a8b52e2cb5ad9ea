"""Value types shared by the server, the engine's callers, the store and the CLI."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArtifactRef(_Frozen):
    """A tarball pinned by digest. ``url`` is where agents fetch it (relative = server store)."""

    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    size: int = Field(ge=0)
    url: str


class ConfigSourceKind(StrEnum):
    """Where a config revision came from."""

    STORE = "store"  # `headway config push SERVICE DIR` (an upload)
    GIT = "git"  # a commit on the branch the service's config.source.git follows
    URL = "url"  # an HTTP(S) bundle pinned by digest


class ConfigRevisionRef(_Frozen):
    """The config a release carries: a .tar.gz of files pinned by digest (content-addressed)."""

    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    size: int = Field(ge=0)
    revision: str  # the revision's short id (the digest's first 12 hex digits)
    source: ConfigSourceKind = ConfigSourceKind.STORE


class ConfigRevision(_Frozen):
    """One stored config bundle of a service. Its id is its digest's first 12 hex digits, so
    pushing the same files twice gives the same revision."""

    id: str
    service: str
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    size: int = Field(ge=0)
    source: ConfigSourceKind = ConfigSourceKind.STORE
    git_commit: str = ""  # source git: the commit it was made from
    committed_at: float | None = None  # source git: the commit's time (seconds since the epoch)
    origin: str = ""  # source url: where it was fetched; source git: the repository
    files: list[str] = Field(default_factory=list)  # paths inside the bundle, sorted
    created_at: float
    created_by: str = ""

    def ref(self) -> ConfigRevisionRef:
        return ConfigRevisionRef(digest=self.digest, size=self.size, revision=self.id, source=self.source)


class Release(_Frozen):
    """An immutable, numbered revision of a service (``v1``, ``v2``, ...): artifact, config
    revision (optional) and parameters, rolled out and rolled back as one unit."""

    service: str
    number: int = Field(ge=1)
    artifact: ArtifactRef
    params: dict[str, str] = Field(default_factory=dict)
    config: ConfigRevisionRef | None = None
    created_at: float
    created_by: str = ""
    note: str = ""

    @property
    def version(self) -> str:
        return f"v{self.number}"


def parse_version(text: str) -> int:
    """``'v3'`` or ``'3'`` -> 3; a `ValueError` that says how to write it otherwise."""
    raw = text.strip().lower().removeprefix("v")
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"release {text!r} is not a version; write it like v1, v2 or 3")
    return int(raw)


class Health(StrEnum):
    """What an agent observes of its app."""

    UNKNOWN = "unknown"  # nothing observed yet
    STARTING = "starting"  # installing, starting, or health not yet passing
    HEALTHY = "healthy"  # the health check passes
    UNHEALTHY = "unhealthy"  # the health check fails while the app should be up
    FAILED = "failed"  # the agent gave up on this desired release (bad artifact, crash)


class HostView(_Frozen):
    """A host as the server knows it."""

    name: str
    service: str
    address: str
    labels: dict[str, str] = Field(default_factory=dict)
    desired_release: int | None = None
    generation: int = 0
    observed_release: int | None = None
    observed_generation: int = 0
    health: Health = Health.UNKNOWN
    connected: bool = False
    detail: str = ""
    last_seen: float = 0.0
    serve: bool = True  # should it be in load balancing (False while drained); agents answer
    # a polling balancer's GET /ready with it (traffic.balancer readiness)
    # config drift: the hash of the files the agent wrote for its release and of what is on
    # disk now; they differ when someone edited (or removed) a config file by hand
    config_applied: str = ""
    config_on_disk: str = ""
    config_drift: bool = False


class RolloutStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    ROLLING_BACK = "rolling_back"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = {
    RolloutStatus.SUCCEEDED,
    RolloutStatus.FAILED,
    RolloutStatus.ROLLED_BACK,
    RolloutStatus.ABORTED,
}


class RolloutSummary(_Frozen):
    id: str
    service: str
    from_release: int | None
    to_release: int
    strategy: str
    status: RolloutStatus
    reason: str = ""
    step: int = 0
    steps: int = 0
    hosts_total: int = 0
    hosts_done: int = 0
    hosts_failed: int = 0
    created_at: float
    updated_at: float
    created_by: str = ""


class Event(_Frozen):
    """One line of the append-only audit log."""

    id: int
    ts: float
    kind: str
    message: str
    service: str = ""
    rollout_id: str = ""
    host: str = ""
    actor: str = ""
