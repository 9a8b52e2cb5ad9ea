"""Runs a rollout's verification steps: the gates of the service, off the runner's loop.

The engine asks with an `Analyze` action; `Verifier.start` runs the gates as a
task (they observe live traffic for the verification's duration), records
each gate's result in the audit log and hands the combined verdict back to
the runner as a request, which steps the engine with `AnalysisDone`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from headway.domain.models import HostView
from headway.domain.spec import ServiceSpec
from headway.domain.verification import GateSpec
from headway.engine.events import Verdict

log = logging.getLogger("headway.verification")


class GateOutcome(Protocol):
    @property
    def gate(self) -> str: ...
    @property
    def verdict(self) -> Any: ...  # a StrEnum whose values are pass, fail, inconclusive
    @property
    def explanation(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...


class GateRunnerPort(Protocol):
    async def run(
        self,
        spec: ServiceSpec,
        gates: Sequence[GateSpec],
        canary: Sequence[HostView],
        baseline: Sequence[HostView],
        duration: float,
    ) -> Sequence[GateOutcome]: ...


@dataclass(frozen=True)
class VerificationOutcome:
    rollout_id: str
    action_id: str
    verdict: Verdict
    summary: str
    errored: bool
    gates: list[dict[str, Any]] = field(default_factory=list)


def combine(results: Sequence[GateOutcome]) -> tuple[Verdict, str, bool]:
    """Any fail fails; else any inconclusive is inconclusive; else pass. Never a pass on no data."""
    verdicts = [Verdict(str(getattr(r.verdict, "value", r.verdict))) for r in results]
    errored = any(bool(r.data.get("errored")) for r in results)
    if Verdict.FAIL in verdicts:
        verdict = Verdict.FAIL
    elif Verdict.INCONCLUSIVE in verdicts:
        verdict = Verdict.INCONCLUSIVE
    else:
        verdict = Verdict.PASS
    parts = [f"{r.gate}: {r.explanation}" for r in results]
    return verdict, "; ".join(parts) or "no automated gates", errored


class Verifier:
    def __init__(self, gates: GateRunnerPort | None, report: Callable[[VerificationOutcome], None]) -> None:
        self._gates = gates
        self._report = report
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(
        self,
        *,
        rollout_id: str,
        action_id: str,
        spec: ServiceSpec,
        canary: list[HostView],
        baseline: list[HostView],
        comparative: bool,
    ) -> None:
        running = self._tasks.get(action_id)
        if running is not None and not running.done():
            return
        self._tasks[action_id] = asyncio.create_task(
            self._run(rollout_id, action_id, spec, canary, baseline, comparative),
            name=f"verify-{action_id}",
        )

    async def _run(
        self,
        rollout_id: str,
        action_id: str,
        spec: ServiceSpec,
        canary: list[HostView],
        baseline: list[HostView],
        comparative: bool,
    ) -> None:
        verification = spec.verification
        gates = [
            g
            for g in (verification.gates if verification else [])
            if g.approval is None and (comparative or g.command is not None)
        ]
        try:
            if not gates or verification is None:
                outcome = VerificationOutcome(
                    rollout_id, action_id, Verdict.PASS, "no automated gates at this step", False
                )
            elif self._gates is None:
                outcome = VerificationOutcome(
                    rollout_id,
                    action_id,
                    Verdict.INCONCLUSIVE,
                    "this server has no gate runner; gates cannot be judged",
                    True,
                )
            else:
                results = await self._gates.run(spec, gates, canary, baseline, verification.duration)
                verdict, summary, errored = combine(results)
                outcome = VerificationOutcome(
                    rollout_id,
                    action_id,
                    verdict,
                    summary,
                    errored,
                    [
                        {
                            "gate": r.gate,
                            "verdict": str(getattr(r.verdict, "value", r.verdict)),
                            "explanation": r.explanation,
                            "data": r.data,
                        }
                        for r in results
                    ],
                )
        except Exception as error:  # the engine waits for an answer: always give one
            log.exception("verification %s failed", action_id)
            outcome = VerificationOutcome(
                rollout_id, action_id, Verdict.INCONCLUSIVE, f"verification crashed: {error!r}", True
            )
        finally:
            self._tasks.pop(action_id, None)
        self._report(outcome)
