"""The deterministic simulation (headway.sim): fixed seeds in both modes, determinism, and
proof that its checks catch a broken engine or runner.

Every seed runs a rollout under seeded faults (lost, repeated and late messages,
agent and server restarts, hosts failing health, slow drains, balancer failures,
operator commands) with I1-I5 checked after every step and liveness at the end.
A failure names its seed and the command that replays it:
``python bench/simulate.py --seed S --hosts N --mode M --profile P``.

Two engine problems found by the simulation are open (see docs/benchmarks.md, T6):
a seed that ends stuck in one of them is reported with its diagnosis and counted,
not failed; any other failure fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from headway.engine import progress
from headway.engine.context import Ctx
from headway.sim import SimulationFailure, simulate
from headway.store import Tx

ROOT = Path(__file__).resolve().parents[2]

# Open engine problems the simulation found, by the name `headway.sim.monitor.diagnose` gives
# the stuck rollout. Remove a line once the engine is fixed.
KNOWN_ENGINE_PROBLEMS: tuple[str, ...] = ()


def run_seed(seed: int, hosts: int, mode: str, profile: str) -> str:
    """The rollout's end ('succeeded', 'rolled_back', ...), or 'known: ...' for an open problem."""
    try:
        return simulate(seed, hosts, mode, profile).status
    except SimulationFailure as failure:
        if failure.diagnosis.startswith(KNOWN_ENGINE_PROBLEMS):
            print(f"seed {seed}: known engine problem: {failure.diagnosis}")
            return "known: " + failure.diagnosis
        raise


RUNNER_SEEDS = [(seed, 20 + seed % 4 * 10, "mixed" if seed % 2 else "t6") for seed in range(20)]


@pytest.mark.parametrize(
    ("seed", "hosts", "profile"), RUNNER_SEEDS, ids=[f"seed{s}" for s, _, _ in RUNNER_SEEDS]
)
def test_runner_mode_seed(seed: int, hosts: int, profile: str) -> None:
    status = run_seed(seed, hosts, "runner", profile)
    assert status in ("succeeded", "rolled_back", "aborted", "failed") or status.startswith("known")


@pytest.mark.parametrize("seed", range(100, 110))
def test_engine_mode_seed(seed: int) -> None:
    status = run_seed(seed, 300 if seed % 2 else 120, "engine", "mixed" if seed % 3 else "t6")
    assert status in ("succeeded", "rolled_back", "aborted", "failed") or status.startswith("known")


def test_the_seeds_reach_every_kind_of_end() -> None:
    """The faults are strong enough to roll back, and mild enough to let rollouts succeed."""
    ends = {run_seed(seed, 40, "engine", "mixed") for seed in range(30)}
    assert {"succeeded", "rolled_back"} <= ends


def test_the_same_seed_gives_the_same_event_log() -> None:
    for mode, hosts in (("engine", 400), ("runner", 30)):
        first = simulate(3, hosts, mode, "mixed")
        second = simulate(3, hosts, mode, "mixed")
        assert first.log_hash == second.log_hash, mode
        assert (first.events, first.log_lines, first.status) == (
            second.events,
            second.log_lines,
            second.status,
        )
        assert simulate(4, hosts, mode, "mixed").log_hash != first.log_hash


def test_the_log_hash_does_not_depend_on_the_interpreters_hash_seed() -> None:
    """No set or dict order of strings leaks into the run: two processes with different
    PYTHONHASHSEED values print the hash this process computes."""
    code = "from headway.sim import simulate; print(simulate(5, 200, 'engine', 'mixed').log_hash)"
    expected = simulate(5, 200, "engine", "mixed").log_hash
    for hash_seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == expected


def test_bench_script_replays_a_seed_and_prints_its_hash() -> None:
    expected = simulate(7, 60, "engine", "t6").log_hash
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "simulate.py"), "--hosts", "60", "--seed", "7", "--twice"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.count(f"log sha256 {expected}") == 2


# ------------------------------------------------------ the checks catch bugs


def test_an_engine_that_ignores_the_budget_breaks_i1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "_room_for_one_more", lambda ctx: True)
    with pytest.raises(SimulationFailure) as failure:
        simulate(1, 100, "engine", "t6")
    text = str(failure.value)
    assert "I1: " in text
    assert "replay:   python bench/simulate.py --seed 1 --hosts 100 --mode engine --profile t6" in text
    assert "set-desired" in text or "drain" in text  # the last lines of the event log


def test_an_engine_that_forgets_an_audit_record_breaks_i4(monkeypatch: pytest.MonkeyPatch) -> None:
    record = Ctx.record

    def forgetful(self: Ctx, kind: str, message: str, host: str = "") -> None:
        if kind != "host.updating":
            record(self, kind, message, host)

    monkeypatch.setattr(Ctx, "record", forgetful)
    with pytest.raises(SimulationFailure, match=r"I4: SetDesired for h\d+ without its audit record"):
        simulate(2, 50, "engine", "mixed")


def test_a_store_that_drops_audit_events_breaks_i4_in_runner_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    append = Tx.append_events

    def lossy(self: Tx, new: list[object]) -> None:
        append(self, [e for e in new if getattr(e, "kind", "") != "host.done"])  # type: ignore[misc]

    monkeypatch.setattr(Tx, "append_events", lossy)
    with pytest.raises(SimulationFailure, match="I4: the audit log does not hold the engine's decisions"):
        simulate(2, 20, "runner", "t6")


def test_an_engine_that_sends_a_host_twice_breaks_i3(monkeypatch: pytest.MonkeyPatch) -> None:
    send = progress.send

    def twice(ctx: Ctx, host: progress.HostTrack, release: int, phase: progress.HostPhase) -> None:
        send(ctx, host, release, phase)
        if host.name.endswith("7"):
            send(ctx, host, release, phase)

    monkeypatch.setattr(progress, "send", twice)
    with pytest.raises(SimulationFailure, match="I3: "):
        simulate(3, 40, "engine", "t6")


# -------------------------------------------------------------------- many


@pytest.mark.slow
def test_many_seeds() -> None:
    """Hundreds of seeds in engine mode, dozens through the runner, and a 5,000-host canary."""
    known = 0
    ends: dict[str, int] = {}
    cases = [(seed, 60, "engine", "mixed" if seed % 2 else "t6") for seed in range(1000, 1300)]
    cases += [(seed, 25, "runner", "mixed" if seed % 2 else "t6") for seed in range(2000, 2040)]
    cases += [(3000, 5000, "engine", "t6")]
    for seed, hosts, mode, profile in cases:
        status = run_seed(seed, hosts, mode, profile)
        known += status.startswith("known")
        ends[status.split(":")[0]] = ends.get(status.split(":")[0], 0) + 1
    print(f"{len(cases)} seeds: {ends}")
    assert known < len(cases) // 10, "the open engine problems are hit far more often than before"
    assert ends.get("succeeded", 0) > len(cases) // 3
