"""How a release is verified on live traffic: the gates of a service spec.

```yaml
verification:
  duration: 30s          # each verification observes this long
  after_each_step: true  # canary: verify after every step but the last (which has no baseline)
  on_fail: rollback      # or pause
  max_inconclusive: 3    # "not enough data yet" extends the verification this many times, then pauses
  gates:
    - name: errors
      balancer: {metric: error_rate, max_increase: 1.0}     # percentage points over the baseline
    - name: latency
      balancer: {metric: latency, max_increase: 10%}        # relative to the baseline's median
    - name: app-errors
      prometheus:
        url: http://127.0.0.1:9090
        query: (sum(rate(requests_total{code=~"5..",instance=~"{hosts}"}[30s])) or vector(0))
                 / sum(rate(requests_total{instance=~"{hosts}"}[30s]))
        max_increase: 0.01                                  # absolute, canary minus baseline
    - name: smoke
      command: {argv: ["./smoke-test.sh", "{canary_urls}"], timeout: 60s}
    - name: sign-off
      approval: {}
```

Placeholders (``{hosts}``, ``{canary_urls}``, ``{canary_addresses}``) are filled
by the gate runner with values it builds itself; nothing is evaluated or
passed through a shell.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator

from headway.domain.durations import parse_duration

Seconds = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(lambda v: f"{v:g}s")]


def _parse_increase(value: object) -> float:
    """``10%`` -> 0.10; a plain number stays as it is."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return float(value.strip()[:-1]) / 100
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("write an increase as a number or a percentage like 10%")
    return float(value)


Increase = Annotated[float, BeforeValidator(_parse_increase), Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BalancerMetric(StrEnum):
    ERROR_RATE = "error_rate"
    LATENCY = "latency"


class BalancerGate(_Strict):
    """Compare canary and baseline hosts on the load balancer's per-server counters.

    ``error_rate``: ``max_increase`` in percentage points (default 1.0 = one point).
    ``latency``: ``max_increase`` relative to the baseline (default 10%).
    A regression no bigger than the tolerance is never detected: set it below the
    smallest regression that matters.
    """

    metric: BalancerMetric
    max_increase: Increase | None = None
    alpha: float = Field(default=0.01, gt=0, lt=0.5)
    min_requests: int = Field(default=100, ge=1)

    @property
    def tolerance(self) -> float:
        if self.max_increase is not None:
            return self.max_increase
        return 1.0 if self.metric is BalancerMetric.ERROR_RATE else 0.10


class PrometheusGate(_Strict):
    """One PromQL query run for the canary and for the baseline (``{hosts}`` is replaced by a
    regex of the hosts' ``address:port`` instances); fails when canary - baseline is over
    ``max_increase``. No data, NaN or an error is inconclusive, never a pass."""

    url: str
    query: str = Field(min_length=1)
    max_increase: float = Field(ge=0)
    timeout: Seconds = 5.0


class CommandGate(_Strict):
    """A command (a test suite, a script) run against the canary hosts; exit 0 passes."""

    argv: list[str] = Field(min_length=1)
    timeout: Seconds = 60.0


class ApprovalGate(_Strict):
    """Wait for a person: `headway rollout promote`."""


class GateSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    balancer: BalancerGate | None = None
    prometheus: PrometheusGate | None = None
    command: CommandGate | None = None
    approval: ApprovalGate | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> GateSpec:
        kinds = [k for k in ("balancer", "prometheus", "command", "approval") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError(
                f"gate {self.name!r} needs exactly one of balancer, prometheus, command, approval"
            )
        return self

    @property
    def kind(self) -> str:
        for kind in ("balancer", "prometheus", "command", "approval"):
            if getattr(self, kind) is not None:
                return kind
        raise AssertionError("validated to have one kind")


class OnFail(StrEnum):
    ROLLBACK = "rollback"
    PAUSE = "pause"


class VerificationSpec(_Strict):
    duration: Seconds = 30.0
    after_each_step: bool = True
    on_fail: OnFail = OnFail.ROLLBACK
    max_inconclusive: int = Field(default=3, ge=0)
    gates: list[GateSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _sane(self) -> VerificationSpec:
        if self.duration <= 0:
            raise ValueError("verification.duration must be more than 0s")
        names = [g.name for g in self.gates]
        if len(names) != len(set(names)):
            raise ValueError("verification.gates: gate names must be unique")
        return self
