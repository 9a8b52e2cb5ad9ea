"""The release a host should run, as the agent keeps it on disk and hands it to the app."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headway.domain.spec import ServiceSpec
from headway.protocol.messages import Desired, DesiredRelease

_NON_ALNUM = re.compile(r"[^A-Za-z0-9]")


def release_dir_name(number: int, digest: str) -> str:
    """``v3-0123456789ab``: the release number and the first 12 hex digits of its digest."""
    return f"v{number}-{digest.removeprefix('sha256:')[:12]}"


def param_env_name(key: str) -> str:
    """``HEADWAY_PARAM_ERROR_RATE`` from ``error-rate``: upper case, other characters as ``_``."""
    return "HEADWAY_PARAM_" + _NON_ALNUM.sub("_", key).upper()


@dataclass(frozen=True)
class Target:
    """A desired state that names a release to run (``Desired`` with release and service set)."""

    generation: int
    release: DesiredRelease
    service: ServiceSpec

    @classmethod
    def from_desired(cls, desired: Desired) -> Target | None:
        if desired.release is None or desired.service is None:
            return None
        return cls(desired.generation, desired.release, desired.service)

    @property
    def number(self) -> int:
        return self.release.number

    @property
    def dir_name(self) -> str:
        return release_dir_name(self.release.number, self.release.artifact.digest)

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "release": self.release.model_dump(mode="json"),
            "service": self.service.model_dump(mode="json"),
        }

    @classmethod
    def from_json(cls, data: object) -> Target | None:
        """The target saved by `to_json`; None if the data is not one (then it is ignored)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                int(data["generation"]),
                DesiredRelease.model_validate(data["release"]),
                ServiceSpec.model_validate(data["service"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def app_env(
    target: Target, *, host: str, address: str, release_dir: Path, app_id: str,
    config_dir: Path | None = None,
) -> dict[str, str]:
    """The app's environment: ours, then ``run.env``, then the ``HEADWAY_*`` variables
    (``HEADWAY_CONFIG_DIR`` when the release carries config)."""
    env = dict(os.environ)
    env.update(target.service.run.env)
    env.update(
        {
            "HEADWAY_HOST": host,
            "HEADWAY_ADDRESS": address,
            "HEADWAY_PORT": str(target.service.port),
            "HEADWAY_RELEASE": f"v{target.number}",
            "HEADWAY_RELEASE_DIR": str(release_dir),
            "HEADWAY_APP_ID": app_id,
        }
    )
    if config_dir is not None:
        env["HEADWAY_CONFIG_DIR"] = str(config_dir)
    for key, value in target.release.params.items():
        env[param_env_name(key)] = value
    return env
