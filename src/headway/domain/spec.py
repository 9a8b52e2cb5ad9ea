"""The service spec users write in YAML and apply with ``headway apply -f``.

Validation is strict: unknown fields, wrong types, negative durations and
impossible budgets are refused with a message naming the field and the fix.
No field is ever evaluated as code or passed through a shell: commands are
argument lists.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from headway.domain.config_spec import ConfigSpec
from headway.domain.durations import Budget, parse_duration
from headway.domain.verification import VerificationSpec
from headway.errors import SpecError

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_NAME = re.compile(NAME_PATTERN)


def format_duration(seconds: float) -> str:
    """The inverse of `parse_duration`, exact and readable.

    ``2.0`` -> ``'2s'``, ``1e-05`` -> ``'0.00001s'``."""
    text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return f"{text}s"


Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration)]
HostBudget = Annotated[Budget, BeforeValidator(Budget.parse), PlainSerializer(str)]
Command = Annotated[list[str], Field(min_length=1)]


def check_name(value: str, what: str = "name") -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"{what} {value!r} must be 1-63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ExecutorKind(StrEnum):
    PROCESS = "process"
    COMMANDS = "commands"


class RunSpec(_Strict):
    """How the agent runs the app.

    ``process``: the agent starts ``start`` in the release directory and
    supervises it (SIGTERM, then SIGKILL after ``stop_timeout``).
    ``commands``: the agent runs the service's own ``start``/``stop`` (and
    ``reload``) commands, for systemd units and the like.
    """

    executor: ExecutorKind = ExecutorKind.PROCESS
    start: Command
    stop: Command | None = None
    reload: Command | None = None
    stop_timeout: Duration = 10.0
    env: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _commands_need_stop(self) -> RunSpec:
        if self.executor is ExecutorKind.COMMANDS and self.stop is None:
            raise ValueError("executor 'commands' needs a 'stop' command (an argument list)")
        return self


class HttpCheck(_Strict):
    path: str = "/healthz"
    port: int | None = Field(default=None, ge=1, le=65535)
    expect_status: int = Field(default=200, ge=100, le=599)


class TcpCheck(_Strict):
    port: int | None = Field(default=None, ge=1, le=65535)


class HealthSpec(_Strict):
    """One of ``http``, ``tcp`` or ``command``; polled every ``interval``."""

    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    command: Command | None = None
    interval: Duration = 1.0
    timeout: Duration = 2.0

    @model_validator(mode="after")
    def _exactly_one(self) -> HealthSpec:
        kinds = [k for k in ("http", "tcp", "command") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("health needs exactly one of 'http', 'tcp' or 'command'")
        if self.interval <= 0:
            raise ValueError("health.interval must be more than 0s")
        if self.timeout <= 0:
            raise ValueError("health.timeout must be more than 0s")
        return self


class StrategyKind(StrEnum):
    ROLLING = "rolling"
    CANARY = "canary"
    BLUE_GREEN = "blue-green"


class _HostPolicy(_Strict):
    """What every strategy shares: how hosts are judged and how many may be out at once.

    At most ``max_unavailable`` hosts of the service are out of service at
    once, counting hosts that failed on their own. A host counts as done
    when it has stayed healthy on the new release for ``min_healthy_time``;
    a host that is not done within ``progress_deadline`` of its change has
    failed. More than ``failure_budget`` failed hosts stop the rollout and,
    with ``auto_rollback``, roll every changed host back.
    """

    max_unavailable: HostBudget | None = None
    min_healthy_time: Duration = 5.0
    progress_deadline: Duration = 120.0
    failure_budget: int = Field(default=0, ge=0)
    auto_rollback: bool = True

    def _check_policy(self) -> None:
        if self.max_unavailable is not None and self.max_unavailable.value == 0:
            raise ValueError(
                "strategy.max_unavailable is 0 and upgrades in place have no surge, "
                "so no host could ever be upgraded; set it to 1 or more (or a percentage)"
            )
        if self.progress_deadline <= 0:
            raise ValueError("strategy.progress_deadline must be more than 0s")
        if self.progress_deadline <= self.min_healthy_time:
            raise ValueError(
                f"strategy.progress_deadline ({self.progress_deadline:g}s) must be longer than "
                f"min_healthy_time ({self.min_healthy_time:g}s), or no host could ever finish"
            )

    @property
    def unavailable_budget(self) -> Budget:
        return self.max_unavailable if self.max_unavailable is not None else Budget(25, True)


class RollingStrategy(_HostPolicy):
    """Upgrade hosts in place, ``batch_size`` at a time (``max_unavailable`` defaults to it)."""

    type: Literal[StrategyKind.ROLLING] = StrategyKind.ROLLING
    batch_size: HostBudget = Budget(25, True)

    @model_validator(mode="after")
    def _budgets_possible(self) -> RollingStrategy:
        if self.batch_size.value == 0:
            raise ValueError("strategy.batch_size is 0; a batch must hold at least 1 host (or 1%)")
        self._check_policy()
        return self

    @property
    def unavailable_budget(self) -> Budget:
        return self.max_unavailable if self.max_unavailable is not None else self.batch_size


PROMOTE = "promote"
NO_PAUSE = -1.0  # a hosts step has no pause; stored as this number so that it reads back


def _parse_pause(value: object) -> float | None:
    if value == PROMOTE:
        return None
    if value == NO_PAUSE and not isinstance(value, bool | str):
        return NO_PAUSE
    return parse_duration(value)


class CanaryStep(_Strict):
    """One step: grow the canary to ``hosts`` (cumulative), or ``pause`` (a duration or
    ``promote``: wait for `headway rollout promote`)."""

    hosts: HostBudget | None = None
    pause: Annotated[
        float | None,
        BeforeValidator(_parse_pause),
        PlainSerializer(lambda v: PROMOTE if v is None else v if v < 0 else format_duration(v)),
    ] = Field(default=NO_PAUSE)

    @model_validator(mode="after")
    def _one_kind(self) -> CanaryStep:
        has_pause = self.pause is None or self.pause >= 0
        if (self.hosts is None) == (not has_pause):
            raise ValueError("each canary step is either {hosts: 25%} or {pause: 30s | promote}")
        if self.hosts is not None and self.hosts.value == 0:
            raise ValueError("a canary step of 0 hosts does nothing; use 1 or more (or 1%)")
        return self

    @property
    def is_pause(self) -> bool:
        return self.hosts is None


class CanaryStrategy(_HostPolicy):
    """Grow the share of hosts on the new release step by step (``5% -> 25% -> 100%``).

    Steps are cumulative; a last step to 100% is added when missing. Between
    steps, ``pause`` steps wait a duration or for an operator's promote.
    """

    type: Literal[StrategyKind.CANARY] = StrategyKind.CANARY
    steps: list[CanaryStep] = Field(min_length=1)

    @model_validator(mode="after")
    def _growing(self) -> CanaryStrategy:
        self._check_policy()
        previous: Budget | None = None
        for i, step in enumerate(self.steps):
            if step.hosts is None:
                continue
            if (
                previous is not None
                and previous.percent == step.hosts.percent
                and step.hosts.value <= previous.value
            ):
                raise ValueError(
                    f"strategy.steps.{i}: hosts {step.hosts} does not grow past the previous "
                    f"step ({previous}); canary steps are cumulative"
                )
            previous = step.hosts
        return self


class BlueGreenStrategy(_HostPolicy):
    """Two pools of hosts (by the ``pool_label`` label): bring the idle pool to the new
    release while it takes no traffic, verify it, shift traffic to it (``shift``:
    shares of traffic, at once or in steps with ``pause`` between), and keep the old
    pool on the old release for ``rollback_window``; a rollback shifts traffic back
    at once."""

    type: Literal[StrategyKind.BLUE_GREEN] = StrategyKind.BLUE_GREEN
    pool_label: str = "pool"
    pools: tuple[str, str] = ("blue", "green")
    shift: list[HostBudget] = Field(default_factory=lambda: [Budget(100, True)], min_length=1)
    pause: Annotated[
        float | None,
        BeforeValidator(_parse_pause),
        PlainSerializer(lambda v: PROMOTE if v is None else format_duration(v)),
    ] = 0.0
    rollback_window: Duration = 60.0

    @model_validator(mode="after")
    def _shifts(self) -> BlueGreenStrategy:
        self._check_policy()
        if self.pools[0] == self.pools[1]:
            raise ValueError("strategy.pools must name two different pools")
        shares = []
        for i, share in enumerate(self.shift):
            if not share.percent:
                raise ValueError(f"strategy.shift.{i}: write traffic shares as percentages (25%)")
            shares.append(share.value)
        if shares != sorted(set(shares)) or shares[-1] != 100:
            raise ValueError("strategy.shift must grow strictly and end at 100%")
        return self

    @property
    def unavailable_budget(self) -> Budget:
        return self.max_unavailable if self.max_unavailable is not None else Budget(100, True)


def _strategy_type(value: Any) -> str:
    raw = value.get("type", "rolling") if isinstance(value, dict) else getattr(value, "type", "")
    return str(raw.value if isinstance(raw, StrEnum) else raw)


Strategy = Annotated[
    Annotated[RollingStrategy, Tag("rolling")]
    | Annotated[CanaryStrategy, Tag("canary")]
    | Annotated[BlueGreenStrategy, Tag("blue-green")],
    Discriminator(
        _strategy_type,
        custom_error_type="strategy_type",
        custom_error_message="strategy.type must be one of rolling, canary, blue-green",
    ),
]


class BalancerKind(StrEnum):
    NONE = "none"
    HAPROXY = "haproxy"
    READINESS = "readiness"


class HAProxyTraffic(_Strict):
    socket: str  # the runtime API socket (stats socket ... level admin)
    backend: str


class ReadinessTraffic(_Strict):
    """A balancer that polls each host's readiness endpoint (served by the agent)."""

    port: int = Field(ge=1, le=65535)
    interval: Duration = 2.0  # the balancer's check interval
    fall: int = Field(default=2, ge=1)  # failed checks before it stops sending

    @property
    def settle_time(self) -> float:
        """Seconds from GET /ready turning 503 until the balancer surely sends nothing new.

        Its next check comes within one ``interval`` and it gives up after ``fall`` failed
        checks in a row, so at most ``interval * fall``; 0.25 s more covers the flag's trip
        from the server to the agent and the check's own round trip. ``2s`` x 2 -> 4.25 s.
        """
        return self.interval * self.fall + 0.25


class TrafficSpec(_Strict):
    """Which load balancer fronts the service; drains happen there before a host changes."""

    balancer: BalancerKind = BalancerKind.NONE
    haproxy: HAProxyTraffic | None = None
    readiness: ReadinessTraffic | None = None
    max_rps_per_host: float | None = Field(default=None, gt=0)  # capacity guard headroom

    @model_validator(mode="after")
    def _configured(self) -> TrafficSpec:
        if self.balancer is BalancerKind.HAPROXY and self.haproxy is None:
            raise ValueError("traffic.balancer haproxy needs traffic.haproxy: {socket, backend}")
        if self.balancer is BalancerKind.READINESS and self.readiness is None:
            raise ValueError("traffic.balancer readiness needs traffic.readiness: {port}")
        return self


class ServiceSpec(_Strict):
    """A service: which hosts run it, how to run and check it, how to roll it out."""

    name: str
    description: str = ""
    selector: dict[str, str] = Field(default_factory=dict)
    port: int = Field(default=8080, ge=1, le=65535)
    run: RunSpec
    health: HealthSpec
    strategy: Strategy = Field(default_factory=RollingStrategy)
    traffic: TrafficSpec = Field(default_factory=TrafficSpec)
    verification: VerificationSpec | None = None
    config: ConfigSpec | None = None
    drain_timeout: Duration = 30.0

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "service name")

    @model_validator(mode="after")
    def _default_selector(self) -> ServiceSpec:
        if not self.selector:
            object.__setattr__(self, "selector", {"service": self.name})
        return self

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.selector.items())


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "spec"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; check its spelling against the spec reference in docs/spec.md"
        elif item["type"] == "missing":
            message = "required field is missing"
        lines.append(f"{where}: {message}")
    return "; ".join(lines)


def parse_service_spec(data: Any) -> ServiceSpec:
    """A `ServiceSpec` from decoded YAML/JSON, or a `SpecError` that names every problem."""
    if not isinstance(data, dict):
        raise SpecError(
            "a service spec must be a mapping of fields (name, run, health, ...)",
            hint="see docs/spec.md for an example",
        )
    try:
        return ServiceSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(f"invalid service spec: {_describe(error)}", hint="fix the fields named") from None


def load_service_yaml(text: str) -> ServiceSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"the YAML is malformed{where}", hint="check indentation and quoting") from None
    return parse_service_spec(data)
