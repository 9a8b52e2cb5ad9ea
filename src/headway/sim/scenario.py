"""What one simulated run does: the fleet, the service spec and the faults, all drawn from the seed.

A run is fully named by ``(seed, hosts, mode, profile)``: `draw` takes every
choice from the run's one `random.Random`, so the bench command printed on a
failure replays it exactly.

Profiles:

- ``t6``: the canary of target T6: steps 1%, 10%, 50%, 100% with a balancer in
  front (drain before, admit after) and verification after each step; the
  policy and the faults vary with the seed.
- ``mixed``: the strategy varies too (rolling or canary, with or without a
  balancer, verification and a promote pause), and the faults are harsher.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from headway.domain.spec import ServiceSpec, parse_service_spec

PROFILES = ("t6", "mixed")
MODES = ("engine", "runner")


@dataclass(frozen=True)
class Faults:
    """Fault rates. Per message: ``loss``, ``duplicate``, ``late``, ``link_break``.
    Per host and simulated hour: ``agent_restarts``, ``flaps``."""

    loss: float = 0.0  # a report to the server is lost (the next heartbeat repeats it)
    duplicate: float = 0.0  # a message is delivered twice
    late: float = 0.0  # a message (and those behind it on its connection) is delayed
    late_max: float = 5.0
    link_break: float = 0.0  # a push to an agent breaks its connection instead
    agent_restarts: float = 0.0  # agent processes restarting, per host-hour
    state_lost: float = 0.0  # share of agent restarts that lose the agent's own state
    server_restarts: int = 0  # server crashes during the rollout (at most)
    server_restart_gap: tuple[float, float] = (20.0, 200.0)
    crash_mid_batch: float = 0.0  # share of crashes between commit and execution
    flaps: float = 0.0  # hosts failing health on their own, per host-hour
    long_flap: float = 0.0  # share of those that stay unhealthy for minutes
    slow_hosts: float = 0.0  # restart ten times slower
    bad_hosts: float = 0.0  # fail on the target release
    bad_revert: float = 0.0  # fail when going back to the previous release
    slow_drain: float = 0.0  # drains that take until the drain timeout
    lb_fail: float = 0.0  # balancer calls that fail after their retries
    verdicts: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)  # pass, inconclusive, fail, error
    late_answer: float = 0.0  # balancer or gate answers arriving late
    repeated_answer: float = 0.0  # balancer or gate answers arriving twice
    operator: tuple[tuple[float, str], ...] = ()  # (delay after start, command)


@dataclass(frozen=True)
class Scenario:
    seed: int
    hosts: int
    mode: str
    profile: str
    spec: ServiceSpec
    faults: Faults
    restart_time: tuple[float, float] = (1.0, 4.0)
    heartbeat: float = 15.0
    reconnect_grace: float = 20.0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def traffic(self) -> bool:
        return self.spec.traffic.balancer.value == "haproxy"

    def describe(self) -> str:
        s = self.spec.strategy
        steps = getattr(s, "steps", None)
        plan = (
            ",".join(str(x.hosts) if x.hosts is not None else f"pause:{x.pause}" for x in steps)
            if steps is not None
            else f"batch {getattr(s, 'batch_size', '?')}"
        )
        f = self.faults
        return (
            f"{s.type.value} [{plan}] over {self.hosts} hosts, max_unavailable "
            f"{s.unavailable_budget}, failure_budget {s.failure_budget}, "
            f"traffic {'on' if self.traffic else 'off'}, verification "
            f"{'on' if self.spec.verification else 'off'}; faults: loss {f.loss:.3f} dup {f.duplicate:.3f} "
            f"late {f.late:.3f} breaks {f.link_break:.3f} agent restarts {f.agent_restarts:.2f}/h "
            f"server restarts {f.server_restarts} flaps {f.flaps:.2f}/h bad hosts {f.bad_hosts:.3f} "
            f"lb fail {f.lb_fail:.3f} operator {[c for _, c in f.operator]}"
        )


def _service(strategy: dict[str, Any], traffic: bool, verification: bool, duration: float) -> ServiceSpec:
    raw: dict[str, Any] = {
        "name": "web",
        "run": {"start": ["./app"]},
        "health": {"http": {"path": "/healthz"}},
        "strategy": strategy,
    }
    if traffic:
        raw["traffic"] = {
            "balancer": "haproxy",
            "haproxy": {"socket": "/run/haproxy/sim.sock", "backend": "web"},
        }
    if verification:
        raw["verification"] = {
            "duration": f"{duration:g}s",
            "gates": [{"name": "errors", "balancer": {"metric": "error_rate", "max_increase": 1.0}}],
        }
    return parse_service_spec(raw)


def draw(seed: int, hosts: int, mode: str, profile: str, rng: random.Random) -> Scenario:
    """Every choice of a run, taken from ``rng`` (seeded with ``seed`` by the caller)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}")
    harsh = profile == "mixed"
    bad_release = rng.random() < (0.2 if harsh else 0.1)
    min_healthy = rng.choice([0.0, 2.0, 5.0, 10.0])
    deadline = rng.choice([60.0, 120.0, 180.0])
    budget_share = rng.choice([0.0, 0.01, 0.02, 0.05])
    failure_budget = int(hosts * budget_share) + (1 if rng.random() < 0.5 else 0)
    strategy: dict[str, Any] = {
        "min_healthy_time": f"{min_healthy:g}s",
        "progress_deadline": f"{deadline:g}s",
        "failure_budget": failure_budget,
        "auto_rollback": rng.random() < 0.9,
        "max_unavailable": rng.choice(["5%", "10%", "25%", "2", "3"]),
    }
    traffic = True
    verification = True
    if profile == "t6":
        strategy |= {
            "type": "canary",
            "steps": [{"hosts": "1%"}, {"hosts": "10%"}, {"hosts": "50%"}, {"hosts": "100%"}],
            "max_unavailable": rng.choice(["5%", "10%", "25%"]),
        }
    elif rng.random() < 0.5:
        strategy |= {"type": "rolling", "batch_size": rng.choice(["10%", "25%", "50%", "1", "3"])}
        verification = rng.random() < 0.3
        traffic = rng.random() < 0.7
    else:
        steps: list[dict[str, Any]] = [{"hosts": "10%"}]
        if rng.random() < 0.3:
            steps.append({"pause": rng.choice(["promote", "30s"])})
        steps += [{"hosts": "50%"}, {"hosts": "100%"}]
        strategy |= {"type": "canary", "steps": steps}
        verification = rng.random() < 0.7
        traffic = rng.random() < 0.8
    duration = rng.choice([10.0, 30.0, 60.0])
    spec = _service(strategy, traffic, verification, duration)
    scale = 2.0 if harsh else 1.0
    commands: list[tuple[float, str]] = []
    for _ in range(rng.choice([0, 0, 1, 2, 3] if harsh else [0, 0, 0, 1])):
        command = rng.choices(["pause", "abort", "rollback", "resume", "promote"], [6, 1, 1, 1, 1])[0]
        commands.append((rng.uniform(5.0, 400.0), command))
    faults = Faults(
        loss=rng.choice([0.0, 0.005, 0.02]) * scale,
        duplicate=rng.choice([0.0, 0.01, 0.05]) * scale,
        late=rng.choice([0.0, 0.01, 0.03]) * scale,
        link_break=rng.choice([0.0, 0.002, 0.01]) * scale,
        agent_restarts=rng.choice([0.0, 0.5, 2.0]) * scale,
        state_lost=rng.choice([0.0, 0.3, 1.0]),
        server_restarts=rng.choice([0, 1, 2, 3, 4]) if mode == "runner" or hosts <= 5000 else 1,
        crash_mid_batch=rng.choice([0.0, 0.5, 1.0]),
        flaps=rng.choice([0.0, 0.5, 2.0]) * scale,
        long_flap=rng.choice([0.0, 0.05]),
        slow_hosts=rng.choice([0.0, 0.01, 0.03]),
        bad_hosts=0.3 if bad_release else rng.choice([0.0, 0.0, 0.002, 0.01]),
        bad_revert=rng.choice([0.0, 0.0, 0.001]) * scale,
        slow_drain=rng.choice([0.0, 0.02, 0.1]),
        # a failed balancer call pauses the rollout until a person resumes it: a few per rollout
        lb_fail=min(0.05, rng.choice([0.0, 1.0, 3.0]) * scale / (3 * hosts)),
        verdicts=(0.15, 0.15, 0.6, 0.1) if bad_release else (0.85, 0.1, 0.03, 0.02),
        late_answer=rng.choice([0.0, 0.05]),
        repeated_answer=rng.choice([0.0, 0.05]),
        operator=tuple(commands),
    )
    slow = rng.random() < 0.3
    return Scenario(
        seed=seed,
        hosts=hosts,
        mode=mode,
        profile=profile,
        spec=spec,
        faults=faults,
        restart_time=(2.0, 8.0) if slow else (0.5, 3.0),
        notes={"bad_release": bad_release},
    )
