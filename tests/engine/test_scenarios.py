"""Runs every story in tests/engine/scenarios/*.txt (see scenario.py for the commands)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .scenario import ScenarioError, run_scenario

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.txt"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path) -> None:
    run_scenario(path)


def test_there_are_scenarios() -> None:
    assert len(SCENARIOS) >= 10


def test_a_wrong_expectation_names_its_line_and_the_actions_so_far(tmp_path: Path) -> None:
    script = tmp_path / "wrong.txt"
    script.write_text(
        "fleet hosts=2 release=1\n"
        "start to=2 batch=1 min_healthy=0s deadline=60s\n"
        "expect setdesired h0=2\n"
        "report h0 healthy\n"
        "expect setdesired h0=2\n"
    )
    with pytest.raises(ScenarioError) as failure:
        run_scenario(script)
    text = str(failure.value)
    assert text.startswith("wrong.txt:5: expect setdesired h0=2")
    assert "SetDesired sent: h1=2; expected h0=2" in text
    assert "SetDesired h1=v2 g2" in text  # the transcript


def test_an_unstated_host_change_fails_the_script(tmp_path: Path) -> None:
    script = tmp_path / "unstated.txt"
    script.write_text(
        "fleet hosts=2 release=1\nstart to=2 batch=1 min_healthy=0s deadline=60s\nadvance 1s\n"
    )
    with pytest.raises(ScenarioError, match=r"unstated.txt:3: advance 1s"):
        run_scenario(script)


def test_an_unstated_balancer_call_fails_the_script(tmp_path: Path) -> None:
    script = tmp_path / "drain.txt"
    script.write_text(
        "fleet hosts=2 release=1\n"
        "start to=2 batch=1 min_healthy=0s deadline=60s traffic=on\n"
        "answer h0 drain ok\n"
    )
    unstated = r"drain.txt:3: answer h0 drain ok\n.*Drain h0 .*; state them with `expect drain`"
    with pytest.raises(ScenarioError, match=unstated):
        run_scenario(script)


def test_answering_a_call_nobody_made_is_a_script_error(tmp_path: Path) -> None:
    script = tmp_path / "nothing.txt"
    script.write_text(
        "fleet hosts=2 release=1\n"
        "start to=2 batch=1 min_healthy=0s deadline=60s traffic=on\n"
        "expect drain h0\n"
        "answer h0 admit ok\n"
    )
    refused = r"nothing.txt:4: answer h0 admit ok\n  h0 has no admit waiting at the balancer"
    with pytest.raises(ScenarioError, match=refused):
        run_scenario(script)
