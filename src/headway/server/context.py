"""What the request handlers share: settings, store, runner, hub, artifacts, tokens."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from headway.clock import Clock
from headway.server.artifacts import ArtifactFiles
from headway.server.hub import AgentHub
from headway.server.leadership import Leadership
from headway.server.runner import Runner
from headway.server.settings import ServerSettings, Tokens
from headway.store import Store


@dataclass
class ServerContext:
    settings: ServerSettings
    store: Store
    runner: Runner
    hub: AgentHub
    artifacts: ArtifactFiles
    tokens: Tokens
    clock: Clock
    leadership: Leadership


def context_of(conn: HTTPConnection) -> ServerContext:
    ctx: ServerContext = conn.app.state.headway
    return ctx
