"""Engine scenarios as readable scripts (tests/engine/scenarios/*.txt).

One command a line; ``#`` starts a comment. Time starts at 0 and only moves
with ``advance``. Commands:

    fleet hosts=N release=R|none [unhealthy=HOST,...]
                                        hosts h0..h{N-1}, healthy and connected on R
                                        (release=none: nothing installed yet)
    start to=R [from=R] [batch=B] [max_unavailable=M] [min_healthy=D] [deadline=D]
          [failure_budget=F] [auto_rollback=on|off] [traffic=on|off] [max_rps=N]
          [strategy=rolling|canary|blue-green]
          [steps=5%,pause:30s,50%,pause:promote]          canary: its steps
          [shift=10%,50%,100%] [shift_pause=D|promote] [window=D]
          [pools=blue:h0,h1;green:h2,h3]                  blue-green: label pool=...;
                                        the first pool named is the live one
    report HOST [release=R|none] [gen=G] healthy|unhealthy|failed|starting|disconnected
          [detail="..."]
                                        release defaults to the host's desired release,
                                        gen to the last generation the engine sent it;
                                        disconnected keeps the last reported health
    register HOST [release=R|none] healthy|starting
                                        a host the rollout has never seen reports in
    answer HOST drain|admit ok|fail [latest] [detail="..."]
                                        the balancer answers the host's oldest
                                        unanswered Drain (or Admit); latest: newest
    answer HOST drain|admit again       the last answer to one again (executed twice)
    load RPS                            the balancer's request rate (LoadReport)
    advance DURATION                    time passes, then a Tick
    tick                                a Tick at the current time
    pause|resume|promote|abort|rollback [by=NAME]

    expect phase PHASE
    expect setdesired HOST=R ...        exactly these SetDesired came from the last command
    expect no-setdesired
    expect drain HOST ...               exactly these Drain came from the last command
    expect admit HOST[=WEIGHT] ...      exactly these Admit (HOST alone: no weight)
    expect no-traffic                   no Drain, Admit or SetLivePool
    expect livepool POOL                the last command made POOL the live pool
    expect reason TEXT                  the rollout's reason contains TEXT
    expect blocked TEXT                 what the rollout waits for contains TEXT
    expect event KIND [HOST]            the last command recorded this event
    expect no-event KIND [HOST]
    expect host HOST PHASE              the engine's phase for one host
    expect unavailable N
    expect deadline T|none              next_deadline: the next wakeup is at T seconds
                                        (from the start, to the millisecond), or none
    expect service-release R            the last command made R the service's release
    expect error                        the last command raised IllegalTransition

Every SetDesired must be matched by an ``expect setdesired`` line, every Drain,
Admit and SetLivePool by ``expect drain``/``admit``/``livepool``, and an
IllegalTransition by ``expect error``: a script states every host change and
every balancer call it causes. After every command the invariants of `checks`
hold; when the rollout ends, so do I2 and I5.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from headway.domain.durations import parse_duration
from headway.domain.models import Health, HostView, RolloutStatus
from headway.domain.spec import BlueGreenStrategy, CanaryStrategy, RollingStrategy, Strategy
from headway.engine import machine
from headway.engine.actions import (
    Action,
    Admit,
    Drain,
    RecordEvent,
    SetDesired,
    SetLivePool,
    SetServiceRelease,
)
from headway.engine.events import (
    Command,
    EngineEvent,
    HostObserved,
    LoadReport,
    OperatorCommand,
    Tick,
    TrafficDone,
)
from headway.engine.plan import Batch
from headway.engine.state import HostPhase, RolloutState
from headway.errors import IllegalTransition

from .checks import Ledger

_HEALTH = {
    "healthy": Health.HEALTHY,
    "unhealthy": Health.UNHEALTHY,
    "failed": Health.FAILED,
    "starting": Health.STARTING,
}


class ScenarioError(AssertionError):
    pass


@dataclass
class _Host:
    release: int | None
    generation: int
    health: Health
    connected: bool = True


@dataclass
class Scenario:
    path: Path
    now: float = 0.0
    fleet: dict[str, _Host] = field(default_factory=dict)
    fleet_release: int | None = None
    state: RolloutState | None = None
    ledger: Ledger | None = None
    last: list[Action] = field(default_factory=list)
    last_error: IllegalTransition | None = None
    checked_sends: bool = True
    checked_traffic: dict[str, bool] = field(default_factory=dict)  # kind -> stated
    checked_error: bool = True
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    unanswered: list[Drain | Admit] = field(default_factory=list)  # at the balancer, in order
    answers: list[TrafficDone] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)

    # ------------------------------------------------------------- running

    def run(self) -> None:
        lines = self.path.read_text().splitlines()
        lineno = 0
        try:
            for lineno, raw in enumerate(lines, start=1):
                words = shlex.split(raw, comments=True)
                if not words:
                    continue
                line = raw.strip()
                if words[0] == "expect":
                    self._expect(words[1:])
                else:
                    self._settle()
                    self._command(words[0], words[1:])
                    self.transcript.append(f"{lineno:>3}: {line}")
                    self.transcript.extend(f"       -> {_show(a)}" for a in self.last)
                    if self.last_error is not None:
                        self.transcript.append(f"       !! {self.last_error}")
            lineno = len(lines) + 1
            self._settle()
        except (ScenarioError, AssertionError) as failure:
            where = f"{self.path.name}:{lineno}"
            text = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else "(end of script)"
            raise ScenarioError(
                f"{where}: {text}\n  {failure}\n\nactions so far:\n" + "\n".join(self.transcript)
            ) from None

    def _settle(self) -> None:
        if not self.checked_sends:
            sends = [_show(a) for a in self.last if isinstance(a, SetDesired)]
            raise ScenarioError(
                f"the previous command sent {sends}; state them with `expect setdesired`"
            )
        for kind, stated in self.checked_traffic.items():
            if not stated:
                calls = [_show(a) for a in self.last if _traffic_kind(a) == kind]
                raise ScenarioError(
                    f"the previous command sent {calls}; state them with `expect {kind}`"
                )
        if not self.checked_error:
            raise ScenarioError(f"the previous command raised: {self.last_error}")

    # ------------------------------------------------------------- commands

    def _command(self, name: str, args: list[str]) -> None:
        self.last = []
        self.last_error = None
        handler = getattr(self, f"_cmd_{name}", None)
        if handler is None:
            raise ScenarioError(f"unknown command {name!r}")
        handler(args)
        self.checked_sends = not any(isinstance(a, SetDesired) for a in self.last)
        self.checked_traffic = {k: False for a in self.last if (k := _traffic_kind(a))}
        self.unanswered.extend(a for a in self.last if isinstance(a, (Drain, Admit)))
        self.checked_error = self.last_error is None

    def _cmd_fleet(self, args: list[str]) -> None:
        opts = _options(args)
        count = int(opts.pop("hosts"))
        release = _release(opts.pop("release", "1"))
        unhealthy = opts.pop("unhealthy", "").split(",")
        _no_more(opts)
        self.fleet_release = release
        for i in range(count):
            if release is None:
                self.fleet[f"h{i}"] = _Host(None, 0, Health.UNKNOWN)
            else:
                health = Health.UNHEALTHY if f"h{i}" in unhealthy else Health.HEALTHY
                self.fleet[f"h{i}"] = _Host(release, 1, health)

    def _cmd_start(self, args: list[str]) -> None:
        opts = _options(args)
        to = int(opts.pop("to"))
        from_release = _release(opts.pop("from")) if "from" in opts else self.fleet_release
        raw: dict[str, object] = {}
        for key, field_name in (
            ("batch", "batch_size"),
            ("max_unavailable", "max_unavailable"),
            ("min_healthy", "min_healthy_time"),
            ("deadline", "progress_deadline"),
            ("failure_budget", "failure_budget"),
        ):
            if key in opts:
                raw[field_name] = opts.pop(key)
        if "auto_rollback" in opts:
            raw["auto_rollback"] = opts.pop("auto_rollback") == "on"
        traffic = _on_off(opts.pop("traffic", "off"))
        max_rps = float(opts.pop("max_rps")) if "max_rps" in opts else None
        strategy, live_pool = self._strategy(opts.pop("strategy", "rolling"), raw, opts)
        _no_more(opts)
        views = [
            HostView(
                name=name,
                service="web",
                address="127.0.0.1",
                labels=self.labels.get(name, {}),
                desired_release=h.release,
                generation=h.generation,
                observed_release=h.release,
                observed_generation=h.generation,
                health=h.health,
                connected=h.connected,
            )
            for name, h in self.fleet.items()
        ]
        decision = machine.new_rollout(
            rollout_id="r1",
            service="web",
            from_release=from_release,
            to_release=to,
            strategy=strategy,
            hosts=views,
            now=self.now,
            traffic=traffic,
            live_pool=live_pool,
            max_rps_per_host=max_rps,
        )
        self.state = decision.state
        self.ledger = Ledger.start(decision)
        self._after(decision.actions)

    def _strategy(
        self, kind: str, raw: dict[str, object], opts: dict[str, str]
    ) -> tuple[Strategy, str | None]:
        if kind == "rolling":
            return RollingStrategy.model_validate(raw), None
        raw.pop("batch_size", None)
        if kind == "canary":
            steps: list[dict[str, str]] = []
            for step in opts.pop("steps").split(","):
                what, _, pause = step.partition(":")
                steps.append({"pause": pause} if what == "pause" else {"hosts": what})
            return CanaryStrategy.model_validate({**raw, "steps": steps}), None
        if kind != "blue-green":
            raise ScenarioError(f"unknown strategy {kind!r}")
        pools: list[str] = []
        for part in opts.pop("pools").split(";"):
            pool, _, names = part.partition(":")
            pools.append(pool)
            for name in names.split(","):
                self.labels[name] = {"pool": pool}
        raw["pools"] = pools
        if "shift" in opts:
            raw["shift"] = opts.pop("shift").split(",")
        if "shift_pause" in opts:
            raw["pause"] = opts.pop("shift_pause")
        if "window" in opts:
            raw["rollback_window"] = opts.pop("window")
        return BlueGreenStrategy.model_validate(raw), pools[0]

    def _cmd_answer(self, args: list[str]) -> None:
        host, kind = args[0], args[1]
        opts, flags = _split(args[2:])
        detail = opts.pop("detail", "")
        _no_more(opts)
        latest = "latest" in flags
        flags = [f for f in flags if f != "latest"]
        wanted = Drain if kind == "drain" else Admit if kind == "admit" else None
        if wanted is None:
            raise ScenarioError(f"answer a drain or an admit, not {kind!r}")
        if flags == ["again"]:
            given = [a for a in self.answers if a.host == host and a.action_id in self.kinds[kind]]
            if not given:
                raise ScenarioError(f"{host} has had no {kind} answered yet")
            self._step(given[-1])
            return
        if flags not in (["ok"], ["fail"]):
            raise ScenarioError(f"answer needs ok, fail or again, got {flags}")
        waiting = [a for a in self.unanswered if isinstance(a, wanted) and a.host == host]
        if not waiting:
            raise ScenarioError(f"{host} has no {kind} waiting at the balancer")
        action = waiting[-1] if latest else waiting[0]
        self.unanswered.remove(action)
        answer = TrafficDone(action.action_id, host, flags == ["ok"], detail)
        self.answers.append(answer)
        self._step(answer)

    @property
    def kinds(self) -> dict[str, set[str]]:
        ids: dict[str, set[str]] = {"drain": set(), "admit": set()}
        for action in self._ledger().actions:
            if isinstance(action, (Drain, Admit)):
                ids[_traffic_kind(action)].add(action.action_id)
        return ids

    def _cmd_load(self, args: list[str]) -> None:
        (rps,) = args
        self._step(LoadReport(float(rps)))

    def _cmd_report(self, args: list[str]) -> None:
        host = args[0]
        opts, flags = _split(args[1:])
        state = self._state()
        track = state.hosts[host]
        release = _release(opts.pop("release")) if "release" in opts else track.desired_release
        generation = int(opts.pop("gen")) if "gen" in opts else self._ledger().generation[host]
        detail = opts.pop("detail", "")
        _no_more(opts)
        if flags == ["disconnected"]:
            health, connected = track.health, False
        elif len(flags) == 1 and flags[0] in _HEALTH:
            health, connected = _HEALTH[flags[0]], True
        else:
            raise ScenarioError(f"report needs one of {[*_HEALTH, 'disconnected']}, got {flags}")
        self._step(HostObserved(host, release, generation, health, connected, detail))

    def _cmd_register(self, args: list[str]) -> None:
        host = args[0]
        opts, flags = _split(args[1:])
        release = _release(opts.pop("release")) if "release" in opts else self.fleet_release
        _no_more(opts)
        if len(flags) != 1 or flags[0] not in _HEALTH:
            raise ScenarioError(f"register needs one of {list(_HEALTH)}, got {flags}")
        generation = 0 if release is None else 1
        ledger = self._ledger()
        ledger.generation[host] = generation
        ledger.desired[host] = release
        self._step(HostObserved(host, release, generation, _HEALTH[flags[0]], True))

    def _cmd_advance(self, args: list[str]) -> None:
        (duration,) = args
        self.now += parse_duration(duration)
        self._step(Tick())

    def _cmd_tick(self, args: list[str]) -> None:
        _no_more(_options(args))
        self._step(Tick())

    def _operator(self, command: Command, args: list[str]) -> None:
        opts = _options(args)
        actor = opts.pop("by", "")
        reason = opts.pop("reason", "")
        _no_more(opts)
        self._step(OperatorCommand(command, actor=actor, reason=reason))

    def _cmd_pause(self, args: list[str]) -> None:
        self._operator(Command.PAUSE, args)

    def _cmd_resume(self, args: list[str]) -> None:
        self._operator(Command.RESUME, args)

    def _cmd_promote(self, args: list[str]) -> None:
        self._operator(Command.PROMOTE, args)

    def _cmd_abort(self, args: list[str]) -> None:
        self._operator(Command.ABORT, args)

    def _cmd_rollback(self, args: list[str]) -> None:
        self._operator(Command.ROLLBACK, args)

    def _step(self, event: EngineEvent) -> None:
        state = self._state()
        before = state.to_dict()
        try:
            decision = self._ledger().step(state, event, self.now)
        except IllegalTransition as error:
            self.last_error = error
            assert state.to_dict() == before, "a refused command changed the state"
            return
        self._after(decision.actions)

    def _after(self, actions: list[Action]) -> None:
        self.last = actions
        state = self._state()
        if state.phase.terminal:
            planned = [n for s in state.plan if isinstance(s, Batch) for n in s.hosts]
            self._ledger().check_end(state, planned)

    # ------------------------------------------------------------- expectations

    def _expect(self, words: list[str]) -> None:
        check = getattr(self, "_expect_" + words[0].replace("-", "_"), None)
        if check is None:
            raise ScenarioError(f"unknown expectation {words[0]!r}")
        check(words[1:])

    def _expect_phase(self, args: list[str]) -> None:
        state = self._state()
        if state.phase is not RolloutStatus(args[0]):
            raise ScenarioError(
                f"phase is {state.phase.value} ({state.reason or 'no reason'}), expected {args[0]}"
            )

    def _expect_setdesired(self, args: list[str]) -> None:
        wanted = {host: _release(r) for host, _, r in (arg.partition("=") for arg in args)}
        got = self._sends()
        if got != wanted:
            raise ScenarioError(f"SetDesired sent: {_fmt(got)}; expected {_fmt(wanted)}")
        self.checked_sends = True

    def _expect_no_setdesired(self, args: list[str]) -> None:
        if got := self._sends():
            raise ScenarioError(f"SetDesired sent: {_fmt(got)}; expected none")

    def _expect_event(self, args: list[str], wanted: bool = True) -> None:
        kind, host = args[0], (args[1] if len(args) > 1 else None)
        records = [a for a in self.last if isinstance(a, RecordEvent)]
        found = any(r.kind == kind and host in (None, r.host) for r in records)
        if found != wanted:
            recorded = [f"{r.kind} {r.host}".strip() for r in records]
            raise ScenarioError(
                f"{'no' if wanted else 'an'} {kind} {host or ''} event; "
                f"the last command recorded {recorded}"
            )

    def _expect_no_event(self, args: list[str]) -> None:
        self._expect_event(args, wanted=False)

    def _expect_host(self, args: list[str]) -> None:
        host, phase = args
        actual = self._state().hosts[host].phase
        if actual is not HostPhase(phase):
            raise ScenarioError(f"{host} is {actual.value}, expected {phase}")

    def _expect_unavailable(self, args: list[str]) -> None:
        unavailable = self._state().unavailable
        if unavailable != int(args[0]):
            raise ScenarioError(f"{unavailable} host(s) unavailable, expected {args[0]}")

    def _expect_deadline(self, args: list[str]) -> None:
        (wanted,) = args
        deadline = machine.next_deadline(self._state())
        got = "none" if deadline is None else f"{deadline:.3f}"
        if got != ("none" if wanted == "none" else f"{float(wanted):.3f}"):
            raise ScenarioError(f"the next wakeup is at {got}, expected {wanted}")

    def _expect_service_release(self, args: list[str]) -> None:
        got = [a.release for a in self.last if isinstance(a, SetServiceRelease)]
        if got != [int(args[0])]:
            raise ScenarioError(f"SetServiceRelease sent: {got}; expected [{args[0]}]")

    def _expect_error(self, args: list[str]) -> None:
        if self.last_error is None:
            raise ScenarioError("the last command raised no IllegalTransition")
        self.checked_error = True

    def _expect_drain(self, args: list[str]) -> None:
        got = sorted(a.host for a in self.last if isinstance(a, Drain))
        if got != sorted(args):
            raise ScenarioError(f"Drain sent: {got or '(none)'}; expected {sorted(args)}")
        self.checked_traffic["drain"] = True

    def _expect_admit(self, args: list[str]) -> None:
        got = sorted(
            a.host + ("" if a.weight is None else f"={a.weight}")
            for a in self.last
            if isinstance(a, Admit)
        )
        if got != sorted(args):
            raise ScenarioError(f"Admit sent: {got or '(none)'}; expected {sorted(args)}")
        self.checked_traffic["admit"] = True

    def _expect_no_traffic(self, args: list[str]) -> None:
        if got := [_show(a) for a in self.last if _traffic_kind(a)]:
            raise ScenarioError(f"balancer calls sent: {got}; expected none")

    def _expect_livepool(self, args: list[str]) -> None:
        got = [a.pool for a in self.last if isinstance(a, SetLivePool)]
        if got != args:
            raise ScenarioError(f"SetLivePool sent: {got}; expected {args}")
        self.checked_traffic["livepool"] = True

    def _expect_reason(self, args: list[str]) -> None:
        reason = self._state().reason
        if " ".join(args) not in reason:
            raise ScenarioError(f"the reason is {reason!r}; expected it to say {' '.join(args)!r}")

    def _expect_blocked(self, args: list[str]) -> None:
        blocked = self._state().blocked
        if " ".join(args) not in blocked:
            raise ScenarioError(f"waiting for {blocked!r}; expected it to say {' '.join(args)!r}")

    def _sends(self) -> dict[str, int | None]:
        return {a.host: a.release for a in self.last if isinstance(a, SetDesired)}

    def _state(self) -> RolloutState:
        if self.state is None:
            raise ScenarioError("no rollout yet: `start` one first")
        return self.state

    def _ledger(self) -> Ledger:
        assert self.ledger is not None
        return self.ledger


def _options(args: list[str]) -> dict[str, str]:
    opts, flags = _split(args)
    if flags:
        raise ScenarioError(f"unexpected words {flags}")
    return opts


def _split(args: list[str]) -> tuple[dict[str, str], list[str]]:
    opts: dict[str, str] = {}
    flags: list[str] = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq:
            opts[key] = value
        else:
            flags.append(arg)
    return opts, flags


def _no_more(opts: dict[str, str]) -> None:
    if opts:
        raise ScenarioError(f"unknown option(s) {sorted(opts)}")


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise ScenarioError(f"on or off, not {text!r}")
    return text == "on"


def _traffic_kind(action: Action) -> str:
    if isinstance(action, Drain):
        return "drain"
    if isinstance(action, Admit):
        return "admit"
    return "livepool" if isinstance(action, SetLivePool) else ""


def _release(text: str) -> int | None:
    return None if text == "none" else int(text)


def _fmt(sends: dict[str, int | None]) -> str:
    return " ".join(f"{h}={r}" for h, r in sorted(sends.items())) or "(none)"


def _show(action: Action) -> str:
    if isinstance(action, SetDesired):
        return f"SetDesired {action.host}=v{action.release} g{action.generation}"
    if isinstance(action, SetServiceRelease):
        return f"SetServiceRelease {action.service}=v{action.release}"
    if isinstance(action, Drain):
        return f"Drain {action.host} ({action.action_id})"
    if isinstance(action, Admit):
        weight = "" if action.weight is None else f" weight {action.weight}"
        return f"Admit {action.host}{weight} ({action.action_id})"
    if isinstance(action, SetLivePool):
        return f"SetLivePool {action.service}={action.pool}"
    host = f" [{action.host}]" if action.host else ""
    return f"{action.kind}{host}: {action.message}"


def run_scenario(path: Path) -> None:
    Scenario(path).run()
