"""Follow the Git branch of each service's ``config.source.git``: commits become releases.

One background task per server (started in `create_app`'s lifespan). Every
``poll`` seconds, for each service with a Git source:

1. fetch the branch into a bare mirror under ``<state_dir>/config-git/<service>.git``
   (``git`` run with argument lists only, ``--`` before repositories and refs, no
   shell, no terminal prompt, bounded in time and output);
2. each new commit on the branch (first parent, at most `MAX_COMMITS` a poll)
   becomes a config revision: ``git archive`` of ``subdir`` at that commit, checked
   and repacked reproducibly (`config_bundle`), its commit id and time recorded;
3. with ``on_change: release``, the newest commit becomes a release (the current
   release's artifact and params, the new config), made once even when several
   servers follow the same branch (the last commit handled is swapped in the
   same transaction as the release is created);
4. with ``auto_rollout: true``, its rollout starts through the runner; a 409 because
   a rollout is active is an event, and the start is retried on the next poll.

Timing for "commit to last host applied": events ``config.detected`` (commit time
and how long ago it was), ``config.rollout_started`` and, once that rollout
ends, ``config.timing`` with every step measured from the commit time; the same
figures are kept as JSON in meta ``config_timing:<rollout id>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headway.clock import Clock
from headway.domain.config_spec import GitSource, OnChange
from headway.domain.models import ConfigRevision, ConfigSourceKind, Release, RolloutSummary
from headway.domain.spec import ServiceSpec
from headway.errors import Conflict, HeadwayError, NotFound
from headway.server.config_bundle import build_bundle, files_from_tar
from headway.server.configs import ConfigFiles, StoredBundle, create_config_release, record_revision
from headway.server.requests import StartRollout
from headway.server.runner import Runner
from headway.store import NewEvent, Store, Tx

log = logging.getLogger("headway.config.git")

MAX_COMMITS = 20  # new commits turned into revisions per poll; older ones are skipped
GIT_TIMEOUT = 60.0  # seconds for one git command
IDLE_RECHECK = 2.0  # seconds between looks at the list of services, at most

_ENV = {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}


def last_key(service: str) -> str:
    return f"config_git:{service}"


def pending_key(service: str) -> str:
    return f"config_git_pending:{service}"


def watch_key(service: str) -> str:
    return f"config_git_watch:{service}"


def timing_key(rollout_id: str) -> str:
    return f"config_timing:{rollout_id}"


class GitError(HeadwayError):
    kind = "git_failed"


@dataclass
class _Commit:
    id: str
    committed_at: float


@dataclass
class ConfigFollower:
    store: Store
    runner: Runner
    clock: Clock
    files: ConfigFiles
    mirrors: Path
    git: str = "git"
    timeout: float = GIT_TIMEOUT
    _due: dict[str, float] = field(default_factory=dict)
    _noted: dict[str, str] = field(default_factory=dict)  # "service kind" -> last message

    # -------------------------------------------------------------------- loop

    async def run(self) -> None:
        """Poll every followed service when it is due, until cancelled."""
        while True:
            await self.runner.ready.wait()  # only the leader starts config rollouts
            try:
                specs = await asyncio.to_thread(self._followed)
            except HeadwayError as error:
                log.error("cannot list services to follow their config: %s", error)
                specs = []
            now = self.clock.monotonic()
            for spec in specs:
                source = _git_source(spec)
                if source is None or self._due.get(spec.name, 0.0) > now:
                    continue
                self._due[spec.name] = now + source.poll
                await self.poll_once(spec, source)
            names = {s.name for s in specs}
            waits = [d - self.clock.monotonic() for n, d in self._due.items() if n in names]
            await asyncio.sleep(max(0.05, min([IDLE_RECHECK, *waits])))

    def _followed(self) -> list[ServiceSpec]:
        with self.store.tx() as tx:
            return [s for s in tx.list_services() if _git_source(s) is not None]

    async def poll_once(self, spec: ServiceSpec, source: GitSource) -> None:
        """One poll of one service; failures become events (once per distinct failure)."""
        try:
            await self._poll(spec, source)
            self._noted.pop(f"{spec.name} config.git_failed", None)
        except asyncio.CancelledError:
            raise
        except HeadwayError as error:
            self._note(spec.name, "config.git_failed", str(error))
        except OSError as error:
            self._note(spec.name, "config.git_failed", f"cannot run git: {error}")

    def _note(self, service: str, kind: str, message: str) -> None:
        """An event, unless the last one of this kind for the service said the same."""
        key = f"{service} {kind}"
        if self._noted.get(key) == message:
            return
        self._noted[key] = message
        log.info("config of %s: %s", service, message)
        with contextlib.suppress(HeadwayError), self.store.tx() as tx:
            tx.append_events([NewEvent(ts=self.clock.now(), kind=kind, message=message, service=service)])

    # -------------------------------------------------------------------- one poll

    async def _poll(self, spec: ServiceSpec, source: GitSource) -> None:
        mirror = await self._mirror(spec.name)
        await self._run(
            "-C", str(mirror), "fetch", "--quiet", "--no-tags", "--force", "--",
            source.url, f"+refs/heads/{source.branch}:refs/heads/{source.branch}",
        )  # fmt: skip
        head = (await self._run("-C", str(mirror), "rev-parse", "--verify", "--quiet", "--end-of-options",
                                f"refs/heads/{source.branch}^{{commit}}")).decode().strip()  # fmt: skip
        with self.store.tx() as tx:
            last = tx.get_meta(last_key(spec.name))
        if head != last:
            await self._new_commits(spec, source, mirror, last, head)
        await self._retry_pending(spec)
        await asyncio.to_thread(self._report_timing, spec.name)

    async def _mirror(self, service: str) -> Path:
        mirror = self.mirrors / f"{service}.git"
        if not (mirror / "HEAD").exists():
            self.mirrors.mkdir(parents=True, exist_ok=True)
            await self._run("init", "--quiet", "--bare", "--", str(mirror))
        return mirror

    async def _new_commits(
        self, spec: ServiceSpec, source: GitSource, mirror: Path, last: str | None, head: str
    ) -> None:
        detected_at = self.clock.now()
        with self.store.tx() as tx:
            current = tx.service_current_release(spec.name)
        if current is None and spec.config is not None and spec.config.on_change is OnChange.RELEASE:
            self._note(
                spec.name,
                "config.waiting",
                f"commit {head[:12]} waits for a first release of {spec.name} (the artifact to go with it)",
            )
            return  # looked at again on each poll; nothing is marked handled
        ids = [head]
        if last:
            try:
                listed = await self._run(
                    "-C", str(mirror), "rev-list", "--first-parent", "--reverse",
                    f"--max-count={MAX_COMMITS}", f"{last}..{head}", "--",
                )  # fmt: skip
                ids = listed.decode().split() or [head]
            except GitError:
                ids = [head]  # the old commit is gone (a force push): start from the head
        revision = None
        head_commit = _Commit(head, detected_at)
        for commit_id in ids:
            commit = await self._commit(mirror, commit_id)
            if commit_id == head:
                head_commit = commit
            try:
                bundle = await self._bundle(mirror, commit_id, source, spec)
            except HeadwayError as error:
                self._note(spec.name, "config.git_refused", f"commit {commit_id[:12]} refused: {error}")
                continue
            stored, _created = await asyncio.to_thread(
                record_revision,
                self.store,
                spec.name,
                bundle,
                source=ConfigSourceKind.GIT,
                actor=f"git:{commit_id[:12]}",
                now=self.clock.now(),
                origin=source.url,
                git_commit=commit_id,
                committed_at=commit.committed_at,
            )
            if commit_id == head:
                revision = stored
        release = await asyncio.to_thread(
            self._release, spec, source, last, head_commit, revision, detected_at
        )
        if release is not None and spec.config is not None and spec.config.auto_rollout:
            await self._start(spec.name, release.number, head_commit.id)

    def _release(
        self,
        spec: ServiceSpec,
        source: GitSource,
        last: str | None,
        commit: _Commit,
        revision: ConfigRevision | None,
        detected_at: float,
    ) -> Release | None:
        """Mark ``commit`` handled and, per ``on_change``, make its release; in one transaction."""
        now = self.clock.now()
        with self.store.tx() as tx:
            if not tx.swap_meta(last_key(spec.name), last, commit.id):
                return None  # another server handled this commit
            tx.append_events(
                [
                    NewEvent(
                        ts=now,
                        kind="config.detected",
                        message=f"commit {commit.id[:12]} on {source.branch} committed at "
                        f"{commit.committed_at:.0f}, seen {detected_at - commit.committed_at:.1f}s later",
                        service=spec.name,
                        actor=f"git:{commit.id[:12]}",
                    )
                ]
            )
            if revision is None or spec.config is None or spec.config.on_change is not OnChange.RELEASE:
                return None
            try:
                release = create_config_release(
                    tx,
                    spec.name,
                    revision.ref(),
                    f"git:{commit.id[:12]}",
                    f"config commit {commit.id[:12]}",
                    now,
                )
            except NotFound as error:
                tx.append_events(
                    [NewEvent(ts=now, kind="config.no_release", message=str(error), service=spec.name)]
                )
                return None
            if release is None:
                return None
            tx.set_meta(
                timing_key(f"{spec.name}-v{release.number}"),
                json.dumps(
                    {
                        "commit": commit.id,
                        "committed_at": commit.committed_at,
                        "detected_at": detected_at,
                        "release": release.number,
                        "release_at": now,
                    }
                ),
            )
            if spec.config.auto_rollout:
                tx.set_meta(
                    pending_key(spec.name), json.dumps({"release": release.number, "commit": commit.id})
                )
            return release

    async def _start(self, service: str, number: int, commit: str) -> bool:
        """Start the rollout of ``number``; on a refusal (a rollout is active, no hosts yet)
        it stays pending and is tried again on the next poll."""
        try:
            summary = await self.runner.call(
                StartRollout(service, number, f"git:{commit[:12]}", note=f"config commit {commit[:12]}")
            )
        except Conflict as error:
            self._note(
                service, "config.rollout_deferred", f"v{number} waits for the next poll: {error.message}"
            )
            return False
        except HeadwayError as error:
            self._note(service, "config.rollout_deferred", f"v{number} could not start yet: {error}")
            return False
        self._noted.pop(f"{service} config.rollout_deferred", None)
        await asyncio.to_thread(self._started, service, number, summary.id, summary.created_at)
        return True

    def _started(self, service: str, number: int, rollout_id: str, started_at: float) -> None:
        with self.store.tx() as tx:
            tx.delete_meta(pending_key(service))
            watched = json.loads(tx.get_meta(watch_key(service)) or "[]")
            tx.set_meta(watch_key(service), json.dumps([*watched, rollout_id][-20:]))
            raw = tx.get_meta(timing_key(f"{service}-v{number}"))
            timing = json.loads(raw) if raw else {}
            timing.update({"rollout": rollout_id, "rollout_started_at": started_at})
            tx.set_meta(timing_key(rollout_id), json.dumps(timing))
            since = (
                f", {started_at - timing['committed_at']:.1f}s after the commit"
                if "committed_at" in timing
                else ""
            )
            tx.append_events(
                [
                    NewEvent(
                        ts=started_at,
                        kind="config.rollout_started",
                        message=f"rollout {rollout_id} of v{number} started{since}",
                        service=service,
                        rollout_id=rollout_id,
                    )
                ]
            )

    async def _retry_pending(self, spec: ServiceSpec) -> None:
        with self.store.tx() as tx:
            raw = tx.get_meta(pending_key(spec.name))
            current = tx.service_current_release(spec.name)
        if raw is None:
            return
        pending = json.loads(raw)
        number = int(pending["release"])
        if current is not None and current >= number:
            with self.store.tx() as tx:
                tx.delete_meta(pending_key(spec.name))
            return
        if spec.name in self.runner.by_service:
            return  # still busy: try on the next poll
        await self._start(spec.name, number, str(pending["commit"]))

    def _report_timing(self, service: str) -> None:
        """For each rollout a commit started that has ended: its ``config.timing`` event."""
        with self.store.tx() as tx:
            watched: list[str] = json.loads(tx.get_meta(watch_key(service)) or "[]")
            if not watched:
                return
            left = []
            for rollout_id in watched:
                summary, _state = tx.get_rollout(rollout_id)
                if summary.status.terminal:
                    self._timing_event(tx, service, summary)
                else:
                    left.append(rollout_id)
            if left:
                tx.set_meta(watch_key(service), json.dumps(left))
            else:
                tx.delete_meta(watch_key(service))

    def _timing_event(self, tx: Tx, service: str, summary: RolloutSummary) -> None:
        rollout_id = summary.id
        raw = tx.get_meta(timing_key(rollout_id))
        timing: dict[str, Any] = json.loads(raw) if raw else {}
        timing.update({"ended_at": summary.updated_at, "status": summary.status.value})
        tx.set_meta(timing_key(rollout_id), json.dumps(timing))
        base = timing.get("committed_at")
        steps = ", ".join(
            f"{label} +{timing[key] - base:.1f}s"
            for label, key in (
                ("seen", "detected_at"),
                ("release", "release_at"),
                ("rollout start", "rollout_started_at"),
                ("last host", "ended_at"),
            )
            if base is not None and key in timing
        )
        tx.append_events(
            [
                NewEvent(
                    ts=self.clock.now(),
                    kind="config.timing",
                    message=f"commit {str(timing.get('commit', '?'))[:12]}: rollout {rollout_id} "
                    f"{summary.status.value}; from the commit: {steps}",
                    service=service,
                    rollout_id=rollout_id,
                )
            ]
        )

    # -------------------------------------------------------------------- git

    async def _commit(self, mirror: Path, commit_id: str) -> _Commit:
        out = await self._run("-C", str(mirror), "log", "-1", "--format=%H%x00%ct", commit_id, "--")
        full, _, when = out.decode().strip().partition("\0")
        return _Commit(full or commit_id, float(when or 0))

    async def _bundle(
        self, mirror: Path, commit_id: str, source: GitSource, spec: ServiceSpec
    ) -> StoredBundle:
        max_bytes = spec.config.max_bytes if spec.config is not None else 1 << 20
        subdir = source.subdir.strip("/")
        tree = f"{commit_id}:{subdir}" if subdir else f"{commit_id}^{{tree}}"
        tar = await self._run(
            "-C", str(mirror), "archive", "--format=tar", "--", tree, limit=2 * max_bytes + (1 << 20)
        )
        files = await asyncio.to_thread(files_from_tar, tar, max_bytes)
        if not files:
            raise GitError(f"{source.subdir or 'the repository'} holds no files at commit {commit_id[:12]}")
        data = build_bundle(files)
        return await self.files.save(_once(data), max_bytes)

    async def _run(self, *args: str, limit: int = 1 << 20) -> bytes:
        """``git -c protocol.ext.allow=never ARGS``: its stdout; GitError on failure."""
        proc = await asyncio.create_subprocess_exec(
            self.git,
            "-c",
            "protocol.ext.allow=never",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **_ENV},
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(self.timeout):
                out, err = await asyncio.gather(_read(proc.stdout, limit), _read(proc.stderr, 1 << 16))
                code = await proc.wait()
        except TimeoutError:
            raise GitError(f"git {_verb(args)} took longer than {self.timeout:g}s") from None
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if code != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise GitError(
                f"git {_verb(args)} failed: {lines[-1] if lines else f'exit {code}'}",
                hint="check config.source.git (url, branch, subdir) and that the server can read it",
            )
        return out


class _Overflow(GitError):
    pass


async def _read(stream: asyncio.StreamReader, limit: int) -> bytes:
    buf = bytearray()
    while chunk := await stream.read(1 << 16):
        buf += chunk
        if len(buf) > limit:
            raise _Overflow(f"git output is over {limit} bytes", hint="make the config directory smaller")
    return bytes(buf)


def _verb(args: tuple[str, ...]) -> str:
    return args[2] if args[:1] == ("-C",) and len(args) > 2 else args[0]


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _git_source(spec: ServiceSpec) -> GitSource | None:
    return spec.config.source.git if spec.config is not None else None


def start_config_follower(store: Store, runner: Runner, clock: Clock, state_dir: Path) -> asyncio.Task[None]:
    """The follower as a background task of the server (cancel it to stop)."""
    follower = ConfigFollower(
        store, runner, clock, ConfigFiles(state_dir / "configs"), state_dir / "config-git"
    )
    return asyncio.create_task(follower.run(), name="headway-config-git")
