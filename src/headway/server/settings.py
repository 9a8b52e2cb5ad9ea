"""Typed settings of `headway server`, passed explicitly (nothing is read at import time)."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ServerSettings:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 7400
    database_url: str | None = None  # default: SQLite in state_dir/headway.db
    api_token: str | None = None  # default: from env or state_dir/tokens.json
    agent_token: str | None = None
    max_artifact_bytes: int = 1 << 30  # 1 GiB
    max_json_bytes: int = 1 << 20  # 1 MiB
    heartbeat: float = 15.0  # seconds between agent reports when idle
    reconnect_grace: float = 20.0  # after a restart, how long agents have to come back
    lease_ttl: float = 10.0  # PostgreSQL: the leader's lease; a silent leader is replaced after it
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'headway.db').resolve()}"

    @property
    def artifact_dir(self) -> Path:
        return self.state_dir / "artifacts"


@dataclass(frozen=True)
class Tokens:
    api: str
    agent: str


def load_or_create_tokens(settings: ServerSettings) -> Tokens:
    """Tokens from settings, then env (HEADWAY_API_TOKEN, HEADWAY_AGENT_TOKEN), then
    ``state_dir/tokens.json``; created there (mode 0600) on first start."""
    path = settings.state_dir / "tokens.json"
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    api = settings.api_token or os.environ.get("HEADWAY_API_TOKEN") or stored.get("api")
    agent = settings.agent_token or os.environ.get("HEADWAY_AGENT_TOKEN") or stored.get("agent")
    api = api or "hw_api_" + secrets.token_urlsafe(24)
    agent = agent or "hw_agent_" + secrets.token_urlsafe(24)
    if stored.get("api") != api or stored.get("agent") != agent:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"api": api, "agent": agent}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    return Tokens(api=api, agent=agent)
