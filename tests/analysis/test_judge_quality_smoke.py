"""bench/judge_quality.py still runs (a handful of runs; no quality assertions: that is the bench's job)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "judge_quality.py"


def test_the_harness_runs_and_reports_every_scenario() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--runs", "4", "--aa-runs", "4", "--json"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    report = json.loads(done.stdout)
    assert [r["scenario"] for r in report["results"]] == [
        "errors +1 pp", "errors A/A", "latency +10%", "latency A/A"]
    for r in report["results"]:
        assert r["runs"] == 4
        assert abs(r["detected"] + r["passed"] + r["inconclusive"] - 1) < 1e-9
    assert set(report["t7"]) >= {"false_aborts_ok", "errors_power_ok", "latency_power_ok"}
