"""How a service takes configuration files (the seed's case 2).

```yaml
config:
  source:                      # where new revisions come from (default: the built-in store,
    git:                       #   fed by `headway config push SERVICE DIR`)
      url: /srv/config.git     # a path or URL git can fetch
      branch: main
      subdir: web              # only this directory of the repository
      poll: 5s
  on_change: release           # a new revision makes a new release (same artifact) ...
  auto_rollout: false          # ... and, if true, starts its rollout at once
  apply: reload                # reload (signal or command, no restart) or restart (drained)
  reload_signal: HUP           # sent to the app's process (executor: process) ...
  # reload_command: ["systemctl", "reload", "web"]   ... or run this instead
  validate: ["./check-config", "{config_dir}"]       # run before activation; non-zero refuses
  max_bytes: 1048576           # a bundle larger than this is refused
```

On each host the files live in the agent's state directory (``config/<revision>/``,
``config/current`` pointing at the active one; the app gets ``HEADWAY_CONFIG_DIR``).
Text files may use ``{{host}}``, ``{{address}}``, ``{{port}}`` and ``{{label.NAME}}``;
nothing else is substituted and nothing in a config file is ever executed.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator

from headway.domain.durations import parse_duration

Seconds = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(lambda v: f"{v:g}s")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GitSource(_Strict):
    url: str = Field(min_length=1)
    branch: str = Field(default="main", pattern=r"^[A-Za-z0-9._/-]{1,200}$")
    subdir: str = Field(default="", pattern=r"^[A-Za-z0-9._/-]{0,200}$")
    poll: Seconds = 5.0

    @model_validator(mode="after")
    def _confined(self) -> GitSource:
        parts = self.subdir.split("/")
        if self.subdir.startswith("/") or ".." in parts:
            raise ValueError("config.source.git.subdir must be a relative path without '..'")
        if self.poll <= 0:
            raise ValueError("config.source.git.poll must be more than 0s")
        return self


class ConfigSource(_Strict):
    git: GitSource | None = None


class ApplyMode(StrEnum):
    RELOAD = "reload"
    RESTART = "restart"


class OnChange(StrEnum):
    RELEASE = "release"  # make a release for each new revision
    NOTHING = "nothing"  # keep revisions; a person makes releases


class ConfigSpec(_Strict):
    source: ConfigSource = Field(default_factory=ConfigSource)
    on_change: OnChange = OnChange.RELEASE
    auto_rollout: bool = False
    apply: ApplyMode = ApplyMode.RESTART
    reload_signal: str = Field(default="HUP", pattern=r"^(HUP|USR1|USR2)$")
    reload_command: list[str] | None = None
    validate_command: list[str] | None = Field(default=None, alias="validate")
    max_bytes: int = Field(default=1 << 20, ge=1, le=1 << 30)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _sane(self) -> ConfigSpec:
        if self.reload_command is not None and not self.reload_command:
            raise ValueError("config.reload_command must be a non-empty argument list")
        if self.validate_command is not None and not self.validate_command:
            raise ValueError("config.validate must be a non-empty argument list")
        return self
