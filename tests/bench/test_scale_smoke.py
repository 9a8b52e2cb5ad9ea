"""Smoke test of bench/scale.py: the benchmark runs end to end on a tiny fleet.

No timing is asserted here: benchmarks are measured with `python bench/scale.py`
and recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "scale.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("headway_bench_scale", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_scale_bench_propagates_rolls_out_and_back_on_20_agents(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench = load_bench()
    result = bench.main(
        ["--agents", "20", "--restart-time", "0.05", "--slow-fraction", "0.1", "--slow-time", "0.3", "--json"]
    )
    assert result.rollout_status == "succeeded"
    assert result.rollback_status == "succeeded"
    assert result.extra_restarts == 0
    assert result.server_peak_rss_mib > 0 and result.server_cpu_s > 0
    # propagation: 2 slow agents of 20, measured apart; the others acknowledged in order
    assert (result.propagation_agents, result.propagation_slow_agents) == (18, 2)
    assert 0 < result.propagation_p50_s <= result.propagation_p99_s <= result.propagation_max_s
    assert result.propagation_slow_max_s >= 0.3
    assert result.propagation_server_s >= result.propagation_slow_max_s
    printed = json.loads(capsys.readouterr().out)
    assert printed["agents"] == 20
    assert printed["rollout_status"] == "succeeded"
    assert set(printed["server_cpu_by_phase_s"]) == {"setup", "install", "propagation", "rollout", "rollback"}


def test_scale_bench_runs_without_the_propagation_phase(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench()
    result = bench.main(["--agents", "10", "--restart-time", "0.05", "--no-propagation", "--json"])
    assert (result.rollout_status, result.rollback_status) == ("succeeded", "succeeded")
    assert result.extra_restarts == 0
    assert result.propagation_agents == 0
    assert set(json.loads(capsys.readouterr().out)["server_cpu_by_phase_s"]) == {
        "setup",
        "install",
        "rollout",
        "rollback",
    }


def test_the_simulators_parser_gives_what_the_protocol_parser_gives() -> None:
    from headway.protocol.messages import Welcome, server_message

    bench = load_bench()
    once = bench.OnceParsed()
    spec = {"name": "web", "run": {"start": ["./app"]}, "health": {"http": {}}}
    artifact = {"digest": "sha256:" + "a" * 64, "size": 1, "url": "/a"}
    frames = [
        json.dumps(
            {
                "type": "desired",
                "generation": g,
                "release": {"number": n, "artifact": artifact, "params": {"K": "v"}},
                "service": spec,
                "serve": serve,
            },
            separators=(",", ":"),
        )
        for g, n, serve in [(1, 2, True), (2, 2, True), (3, 2, False), (4, 3, True), (10**9, 2, True)]
    ]
    frames.append(Welcome(host="h1").model_dump_json())
    for frame in frames + frames:
        assert once.validate_json(frame) == server_message.validate_json(frame)
