"""What the agent is told at start (by ``headway agent`` or ``python -m headway.agent``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from headway.agent.servers import channel_url_for, split_servers


@dataclass(frozen=True)
class AgentSettings:
    # One server URL, or several comma-separated (servers of one PostgreSQL database): the
    # agent connects to the first and moves to the next when its connection fails or is lost.
    server: str = "http://127.0.0.1:7400"
    token: str = ""
    name: str = ""
    address: str = "127.0.0.1"
    labels: dict[str, str] = field(default_factory=dict)
    state_dir: Path = Path("/var/lib/headway-agent")
    heartbeat: float = 15.0

    @property
    def servers(self) -> tuple[str, ...]:
        """Every server's base URL, in the order given (checked by `run_agent`)."""
        return split_servers(self.server) or (self.server.rstrip("/"),)

    @property
    def base_url(self) -> str:
        """The first server's base URL (the only one when a single server is given)."""
        return self.servers[0]

    @property
    def channel_url(self) -> str:
        """``ws(s)://host:port/agent/v1/channel`` of the first server (`base_url`)."""
        return channel_url_for(self.base_url)
