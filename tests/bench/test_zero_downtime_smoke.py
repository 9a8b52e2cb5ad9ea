"""Smoke test of bench/zero_downtime.py: a rolling upgrade of a tiny fleet under load.

No timing or latency is asserted here (the benchmark's figures are measured with
`python bench/zero_downtime.py` and recorded in docs/benchmarks.md). What is asserted
is behaviour: no request fails while the fleet is upgraded behind HAProxy, both
releases answered during the rollout, only the new one after it, and the fleet is gone.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from headway.fleet import local

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "zero_downtime.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("headway_bench_zero_downtime", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_rolling_upgrade_under_open_loop_load_fails_no_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench()
    results = bench.main(
        [
            "--hosts", "3", "--rate", "20", "--kinds", "rolling", "--runs", "1",
            "--before", "2", "--after", "2", "--slow-ms", "500-1500",
            "--address-prefix", "127.0.52", "--state-dir", str(tmp_path / "zd"), "--keep", "--json",
        ]
    )
    assert len(results) == 1
    result = results[0]
    assert (result.kind, result.status) == ("rolling", "succeeded"), result.problems
    assert result.problems == []

    total = result.total
    assert total.sent >= 20 * 8  # before + the rollout + after, at 20 req/s
    assert (total.non_2xx, total.connection_errors) == (0, 0), total.errors
    assert set(result.load["before"].versions) == {"v1"}
    assert set(result.load["during"].versions) == {"v1", "v2"}
    assert set(result.load["after"].versions) == {"v2"}
    assert sum(b["failed"] for b in result.timeline) == 0
    assert result.haproxy_logged == 0  # HAProxy had no request to retry or redispatch

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["kind"] for line in lines] == ["rolling", "medians"]
    assert (lines[0]["failed"], lines[0]["versions_during"]) == (0, ["v1", "v2"])
    assert lines[1]["medians"]["rolling"]["failed_total"] == 0

    # Every process of the fleet is stopped.
    fleet = local.load_fleet(tmp_path / "zd" / "rolling-1")
    assert fleet is not None
    assert not local.is_alive(fleet.server_pid)
    assert not local.is_alive(fleet.haproxy_pid)
    assert not any(local.is_alive(h.pid) for h in fleet.hosts)
    apps = [json.loads((h.state_dir / "app.json").read_text())["pid"] for h in fleet.hosts]
    assert len(apps) == 3 and not any(local.is_alive(pid) for pid in apps)
    assert local.fleet_down(fleet.state_dir).nothing_ran
