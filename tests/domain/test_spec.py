"""The service spec refuses bad input with a message that names the field and the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from headway.domain.durations import Budget, parse_duration
from headway.domain.models import parse_version
from headway.domain.spec import load_service_yaml
from headway.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]
GOOD = """
name: web
run: {start: [python3, app.py]}
health: {http: {path: /healthz}}
"""


def test_example_and_reference_specs_are_valid() -> None:
    assert load_service_yaml((ROOT / "examples/web.yaml").read_text()).name == "web"
    reference = (ROOT / "docs/spec.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", reference, re.S)
    assert block is not None
    spec = load_service_yaml(block.group(1))
    assert spec.strategy.batch_size == Budget(25, True)


def test_defaults() -> None:
    spec = load_service_yaml(GOOD)
    assert spec.selector == {"service": "web"}
    assert spec.strategy.unavailable_budget == spec.strategy.batch_size
    assert spec.strategy.min_healthy_time == 5.0


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ("colour: blue", "colour: unknown field"),
        ("port: eighty", "port:"),
        ("strategy: {min_healthy_time: -5s}", "negative"),
        ("strategy: {batch_size: 120%}", "over 100%"),
        ("strategy: {max_unavailable: 0}", "max_unavailable is 0"),
        ("strategy: {batch_size: 0}", "batch_size is 0"),
        ("strategy: {progress_deadline: 1s, min_healthy_time: 5s}", "must be longer"),
        ("strategy: {failure_budget: -1}", "failure_budget"),
        ("strategy: {type: yolo}", "strategy.type"),
        ("drain_timeout: soon", "not understood"),
    ],
)
def test_bad_specs_are_refused_with_the_field_named(patch: str, expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_service_yaml(GOOD + patch + "\n")
    assert expected in caught.value.message


def test_malformed_yaml_names_the_line() -> None:
    with pytest.raises(SpecError, match="line 4"):
        load_service_yaml("name: web\nrun:\n  start: [a\n  b: c\n")


def test_non_mapping_and_bad_names() -> None:
    with pytest.raises(SpecError, match="mapping"):
        load_service_yaml("- a\n- b\n")
    with pytest.raises(SpecError, match="lowercase"):
        load_service_yaml(GOOD.replace("name: web", "name: ../etc"))
    with pytest.raises(SpecError, match="exactly one"):
        load_service_yaml(GOOD.replace("health: {http: {path: /healthz}}", "health: {}"))


def test_commands_executor_needs_stop() -> None:
    with pytest.raises(SpecError, match="stop"):
        load_service_yaml(
            GOOD.replace("run: {start: [python3, app.py]}", "run: {executor: commands, start: [x]}")
        )


def test_durations_budgets_versions() -> None:
    assert parse_duration("1.5h") == 5400
    assert parse_duration("250ms") == 0.25
    with pytest.raises(ValueError):
        parse_duration(True)
    assert Budget.parse("25%").resolve(10, round_up=True) == 3
    assert Budget.parse("25%").resolve(10, round_up=False) == 2
    assert parse_version("v12") == 12
    with pytest.raises(ValueError, match="v1, v2"):
        parse_version("latest")


def test_durations_round_trip_through_the_stored_form() -> None:
    from headway.domain.spec import format_duration

    for seconds in (0.0, 0.00001, 0.25, 2.0, 90.5, 3600.0):
        assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
    spec = load_service_yaml(GOOD + "strategy: {min_healthy_time: 0.00001}\n")
    again = load_service_yaml(__import__("yaml").safe_dump(spec.model_dump(mode="json")))
    assert again == spec
