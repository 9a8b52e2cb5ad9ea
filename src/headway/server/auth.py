"""Bearer tokens: the API token for operators and the CLI, the agent token for agents."""

from __future__ import annotations

import hmac
import logging
from enum import StrEnum

from starlette.requests import HTTPConnection

from headway.errors import Unauthorized
from headway.server.context import context_of

log = logging.getLogger("headway.auth")


class Role(StrEnum):
    OPERATOR = "operator"
    AGENT = "agent"


def bearer(conn: HTTPConnection) -> str:
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def role_of(conn: HTTPConnection) -> Role | None:
    token = bearer(conn)
    if not token:
        return None
    tokens = context_of(conn).tokens
    if hmac.compare_digest(token.encode(), tokens.api.encode()):
        return Role.OPERATOR
    if hmac.compare_digest(token.encode(), tokens.agent.encode()):
        return Role.AGENT
    return None


def require(conn: HTTPConnection, *allowed: Role) -> Role:
    role = role_of(conn)
    if role is None or role not in allowed:
        client = conn.client.host if conn.client else "?"
        log.warning(
            "refused %s %s from %s: bad or missing token",
            conn.scope.get("method", "WS"),
            conn.url.path,
            client,
        )
        raise Unauthorized(
            "missing or invalid token",
            hint="pass --token or set HEADWAY_TOKEN (the server's tokens.json has it)",
        )
    return role
