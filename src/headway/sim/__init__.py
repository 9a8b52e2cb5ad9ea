"""Deterministic simulation of Headway (FoundationDB / TigerBeetle style), and simulated agents.

    result = simulate(seed=7, hosts=50, mode="runner")   # or mode="engine", up to 100,000 hosts
    result.log_hash                                       # the same for the same arguments, always

`simulate` runs one rollout from v1 to v2 through the real engine (``engine``
mode) or the real runner over a real store (``runner`` mode), in a simulated
world (`headway.sim.world`) whose every random choice comes from
``random.Random(seed)``. The invariants I1-I5 are checked after every step
(`headway.sim.monitor`) and liveness at the end; a broken one raises
`SimulationFailure` naming the seed, the command that replays it, and the
last lines of the event log. `headway.sim.agents` holds the simulated
agents that speak the real protocol over real sockets (for `bench/scale.py`).
"""

from __future__ import annotations

import random

from headway.sim.monitor import InvariantBroken, diagnose
from headway.sim.scenario import MODES, PROFILES, Scenario, draw
from headway.sim.wire import Plane
from headway.sim.world import FROM_RELEASE, TO_RELEASE, SimResult, SimulationFailure, World

__all__ = ["MODES", "PROFILES", "Scenario", "SimResult", "SimulationFailure", "replay_command", "simulate"]


def replay_command(seed: int, hosts: int, mode: str, profile: str) -> str:
    return f"python bench/simulate.py --seed {seed} --hosts {hosts} --mode {mode} --profile {profile}"


def simulate(seed: int, hosts: int, mode: str = "engine", profile: str = "t6", tail: int = 60) -> SimResult:
    """Run one seeded rollout; `SimulationFailure` if an invariant breaks or the code under test raises."""
    rng = random.Random(seed)
    scenario = draw(seed, hosts, mode, profile, rng)
    world = World(scenario, rng, tail=tail)
    names = list(world.agents)
    # imported here: `headway.sim.agents` (for bench/scale.py) should not pull in the server
    from headway.sim.engine_plane import EnginePlane
    from headway.sim.runner_plane import RunnerPlane

    plane: Plane
    if mode == "engine":
        plane = EnginePlane(world, scenario, names, FROM_RELEASE, TO_RELEASE)
    else:
        plane = RunnerPlane(world, scenario, names, FROM_RELEASE, TO_RELEASE)
    try:
        return world.run(plane)
    except Exception as error:
        what = "invariant broken" if isinstance(error, InvariantBroken) else f"{type(error).__name__} raised"
        lines = "\n".join(f"    {line}" for line in world.tail)
        diagnosis = diagnose(plane.rollout)
        raise SimulationFailure(
            f"simulation seed {seed} ({mode} mode, {hosts} hosts, profile {profile}): {what}: {error}\n"
            + (f"  diagnosis: {diagnosis}\n" if diagnosis else "")
            + f"  replay:   {replay_command(seed, hosts, mode, profile)}\n"
            + f"  at t={world.now - world.start:.3f}s simulated, after {world.events} events\n"
            + f"  scenario: {scenario.describe()}\n"
            + f"  last {len(world.tail)} log lines:\n{lines}",
            diagnosis,
        ) from error
    finally:
        plane.close()
