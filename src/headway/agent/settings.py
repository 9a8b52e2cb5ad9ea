"""What the agent is told at start (by ``headway agent`` or ``python -m headway.agent``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from headway.protocol.messages import CHANNEL_PATH


@dataclass(frozen=True)
class AgentSettings:
    server: str = "http://127.0.0.1:7400"
    token: str = ""
    name: str = ""
    address: str = "127.0.0.1"
    labels: dict[str, str] = field(default_factory=dict)
    state_dir: Path = Path("/var/lib/headway-agent")
    heartbeat: float = 15.0

    @property
    def base_url(self) -> str:
        return self.server.rstrip("/")

    @property
    def channel_url(self) -> str:
        """``ws(s)://host:port/agent/v1/channel`` from ``http(s)://host:port``."""
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path}{CHANNEL_PATH}"
