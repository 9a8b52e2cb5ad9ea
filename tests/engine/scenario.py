"""Engine scenarios as readable scripts (tests/engine/scenarios/*.txt).

One command a line; ``#`` starts a comment. Time starts at 0 and only moves
with ``advance``. Commands:

    fleet hosts=N release=R|none [unhealthy=HOST,...]
                                        hosts h0..h{N-1}, healthy and connected on R
                                        (release=none: nothing installed yet)
    start to=R [from=R] [batch=B] [max_unavailable=M] [min_healthy=D] [deadline=D]
          [failure_budget=F] [auto_rollback=on|off]
    report HOST [release=R|none] [gen=G] healthy|unhealthy|failed|starting|disconnected
          [detail="..."]
                                        release defaults to the host's desired release,
                                        gen to the last generation the engine sent it;
                                        disconnected keeps the last reported health
    register HOST [release=R|none] healthy|starting
                                        a host the rollout has never seen reports in
    advance DURATION                    time passes, then a Tick
    tick                                a Tick at the current time
    pause|resume|promote|abort|rollback [by=NAME]

    expect phase PHASE
    expect setdesired HOST=R ...        exactly these SetDesired came from the last command
    expect no-setdesired
    expect event KIND [HOST]            the last command recorded this event
    expect no-event KIND [HOST]
    expect host HOST PHASE              the engine's phase for one host
    expect unavailable N
    expect service-release R            the last command made R the service's release
    expect error                        the last command raised IllegalTransition

Every SetDesired must be matched by an ``expect setdesired`` line, and an
IllegalTransition by ``expect error``: a script states every host change it
causes. After every command the invariants of `checks` hold; when the rollout
ends, so does I2.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from headway.domain.durations import parse_duration
from headway.domain.models import Health, HostView, RolloutStatus
from headway.domain.spec import RollingStrategy
from headway.engine import machine
from headway.engine.actions import Action, RecordEvent, SetDesired, SetServiceRelease
from headway.engine.events import Command, EngineEvent, HostObserved, OperatorCommand, Tick
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
    checked_error: bool = True
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
        _no_more(opts)
        strategy = RollingStrategy.model_validate(raw)
        views = [
            HostView(
                name=name,
                service="web",
                address="127.0.0.1",
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
        )
        self.state = decision.state
        self.ledger = Ledger.start(decision)
        self._after(decision.actions)

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

    def _expect_service_release(self, args: list[str]) -> None:
        got = [a.release for a in self.last if isinstance(a, SetServiceRelease)]
        if got != [int(args[0])]:
            raise ScenarioError(f"SetServiceRelease sent: {got}; expected [{args[0]}]")

    def _expect_error(self, args: list[str]) -> None:
        if self.last_error is None:
            raise ScenarioError("the last command raised no IllegalTransition")
        self.checked_error = True

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


def _release(text: str) -> int | None:
    return None if text == "none" else int(text)


def _fmt(sends: dict[str, int | None]) -> str:
    return " ".join(f"{h}={r}" for h, r in sorted(sends.items())) or "(none)"


def _show(action: Action) -> str:
    if isinstance(action, SetDesired):
        return f"SetDesired {action.host}=v{action.release} g{action.generation}"
    if isinstance(action, SetServiceRelease):
        return f"SetServiceRelease {action.service}=v{action.release}"
    host = f" [{action.host}]" if action.host else ""
    return f"{action.kind}{host}: {action.message}"


def run_scenario(path: Path) -> None:
    Scenario(path).run()
