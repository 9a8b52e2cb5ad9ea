"""One real local fleet shared by the config rollout cases (issue 5, "Must show").

- `headway.fleet.local.fleet_up`: a server, HAProxy and 6 agents with their sample apps on
  127.0.70.1-6; canary strategy (1 host, then 50%, then 100%), min healthy time 1 s;
- a real Git repository made here (``git init``, real commits); the service's
  ``config.source.git`` follows its ``main`` branch (subdir ``web``, polled every 0.5 s) with
  ``on_change: release``, ``auto_rollout: true`` and the sample app's own checker as
  ``config.validate``;
- the first commit (``greeting = hello-0``) becomes v2 and is rolled out before any case runs.

Each case drives rollouts by committing to the repository and sends open-loop load through
HAProxy (`headway.fleet.loadgen`) for as long as its rollouts run.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner, Result

from headway.cli.main import app
from headway.client.api import ApiClient
from headway.domain.models import Event, RolloutSummary
from headway.domain.spec import CanaryStrategy
from headway.fleet import local
from headway.fleet.loadgen import BackgroundLoad, LoadGenerator, LoadSettings

HOSTS = 6
ADDRESS_PREFIX = "127.0.70"
SERVICE = local.SERVICE
APP_PORT = 8080
SUBDIR = "web"
RATE = 60.0  # requests/s through HAProxy during every rollout

STRATEGY = CanaryStrategy.model_validate(
    {
        "type": "canary",
        "steps": [{"hosts": 1}, {"hosts": "50%"}, {"hosts": "100%"}],
        "min_healthy_time": "1s",
        "progress_deadline": "6s",
        "max_unavailable": 3,
    }
)

VALIDATE = ["python3", "{release_dir}/app.py", "--check-config", "{config_dir}"]

_ROLLOUT_STARTED = re.compile(r"rollout (\S+) of v(\d+) started")


def run(*args: str, env: dict[str, str]) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def run_json(*args: str, env: dict[str, str], code: int = 0) -> Any:
    result = run(*args, "--json", env=env)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return json.loads(result.stdout)


@dataclass(frozen=True)
class Commit:
    sha: str
    before: float  # wall clock just before `git commit` ran
    files: dict[str, bytes]  # the subdir's files at this commit


@dataclass(frozen=True)
class CommitRollout:
    """What the server made of one commit: its release, the rollout and the events."""

    commit: Commit
    release: int
    rollout: RolloutSummary
    events: list[Event]  # every event of the service from the commit on

    def of_kind(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def rollout_events(self) -> list[Event]:
        return [e for e in self.events if e.rollout_id == self.rollout.id]

    def revision(self) -> str:
        """The config revision id the commit became (the hosts' ``config/<id>`` directory)."""
        for event in self.of_kind("config.revision"):
            found = re.search(r"config revision ([0-9a-f]{12}) of .* from commit ([0-9a-f]+)", event.message)
            if found and self.commit.sha.startswith(found[2]):
                return found[1]
        raise AssertionError(f"no config.revision event for commit {self.commit.sha[:12]}")

    def timing(self) -> str:
        found = [e.message for e in self.of_kind("config.timing") if self.commit.sha[:12] in e.message]
        return found[-1] if found else ""


@dataclass
class ConfigFleet:
    fleet: local.Fleet
    client: ApiClient
    repo: Path
    spec: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)  # the branch head's subdir files
    released: dict[str, bytes] = field(default_factory=dict)  # those of the last commit rolled out

    @property
    def env(self) -> dict[str, str]:
        return {"HEADWAY_SERVER": self.fleet.server, "HEADWAY_TOKEN": self.fleet.token}

    def host_url(self, host: local.FleetHost) -> str:
        return f"http://{host.address}:{APP_PORT}"

    # --- the Git repository -----------------------------------------------------------------

    def commit(self, files: dict[str, str], message: str) -> Commit:
        """Write ``files`` (the whole of the subdir) and commit them to ``main``."""
        directory = self.repo / SUBDIR
        for old in directory.iterdir():
            old.unlink()
        for name, text in files.items():
            (directory / name).write_text(text, encoding="utf-8")
        git(self.repo, "add", "-A")
        before = time.time()
        git(self.repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)
        sha = git(self.repo, "rev-parse", "HEAD").strip()
        self.files = {name: text.encode("utf-8") for name, text in files.items()}
        return Commit(sha=sha, before=before, files=dict(self.files))

    # --- the service ----------------------------------------------------------------------

    def set_apply(self, mode: str) -> None:
        """Apply the service spec again with ``config.apply: mode``."""
        if self.spec["config"]["apply"] == mode:
            return
        self.spec["config"]["apply"] = mode
        self.client.apply_service(self.spec)

    def last_event_id(self) -> int:
        events = self.client.list_events(service=SERVICE)
        last = 0
        while events:
            last = events[-1].id
            events = self.client.list_events(service=SERVICE, after=last)
        return last

    def wait_commit(self, commit: Commit, after: int, timeout: float = 60.0) -> CommitRollout:
        """Wait until the rollout started for ``commit`` has ended (and its timing is out)."""
        deadline = time.monotonic() + timeout
        rollout_id = ""
        release = 0
        while True:
            events = list(self.client.iter_events(service=SERVICE, after=after))
            seen = any(e.kind == "config.detected" and commit.sha[:12] in e.message for e in events)
            if seen and not rollout_id:
                for event in events:
                    found = _ROLLOUT_STARTED.search(event.message)
                    if event.kind == "config.rollout_started" and found:
                        rollout_id, release = found[1], int(found[2])
            if rollout_id:
                summary = self.client.get_rollout(rollout_id).rollout
                timed = any(e.kind == "config.timing" and rollout_id in e.message for e in events)
                if summary.status.terminal and timed:
                    if summary.status.value == "succeeded":
                        self.released = dict(commit.files)
                    return CommitRollout(commit, release, summary, events)
            if time.monotonic() > deadline:
                kinds = [f"{e.kind}: {e.message}" for e in events[-30:]]
                raise AssertionError(
                    f"commit {commit.sha[:12]}: no ended rollout after {timeout:g}s; "
                    f"events:\n  " + "\n  ".join(kinds)
                )
            time.sleep(0.2)

    # --- the hosts ------------------------------------------------------------------------

    def app_pids(self) -> dict[str, int]:
        return {h.name: local._app_pid(h.state_dir) for h in self.fleet.hosts}

    def config_files(self, host: local.FleetHost) -> dict[str, bytes]:
        current = host.state_dir / "config" / "current"
        return {p.name: p.read_bytes() for p in sorted(current.iterdir()) if p.is_file()}

    def greetings(self) -> dict[str, str]:
        """Host name -> the first word of its ``GET /`` (its greeting), straight to the app."""
        out: dict[str, str] = {}
        with httpx.Client(timeout=5.0) as http:
            for host in self.fleet.hosts:
                response = http.get(self.host_url(host) + "/")
                assert response.status_code == 200, (host.name, response.text)
                out[host.name] = response.text.split(" from ")[0]
        return out

    def wait_greeting(self, greeting: str, timeout: float = 60.0) -> float:
        """Poll every host's ``/`` until all answer ``greeting``; the wall time the last one
        first did."""
        deadline = time.monotonic() + timeout
        first_seen: dict[str, float] = {}
        with httpx.Client(timeout=2.0) as http:
            while len(first_seen) < len(self.fleet.hosts):
                for host in self.fleet.hosts:
                    if host.name in first_seen:
                        continue
                    try:
                        text = http.get(self.host_url(host) + "/").text
                    except httpx.HTTPError:
                        continue
                    if text.startswith(f"{greeting} from "):
                        first_seen[host.name] = time.time()
                if time.monotonic() > deadline:
                    raise AssertionError(f"hosts still without {greeting!r}: "
                                         f"{sorted(set(h.name for h in self.fleet.hosts) - set(first_seen))}")
                time.sleep(0.02)
        return max(first_seen.values())

    def load(self, seed: int, duration: float = 120.0) -> BackgroundLoad:
        settings = LoadSettings(self.fleet.traffic, rate=RATE, duration=duration, slow_share=0.0,
                                seed=seed)
        return BackgroundLoad(LoadGenerator(settings))


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=False, timeout=30)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def config_section(repo: Path) -> dict[str, Any]:
    return {
        "source": {"git": {"url": str(repo), "branch": "main", "subdir": SUBDIR, "poll": "0.5s"}},
        "on_change": "release",
        "auto_rollout": True,
        "apply": "reload",
        "validate": VALIDATE,
    }


@pytest.fixture(scope="package")
def cfleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConfigFleet]:
    base = tmp_path_factory.mktemp("config-e2e")
    repo = base / "config-repo"
    (repo / SUBDIR).mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    state_dir = base / "state"
    fleet = local.fleet_up(state_dir, HOSTS, port=0, traffic_port=0,
                           address_prefix=ADDRESS_PREFIX, strategy=STRATEGY)
    try:
        with ApiClient(fleet.server, fleet.token, timeout=30.0) as client:
            spec = yaml.safe_load(fleet.spec_path.read_text("utf-8"))
            spec["config"] = config_section(repo)
            cf = ConfigFleet(fleet=fleet, client=client, repo=repo, spec=spec)
            after = cf.last_event_id()
            first = cf.commit({"app.conf": "greeting = hello-0\n"}, "first config")
            client.apply_service(spec)
            done = cf.wait_commit(first, after, timeout=90.0)
            assert done.rollout.status.value == "succeeded", done.rollout_events()
            assert set(cf.greetings().values()) == {"hello-0"}
            yield cf
    finally:
        local.fleet_down(state_dir)
