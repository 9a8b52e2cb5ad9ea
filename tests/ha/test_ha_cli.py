"""`headway cluster` and `headway server`'s options, against real servers."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from typer.testing import CliRunner

from headway.cli.main import app
from headway.testing.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def test_cluster_names_the_leader_on_every_server(cluster: Callable[..., Cluster]) -> None:
    c = cluster(2, lease_ttl=3.0)
    leader = c.leader()
    runner = CliRunner()
    token = leader.tokens["api"]
    roles = {}
    for server in c.servers:
        result = runner.invoke(app, ["cluster", "--server", server.url, "--token", token, "--json"])
        assert result.exit_code == 0, result.output
        body = json.loads(result.output)
        roles[server.url] = body["role"]
        assert body["database"] == "postgresql"
        assert body["lease"]["token"] >= 1
        assert 0 < body["lease"]["expires_in"] <= 3.0
        text = runner.invoke(app, ["cluster", "--server", server.url, "--token", token])
        assert "leader: 127.0.0.1:" in text.output
    assert roles == {s.url: ("leader" if s is leader else "follower") for s in c.servers}


def test_a_grace_shorter_than_the_heartbeat_is_refused_with_a_hint() -> None:
    result = CliRunner().invoke(
        app, ["server", "--state-dir", "/nonexistent", "--heartbeat", "15", "--reconnect-grace", "10"]
    )
    assert result.exit_code == 2
    assert "--reconnect-grace 10 is not above --heartbeat 15" in result.output
