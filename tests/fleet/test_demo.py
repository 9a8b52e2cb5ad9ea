"""`headway demo`: a fresh fleet behind HAProxy, live traffic, a canary to v2, the figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from headway.fleet import local

from .conftest import run_json

pytestmark = pytest.mark.integration


def test_canary_demo_under_live_traffic_fails_no_request(tmp_path: Path) -> None:
    state_dir = tmp_path / "demo"
    summary = run_json(
        "demo", "--strategy", "canary", "--hosts", "3", "--rate", "30",
        "--state-dir", str(state_dir), "--port", "0", "--traffic-port", "0",
        "--address-prefix", "127.0.18",
    )
    assert summary["ok"] is True, summary["problems"]
    assert summary["problems"] == []
    assert (summary["strategy"], summary["status"]) == ("canary", "succeeded")
    assert (summary["from_release"], summary["to_release"]) == (1, 2)
    assert summary["hosts_total"] == summary["hosts_healthy_on_target"] == 3
    assert summary["traffic"].startswith("http://127.0.0.1:")

    # The zero-downtime figures close the document.
    assert list(summary)[-8:] == [
        "requests", "non_2xx", "connection_errors", "p50_before_ms", "p99_before_ms",
        "p50_during_ms", "p99_during_ms", "versions_seen",
    ]
    assert (summary["non_2xx"], summary["connection_errors"]) == (0, 0)
    load = summary["load"]
    assert summary["requests"] == load["total"]["sent"] > 30 * 20
    assert load["before"]["sent"] + load["during"]["sent"] + load["after"]["sent"] == summary["requests"]
    assert load["before"]["versions"].keys() == {"v1"}
    assert load["during"]["versions"].keys() == {"v1", "v2"}
    assert load["after"]["versions"].keys() == {"v2"}
    assert summary["versions_seen"] == ["v1", "v2"]
    for window in ("before", "during"):
        assert load[window]["p50_ms"] is not None and load[window]["p99_ms"] is not None
        assert load[window]["max_lag_ms"] < 500, "the generator fell behind its schedule"
    assert summary["p50_during_ms"] == load["during"]["p50_ms"]
    # The canary grew in steps: 1 host, then 2, then 3, with pauses between.
    assert summary["duration_seconds"] > 10
    assert summary["timeline"] and sum(b["failed"] for b in summary["timeline"]) == 0

    # The fleet is gone afterwards (no --stay).
    recorded = local.load_fleet(state_dir)
    assert recorded is not None
    assert not local.is_alive(recorded.server_pid)
    assert not local.is_alive(recorded.haproxy_pid)
    assert not any(local.is_alive(h.pid) for h in recorded.hosts)
    assert local.fleet_down(state_dir).nothing_ran
