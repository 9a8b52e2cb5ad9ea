"""Smoke test of bench/scale.py with two servers on the real PostgreSQL: it runs end to end.

No timing is asserted here: benchmarks are measured with `python bench/scale.py`
and recorded in docs/benchmarks.md ("Several servers on PostgreSQL").
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "scale.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("headway_bench_scale_cluster", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_two_servers_share_the_agents_and_the_work(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench()
    result = bench.main(
        [
            *("--agents", "12", "--restart-time", "0.05", "--slow-fraction", "0.1", "--slow-time", "0.3"),
            *("--database", "postgresql", "--servers", "2", "--json"),
        ]
    )
    assert (result.rollout_status, result.rollback_status) == ("succeeded", "succeeded")
    assert result.extra_restarts == 0 and result.repeated_desired == 0
    assert (result.database, result.servers) == ("postgresql", 2)
    assert sorted(s.role for s in result.per_server) == ["follower", "leader"]
    assert [s.agents for s in result.per_server] == [6, 6]
    for server in result.per_server:
        assert server.cpu_s > 0 and server.peak_rss_mib > 0
        assert 0 < server.propagation_p50_s <= server.propagation_p99_s
    assert result.server_cpu_s == pytest.approx(sum(s.cpu_s for s in result.per_server))
    assert result.database_cpu_s > 0  # the PostgreSQL sessions of both servers were found
    assert result.server_log_warnings == 0, result.server_log_lines
    printed = json.loads(capsys.readouterr().out)
    assert len(printed["per_server"]) == 2
    phases = {"setup", "install", "propagation", "rollout", "rollback"}
    assert set(printed["database_cpu_by_phase_s"]) == phases


def test_several_servers_need_postgresql() -> None:
    bench = load_bench()
    with pytest.raises(SystemExit):
        bench.parse_args(["--servers", "2"])
