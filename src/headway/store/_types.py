"""Values handed to the store that have no home in `headway.domain`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NewEvent:
    """An audit-log line to append; the store assigns its id."""

    ts: float
    kind: str
    message: str
    service: str = ""
    rollout_id: str = ""
    host: str = ""
    actor: str = ""


@dataclass(frozen=True)
class OutboxItem:
    """An engine action persisted with the state that produced it, executed after commit.

    ``action_id`` is unique: adding an item whose id is already stored is a no-op.
    """

    action_id: str
    rollout_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HostObservation:
    """One agent report for `Tx.record_observations`: what the host runs and how it is."""

    name: str
    release: int | None
    generation: int
    health: str  # a `headway.domain.models.Health` value
    detail: str = ""
    config_applied: str = ""  # the agent's config hashes (drift), "" without config
    config_on_disk: str = ""
