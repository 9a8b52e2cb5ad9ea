"""`headway demo --bad-release --json`: v3 (30% errors) is caught by the first canary step and
rolled back by Headway itself; the summary has the figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from headway.cli.main import app
from headway.fleet import local

pytestmark = pytest.mark.integration


def test_bad_release_demo_catches_v3_and_rolls_it_back(tmp_path: Path) -> None:
    state_dir = tmp_path / "demo"
    result = CliRunner().invoke(app, [
        "demo", "--bad-release", "--hosts", "2", "--rate", "60", "--state-dir", str(state_dir),
        "--port", "0", "--traffic-port", "0", "--address-prefix", "127.0.61", "--json",
    ])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    summary = json.loads(result.stdout)
    assert summary["ok"] is True and summary["problems"] == [], summary["problems"]

    # v2 passed its verified step (host-01 against host-02) and went on; v3 was stopped at
    # that step and rolled back.
    good, bad = summary["good_rollout"], summary["bad_rollout"]
    assert (good["status"], good["from_release"], good["to_release"]) == ("succeeded", 1, 2)
    assert (bad["status"], bad["from_release"], bad["to_release"]) == ("rolled_back", 2, 3)
    assert summary["status"] == "rolled_back"
    assert summary["reason"].startswith("verification failed at step 2: errors: errors (balancer error rate)")
    assert summary["bad_version"] == "v3" and summary["bad_params"] == {"ERROR_RATE": "0.3"}
    assert summary["first_batch"] == summary["hosts_told_bad_release"] == ["host-01"]
    assert {g["kind"] for g in summary["gates"]} == {"gate.fail"}
    assert [g["message"].split(":")[0] for g in summary["gates"]] == ["errors", "smoke"]
    assert summary["hosts_total"] == summary["hosts_healthy_on_previous"] == 2

    # The figures close the document.
    assert list(summary)[-6:] == [
        "time_to_detect_s", "time_to_rollback_s", "rollback_drain_s", "rollback_after_drain_s",
        "bad_requests", "bad_requests_failed",
    ]
    window = summary["verification_seconds"]
    assert window == 8.0  # 100 canary requests at 60/s over 2 hosts: the 8 s floor
    # detected after the min healthy time (2 s) and one verification window, not later
    assert window < summary["time_to_detect_s"] < window + 6
    assert 0 < summary["rollback_drain_s"] <= summary["time_to_rollback_s"] < 15
    assert summary["rollback_after_drain_s"] == pytest.approx(
        summary["time_to_rollback_s"] - summary["rollback_drain_s"], abs=0.002
    )
    # ~30 requests/s reached the bad host for about the detection time; ~30% of them failed
    assert 100 < summary["bad_requests"] < 900
    assert 0.1 < summary["bad_requests_failed"] / summary["bad_requests"] < 0.55
    # every failed request was one of the bad release's answers
    assert summary["non_2xx"] == summary["bad_requests_failed"]
    assert summary["connection_errors"] == 0
    load = summary["load"]
    assert load["before"]["versions"].keys() == {"v1"}
    assert load["bad"]["versions"].keys() == {"v2", "v3"}
    assert load["after"]["versions"].keys() == {"v2"}

    recorded = local.load_fleet(state_dir)
    assert recorded is not None and not local.is_alive(recorded.server_pid)
    assert local.fleet_down(state_dir).nothing_ran
