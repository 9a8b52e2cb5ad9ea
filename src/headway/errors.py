"""The one exception tree of Headway.

    HeadwayError                 base; ``hint`` says what to do next
    ├── SpecError                bad user input (YAML, fields, values)      -> HTTP 422, exit 2
    ├── NotFound                 a service, release, rollout or host is missing -> HTTP 404, exit 2
    ├── Conflict                 the request clashes with current state     -> HTTP 409, exit 2
    ├── Unauthorized             missing or wrong token                     -> HTTP 401, exit 2
    ├── ArtifactError            digest mismatch, corrupt or oversized artifact -> HTTP 422
    ├── IllegalTransition        the engine got an event its phase forbids  (a bug or a race)
    ├── StoreUnavailable         the database cannot be reached             -> HTTP 503
    ├── Fenced                   a deposed leader's write, refused by the store -> HTTP 503
    ├── NoLeader                 no leader took a forwarded request in time -> HTTP 503
    └── ServerUnreachable        the CLI cannot reach the server            -> exit 2

Errors are mapped at the edges: the API turns them into problem responses
(``{"error": kind, "message": ..., "hint": ...}``), the CLI into a red line
plus the hint.
"""

from __future__ import annotations


class HeadwayError(Exception):
    """Base of every error Headway raises on purpose."""

    status_code = 500
    kind = "internal"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class SpecError(HeadwayError):
    status_code = 422
    kind = "invalid"


class NotFound(HeadwayError):
    status_code = 404
    kind = "not_found"


class Conflict(HeadwayError):
    status_code = 409
    kind = "conflict"


class Unauthorized(HeadwayError):
    status_code = 401
    kind = "unauthorized"


class ArtifactError(HeadwayError):
    status_code = 422
    kind = "bad_artifact"


class IllegalTransition(HeadwayError):
    status_code = 409
    kind = "illegal_transition"


class StoreUnavailable(HeadwayError):
    status_code = 503
    kind = "store_unavailable"


class Fenced(HeadwayError):
    """The store refused a write: the lease's fencing token moved on (another server leads)."""

    status_code = 503
    kind = "fenced"


class NoLeader(HeadwayError):
    """A server that does not lead could not get a request handled by the leader in time."""

    status_code = 503
    kind = "no_leader"


class ServerUnreachable(HeadwayError):
    status_code = 503
    kind = "server_unreachable"
