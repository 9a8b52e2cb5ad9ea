"""Harness of the config server tests: a real server process, simulated agents that write
config files, a real Git repository, and stores of both backends.

`ConfigSimAgent` extends `headway.sim.agents.SimAgent` here only (the shared simulator is
not changed): for a desired release with a config bundle it fetches the bundle with the
agent token, checks its digest, writes its files under its own directory and reports the
hash it wrote (``config_applied``) and the hash on disk (``config_on_disk``). A release
that changes only config is applied without a restart (counted as a reload); when the
desired generation changes and the files on disk differ from what it wrote, it writes
them again (restore), as the real agent does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import shutil
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import sqlalchemy as sa
from websockets.asyncio.client import ClientConnection

from headway.domain.models import Health
from headway.protocol.messages import ConfigBundle, Desired, Observation, Report
from headway.sim.agents import SimAgent, SimAgentConfig
from headway.store import Store
from headway.testing.server_process import ServerProcess, start_server

T = TypeVar("T")
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def files_hash(root: Path) -> str:
    """sha256 over (path, contents) of every file under ``root``, sorted; "" if none."""
    if not root.is_dir():
        return ""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return "sha256:" + digest.hexdigest()


@dataclass
class ConfigSimAgent(SimAgent):
    root: Path = Path(".")
    config_digest: str = ""
    config_applied: str = ""
    artifact: str = ""
    params: dict[str, str] = field(default_factory=dict)
    reloads: int = 0
    rewrites: int = 0
    serve_seen: list[bool] = field(default_factory=list)
    bundles_fetched: list[str] = field(default_factory=list)
    _ws: ClientConnection | None = None

    @property
    def config_dir(self) -> Path:
        return self.root / self.name / "config"

    def observation(self) -> Observation:
        return Observation(
            release=self.release,
            generation=self.generation,
            health=self.health,
            config_applied=self.config_applied,
            config_on_disk=files_hash(self.config_dir) if self.config_applied else "",
        )

    async def _session(self, ws: ClientConnection, rng: Any) -> None:
        self._ws = ws
        await super()._session(ws, rng)

    async def report(self) -> None:
        """Send a report now (as the real agent's heartbeat would)."""
        assert self._ws is not None
        await self._ws.send(Report(observed=self.observation()).model_dump_json())

    async def _fetch(self, bundle: ConfigBundle) -> bytes:
        async with httpx.AsyncClient(base_url=self.config.server, timeout=10) as http:
            response = await http.get(bundle.url, headers={"Authorization": f"Bearer {self.config.token}"})
        response.raise_for_status()
        data = response.content
        assert "sha256:" + hashlib.sha256(data).hexdigest() == bundle.digest
        self.bundles_fetched.append(bundle.revision)
        return data

    def _write(self, data: bytes) -> None:
        shutil.rmtree(self.config_dir, ignore_errors=True)
        self.config_dir.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                assert member.isreg()
                target = self.config_dir / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                handle = tar.extractfile(member)
                assert handle is not None
                target.write_bytes(handle.read())
        self.config_applied = files_hash(self.config_dir)

    async def _converge(self, ws: ClientConnection, desired: Desired, rng: Any) -> None:
        number = desired.release.number if desired.release else None
        self.desired_seen.append((number, desired.generation))
        self.serve_seen.append(desired.serve)
        if desired.release is None:
            self.generation = desired.generation
            await ws.send(Report(observed=self.observation()).model_dump_json())
            return
        release = desired.release
        bundle = release.config
        new_binary = (release.artifact.digest, release.params) != (self.artifact, self.params)
        new_config = (bundle.digest if bundle else "") != self.config_digest
        if number != self.release and new_binary:
            self.health = Health.STARTING
            await ws.send(Report(observed=self.observation()).model_dump_json())
            await asyncio.sleep(self.config.restart_time)
            self.restarts += 1
        if bundle is None:
            shutil.rmtree(self.config_dir, ignore_errors=True)
            self.config_applied = ""
        elif new_config or (
            desired.generation != self.generation and files_hash(self.config_dir) != self.config_applied
        ):
            data = await self._fetch(bundle)
            self._write(data)
            if not new_config:
                self.rewrites += 1  # drift restored
            elif not new_binary:
                self.reloads += 1  # config only: applied in place
        self.config_digest = bundle.digest if bundle else ""
        self.artifact, self.params = release.artifact.digest, dict(release.params)
        self.release = number
        self.health = Health.HEALTHY
        self.generation = desired.generation
        await ws.send(Report(observed=self.observation()).model_dump_json())


class Fleet:
    """Simulated agents on their own event loop in a thread; tests stay synchronous."""

    def __init__(
        self, server: ServerProcess, root: Path, n: int, *, subnet: str, service: str = "web"
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        config = SimAgentConfig(server.url, server.tokens["agent"], service, restart_time=0.05)
        self.agents = [
            ConfigSimAgent(f"{service}-{i:02d}", f"{subnet}.{i + 1}", config, root=root) for i in range(n)
        ]
        self.tasks: list[asyncio.Task[None]] = []

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> Fleet:
        self.thread.start()

        async def start() -> None:
            self.tasks = [asyncio.create_task(a.run()) for a in self.agents]
            await asyncio.wait_for(asyncio.gather(*(a.connected.wait() for a in self.agents)), 20)

        self.call(start())
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def by_name(self, name: str) -> ConfigSimAgent:
        return next(a for a in self.agents if a.name == name)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path / "server")
    yield proc
    proc.stop()


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.invalid", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A real Git repository on branch main (no commits yet)."""
    path = tmp_path / "config-repo"
    path.mkdir()
    git(path, "init", "--quiet", "--initial-branch=main")
    return path


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated store on each backend (PostgreSQL: a fresh schema, dropped afterwards)."""
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'state' / 'headway.db'}")
        s.migrate()
        yield s
        s.close()
        return
    schema = f"hw_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        s = Store(f"{POSTGRES_URL}?options=-csearch_path%3D{schema}")
        s.migrate()
        yield s
        s.close()
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()
