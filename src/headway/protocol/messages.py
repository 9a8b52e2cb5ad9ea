"""Messages between the server and its agents (protocol version 1).

One WebSocket per agent at ``/agent/v1/channel``, authenticated with
``Authorization: Bearer <agent token>``; every frame is one JSON object
with a ``type``. The exchange is level-triggered, like a Kubernetes
controller: the server says what a host *should* run (release and
generation), the agent makes it so and reports what it *observes*. A
reconnecting agent sends ``hello`` with its observation and gets the
current ``desired`` at once, so it never converges to a stale target.

    agent                                   server
      | -- hello(host, labels, observed) -->  |
      | <-- desired(release, generation, ---  |   (now, and on every change)
      |             serve)                    |
      | -- report(observed) ---------------->  |   (on every change, and every
      |                                        |    heartbeat interval)
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from headway.domain.models import ArtifactRef, Health
from headway.domain.spec import ServiceSpec

PROTOCOL_VERSION = 1
CHANNEL_PATH = "/agent/v1/channel"


class _Message(BaseModel):
    """Agent -> server messages: strict, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _ServerMessage(BaseModel):
    """Server -> agent messages: unknown fields ignored, so an older agent can read a newer
    server's messages (forward compatibility); the fields it knows are still validated."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class Observation(_Message):
    """What an agent sees on its host right now."""

    release: int | None = None  # release number running (None: nothing installed)
    generation: int = 0  # generation of the desired state it last converged to
    health: Health = Health.UNKNOWN
    detail: str = ""  # human-readable: why FAILED/UNHEALTHY, what it is doing
    # config drift: the hash of the config files the agent wrote when it applied its
    # release, and the hash of what is on disk now ("" when the release has no config)
    config_applied: str = ""
    config_on_disk: str = ""


class Hello(_Message):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    host: str
    address: str
    labels: dict[str, str] = Field(default_factory=dict)
    observed: Observation = Field(default_factory=Observation)


class Report(_Message):
    type: Literal["report"] = "report"
    observed: Observation


class ConfigBundle(_ServerMessage):
    """A release's configuration: a .tar.gz of files pinned by digest (content-addressed).

    The agent fetches it from ``url`` (relative: the server), verifies the digest,
    writes the files under the host's config directory (no absolute paths, no '..',
    no links out), fills per-host placeholders, runs the service's validation
    command and activates it atomically, keeping the previous revision.
    """

    digest: str
    size: int
    url: str
    revision: str = ""  # a short id for humans: git commit or store revision


class DesiredRelease(_ServerMessage):
    """Everything an agent needs to install and run one release."""

    number: int
    artifact: ArtifactRef
    params: dict[str, str] = Field(default_factory=dict)
    config: ConfigBundle | None = None


class Desired(_ServerMessage):
    type: Literal["desired"] = "desired"
    generation: int
    release: DesiredRelease | None  # None: nothing to run yet
    service: ServiceSpec | None
    # Should the host be in load balancing? Not part of the generation: it flips on its own
    # (drain, admit) and the agent follows it without touching the app; with a readiness
    # balancer (traffic.balancer readiness) it decides what the agent's GET /ready answers.
    serve: bool = True


class Welcome(_ServerMessage):
    type: Literal["welcome"] = "welcome"
    protocol: int = PROTOCOL_VERSION
    host: str
    heartbeat: float = 15.0  # seconds between reports when nothing changes


class ErrorMessage(_ServerMessage):
    type: Literal["error"] = "error"
    message: str


AgentMessage = Annotated[Hello | Report, Field(discriminator="type")]
ServerMessage = Annotated[Desired | Welcome | ErrorMessage, Field(discriminator="type")]

agent_message: TypeAdapter[Hello | Report] = TypeAdapter(AgentMessage)
server_message: TypeAdapter[Desired | Welcome | ErrorMessage] = TypeAdapter(ServerMessage)
