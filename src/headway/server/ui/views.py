"""What the service and rollout pages show, computed from the runner's state, the store's
records and the audit log. Pure functions over values: templates only lay them out."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from headway.domain.models import Event, Health, RolloutStatus, RolloutSummary
from headway.engine.events import Command
from headway.engine.plan import Batch, Pause, Shift, Step, Verify
from headway.engine.state import IN_FLIGHT, HostPhase, RolloutState
from headway.engine.table import TABLE

ACTIONS = tuple(c.value for c in Command)  # pause, resume, promote, abort, rollback
_ACTION_HELP = {
    "pause": "Stop starting new hosts; hosts already changing finish their change.",
    "resume": "Carry on from where the rollout was paused.",
    "promote": "Skip the current pause or gate wait and go on to the next step.",
    "abort": "Stop the rollout; hosts already changed go back to the previous release.",
    "rollback": "Roll every changed host back to the previous release.",
}


def when(ts: float | None) -> str:
    """``2026-11-26 14:03:12 UTC`` (the browser shows local time next to it)."""
    if not ts:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def category(phase: HostPhase) -> str:
    """The phase of a host in a rollout, in the five colours the pages use."""
    if phase in (HostPhase.DONE,):
        return "done"
    if phase in (HostPhase.FAILED, HostPhase.REVERT_FAILED):
        return "failed"
    if phase is HostPhase.REVERTED:
        return "reverted"
    if phase in IN_FLIGHT:
        return "flight"
    return "pending"


CATEGORIES = ("done", "flight", "failed", "reverted", "pending")
CATEGORY_LABELS = {
    "done": "done",
    "flight": "in flight",
    "failed": "failed",
    "reverted": "reverted",
    "pending": "pending",
}


@dataclass(frozen=True)
class Bar:
    """A stacked bar of host counts: ``parts`` as (category, count, x%, width%)."""

    total: int
    parts: tuple[tuple[str, int, float, float], ...]


def bar(counts: Counter[str], total: int) -> Bar:
    parts = []
    x = 0.0
    for name in CATEGORIES:
        n = counts.get(name, 0)
        if n and total:
            width = 100.0 * n / total
            parts.append((name, n, round(x, 3), round(width, 3)))
            x += width
    return Bar(total, tuple(parts))


@dataclass(frozen=True)
class StepView:
    number: int  # 1-based
    kind: str  # batch, pause, verify, shift
    text: str
    state: str  # done, current, stopped (where an unsuccessful rollout ended), pending
    note: str = ""
    bar: Bar | None = None


@dataclass(frozen=True)
class ActionView:
    name: str
    enabled: bool
    help: str


@dataclass(frozen=True)
class SplitView:
    """Who serves traffic: the share of admitted (or, without a balancer, healthy) hosts on
    the new release, and the load the rollout last heard of."""

    basis: str
    new_hosts: int
    old_hosts: int
    share: int | None  # percent on the new release, of the serving hosts
    planned: int | None  # blue-green: the share the last shift step set
    rps: float | None


@dataclass(frozen=True)
class RolloutView:
    summary: RolloutSummary
    live: bool  # the runner has it in memory (active)
    steps: tuple[StepView, ...]
    overall: Bar
    phase_counts: tuple[tuple[str, int], ...]
    split: SplitView | None
    failed_hosts: tuple[tuple[str, str, str], ...]  # name, phase, detail
    actions: tuple[ActionView, ...]
    blocked: str
    waiting_promote: bool
    pause_until: float | None


def _step_kind(step: Step) -> str:
    if isinstance(step, Batch):
        return "batch"
    if isinstance(step, Pause):
        return "pause"
    if isinstance(step, Verify):
        return "verify"
    return "shift"


def _step_note(state: RolloutState, step: Step, current: bool, now: float) -> str:
    if not current or state.phase.terminal:
        return ""
    if isinstance(step, Pause):
        if state.waiting_promote or step.seconds is None:
            return "waiting for an operator to promote"
        if state.pause_until is not None:
            return f"{max(0.0, state.pause_until - now):.0f}s left"
    if isinstance(step, Verify):
        if state.verified:
            return "gates passed" + (", waiting for approval (promote)" if step.approval else "")
        if state.analysis_pending:
            if state.inconclusive:
                return f"gates observing live traffic (inconclusive {state.inconclusive} times so far)"
            return "gates observing live traffic"
        if state.phase is RolloutStatus.PAUSED:
            return "paused before a verdict"
    if isinstance(step, Shift) and state.shift_open:
        return f"waiting for the balancer ({state.shift_open} answer(s))"
    return ""


def rollout_view(summary: RolloutSummary, state: RolloutState | None, live: bool, now: float) -> RolloutView:
    if state is None:  # unreadable stored state: the summary is all there is
        return RolloutView(
            summary, False, (), bar(Counter(), 0), (), None, (), _actions(summary.status), "", False, None
        )
    by_step: dict[int, Counter[str]] = {}
    phases: Counter[str] = Counter()
    overall: Counter[str] = Counter()
    failed: list[tuple[str, str, str]] = []
    new_serving = old_serving = 0
    for host in state.hosts.values():
        cat = category(host.phase)
        by_step.setdefault(host.batch, Counter())[cat] += 1
        overall[cat] += 1
        phases[host.phase.value] += 1
        if cat == "failed" and len(failed) < 50:
            failed.append((host.name, host.phase.value, host.detail))
        serves = host.admitted if state.traffic else (host.connected and host.health is Health.HEALTHY)
        if serves:
            if host.observed_release == state.to_release:
                new_serving += 1
            else:
                old_serving += 1
    steps = []
    planned: int | None = None
    for i, step in enumerate(state.plan):
        if state.phase is RolloutStatus.SUCCEEDED or i < state.step_index:
            where = "done"
        elif i == state.step_index:
            where = "stopped" if state.phase.terminal else "current"
        else:
            where = "pending"
        if isinstance(step, Shift) and i <= state.step_index:
            planned = step.share
        hosts = by_step.get(i) if isinstance(step, Batch) else None
        total = len(step.hosts) if isinstance(step, Batch | Shift) else 0
        steps.append(
            StepView(
                number=i + 1,
                kind=_step_kind(step),
                text=step.describe(),
                state=where,
                note=_step_note(state, step, where == "current", now),
                bar=bar(hosts, total) if hosts is not None else None,
            )
        )
    serving = new_serving + old_serving
    split = SplitView(
        basis="admitted at the load balancer" if state.traffic else "healthy (no load balancer in front)",
        new_hosts=new_serving,
        old_hosts=old_serving,
        share=round(100 * new_serving / serving) if serving else None,
        planned=planned,
        rps=state.load_rps,
    )
    return RolloutView(
        summary=summary,
        live=live,
        steps=tuple(steps),
        overall=bar(overall, len(state.hosts)),
        phase_counts=tuple(sorted(phases.items(), key=lambda kv: -kv[1])),
        split=split,
        failed_hosts=tuple(failed),
        actions=_actions(state.phase if live else summary.status),
        blocked=state.blocked,
        waiting_promote=state.waiting_promote,
        pause_until=state.pause_until,
    )


def _actions(phase: RolloutStatus) -> tuple[ActionView, ...]:
    out = []
    for name in ACTIONS:
        transition = TABLE.get((phase, name))
        enabled = transition is not None and transition.handler != "noop"
        out.append(ActionView(name, enabled, _ACTION_HELP[name]))
    return tuple(out)


# ------------------------------------------------------------------------ gates


@dataclass(frozen=True)
class Chart:
    """Canary against baseline over time, as SVG polyline points in a 0..W x 0..H box."""

    width: int
    height: int
    canary: str
    baseline: str
    y_min: float
    y_max: float
    t_span: float
    unit: str
    canary_last: float | None
    baseline_last: float | None


@dataclass(frozen=True)
class GateView:
    gate: str
    verdict: str
    explanation: str
    action: str
    chart: Chart | None
    figures: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def _points(raw: object) -> list[tuple[float, float]]:
    """``[v, ...]``, ``[[t, v], ...]`` or ``[{"t": t, "v": v}, ...]`` -> ``[(t, v), ...]``."""
    if not isinstance(raw, list):
        return []
    out: list[tuple[float, float]] = []
    for i, item in enumerate(raw):
        t: object
        v: object
        if isinstance(item, int | float) and not isinstance(item, bool):
            t, v = i, item
        elif isinstance(item, list | tuple) and len(item) == 2:
            t, v = item
        elif isinstance(item, dict):
            t = item.get("t", item.get("ts", i))
            v = item.get("v", item.get("value"))
        else:
            continue
        if not isinstance(t, int | float) or not isinstance(v, int | float) or isinstance(v, bool):
            continue
        if math.isfinite(t) and math.isfinite(v):
            out.append((float(t), float(v)))
    return out


def series_of(data: dict[str, Any]) -> tuple[list[tuple[float, float]], list[tuple[float, float]], str]:
    """Canary and baseline series from a gate's data: ``data["series"]["canary"]``, or
    ``data["canary"]`` / ``data["canary_series"]`` (and the same for the baseline)."""
    holder = data.get("series") if isinstance(data.get("series"), dict) else data
    assert isinstance(holder, dict)
    canary = _points(holder.get("canary", holder.get("canary_series")))
    baseline = _points(holder.get("baseline", holder.get("baseline_series")))
    unit = str(data.get("unit", holder.get("unit", "")))[:16]
    return canary, baseline, unit


def chart(
    canary: Sequence[tuple[float, float]],
    baseline: Sequence[tuple[float, float]],
    unit: str = "",
    width: int = 320,
    height: int = 90,
) -> Chart | None:
    if not canary and not baseline:
        return None
    both = [*canary, *baseline]
    t0 = min(t for t, _ in both)
    t1 = max(t for t, _ in both)
    lo = min(0.0, min(v for _, v in both))
    hi = max(v for _, v in both)
    if hi <= lo:
        hi = lo + 1.0
    span = t1 - t0 or 1.0

    def line(points: Sequence[tuple[float, float]]) -> str:
        return " ".join(
            f"{(t - t0) / span * width:.1f},{height - (v - lo) / (hi - lo) * height:.1f}" for t, v in points
        )

    return Chart(
        width,
        height,
        line(canary),
        line(baseline),
        lo,
        hi,
        t1 - t0,
        unit,
        canary[-1][1] if canary else None,
        baseline[-1][1] if baseline else None,
    )


def _figure(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)[:40]


def gate_views(records: Iterable[tuple[str, dict[str, Any]]]) -> list[GateView]:
    """Newest verification first; within one, the gates in stored order."""

    def seq(action: str) -> int:
        tail = action.rsplit(":", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    out = []
    for action, record in sorted(records, key=lambda ar: -seq(ar[0])):
        data = record.get("data")
        data = data if isinstance(data, dict) else {}
        canary, baseline, unit = series_of(data)
        figures = tuple(
            (str(k), _figure(v))
            for k, v in data.items()
            if isinstance(v, int | float | str) and not isinstance(v, bool) and k != "unit"
        )[:8]
        out.append(
            GateView(
                gate=str(record.get("gate", "?")),
                verdict=str(record.get("verdict", "?")),
                explanation=str(record.get("explanation", "")),
                action=action,
                chart=chart(canary, baseline, unit),
                figures=figures,
            )
        )
    return out


def verdict_events(events: Iterable[Event]) -> list[Event]:
    """The audit log's gate and verification lines (``gate.*``, ``verify.*``)."""
    return [e for e in events if e.kind.startswith(("gate.", "verify."))]
