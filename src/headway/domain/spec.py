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
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from headway.domain.durations import Budget, parse_duration
from headway.errors import SpecError

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_NAME = re.compile(NAME_PATTERN)

def format_duration(seconds: float) -> str:
    """The inverse of `parse_duration`, exact and readable: ``2.0`` -> ``'2s'``, ``1e-05`` -> ``'0.00001s'``."""
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


class RollingStrategy(_Strict):
    """Upgrade hosts in place, ``batch_size`` at a time.

    At most ``max_unavailable`` hosts of the service are out of service at
    once, counting hosts that failed on their own. A host counts as done
    when it has stayed healthy on the new release for ``min_healthy_time``;
    a host that is not done within ``progress_deadline`` of its change has
    failed. More than ``failure_budget`` failed hosts stop the rollout and,
    with ``auto_rollback``, roll every changed host back.
    """

    type: Literal[StrategyKind.ROLLING] = StrategyKind.ROLLING
    batch_size: HostBudget = Budget(25, True)
    max_unavailable: HostBudget | None = None
    min_healthy_time: Duration = 5.0
    progress_deadline: Duration = 120.0
    failure_budget: int = Field(default=0, ge=0)
    auto_rollback: bool = True

    @model_validator(mode="after")
    def _budgets_possible(self) -> RollingStrategy:
        if self.batch_size.value == 0:
            raise ValueError("strategy.batch_size is 0; a batch must hold at least 1 host (or 1%)")
        if self.max_unavailable is not None and self.max_unavailable.value == 0:
            raise ValueError(
                "strategy.max_unavailable is 0 and rolling upgrades in place have no surge, "
                "so no host could ever be upgraded; set it to 1 or more (or a percentage)"
            )
        if self.progress_deadline <= 0:
            raise ValueError("strategy.progress_deadline must be more than 0s")
        if self.progress_deadline <= self.min_healthy_time:
            raise ValueError(
                f"strategy.progress_deadline ({self.progress_deadline:g}s) must be longer than "
                f"min_healthy_time ({self.min_healthy_time:g}s), or no host could ever finish"
            )
        return self

    @property
    def unavailable_budget(self) -> Budget:
        return self.max_unavailable if self.max_unavailable is not None else self.batch_size


Strategy = RollingStrategy


class ServiceSpec(_Strict):
    """A service: which hosts run it, how to run and check it, how to roll it out."""

    name: str
    description: str = ""
    selector: dict[str, str] = Field(default_factory=dict)
    port: int = Field(default=8080, ge=1, le=65535)
    run: RunSpec
    health: HealthSpec
    strategy: Strategy = Field(default_factory=RollingStrategy)
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
        raise SpecError(
            f"invalid service spec: {_describe(error)}", hint="fix the fields named"
        ) from None


def load_service_yaml(text: str) -> ServiceSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(
            f"the YAML is malformed{where}", hint="check indentation and quoting"
        ) from None
    return parse_service_spec(data)
