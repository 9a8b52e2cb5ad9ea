"""Config revisions on the server: storing bundles, config releases, restore, config plans.

    upload / URL / Git commit --> checked bundle in <state_dir>/configs/<hex>.tar.gz
                              --> ConfigRevision row (content-addressed, per service)
    release = artifact + config revision + params   (a config-only release reuses the artifact)

Agents fetch bundles from ``GET /api/v1/configs/<digest>`` (`bundle_url`); the
runner puts that URL in each host's desired release.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from starlette.concurrency import run_in_threadpool

from headway.domain.config_spec import ApplyMode, ConfigSpec
from headway.domain.durations import Budget
from headway.domain.models import (
    ConfigRevision,
    ConfigRevisionRef,
    ConfigSourceKind,
    Release,
)
from headway.domain.spec import (
    BlueGreenStrategy,
    CanaryStrategy,
    RollingStrategy,
    ServiceSpec,
    Strategy,
)
from headway.errors import ArtifactError, Conflict, NotFound, SpecError
from headway.server.config_bundle import BundleTooLarge, inspect_bundle
from headway.store import NewEvent, Store, Tx
from headway.store._tx_config import revision_id

TAR_SLACK = 256 * 1024  # a bundle's own tar headers, on top of config.max_bytes of contents
FETCH_TIMEOUT = 30.0  # seconds for a URL source, from connect to last byte
NO_CONFIG = "none"  # CreateRelease.config that drops the config from the new release

HOTFIX_BATCH = Budget(25, True)
HOTFIX_MIN_HEALTHY = 1.0


def bundle_url(digest: str) -> str:
    return f"/api/v1/configs/{digest}"


def config_spec_of(spec: ServiceSpec) -> ConfigSpec:
    """The service's config section, or the defaults when it has none."""
    return spec.config if spec.config is not None else ConfigSpec()


# ------------------------------------------------------------------------ bundle files


@dataclass(frozen=True)
class StoredBundle:
    digest: str
    size: int
    path: Path
    files: list[str]


class ConfigFiles:
    """Bundles kept by digest in one directory, written whole or not at all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path_for(self, digest: str) -> Path:
        return self.root / (digest.removeprefix("sha256:") + ".tar.gz")

    async def save(
        self, chunks: AsyncIterator[bytes], max_bytes: int, expected: str | None = None
    ) -> StoredBundle:
        """Stream a bundle to disk, hashing it; check it; rename it into place.

        Refused (and nothing left behind) past ``max_bytes`` of contents (plus
        `TAR_SLACK` for the tar's headers), on a digest other than ``expected``,
        or when `inspect_bundle` finds a bad name or kind of file.
        """
        limit = max_bytes + TAR_SLACK
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "w+b") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise BundleTooLarge(
                            f"the config bundle is larger than {max_bytes} bytes (config.max_bytes)",
                            hint="raise config.max_bytes in the service spec, or bake large files "
                            "into the artifact",
                        )
                    digest.update(chunk)
                    out.write(chunk)
                if size == 0:
                    raise ArtifactError("the config bundle is empty", hint="send a .tar.gz of the files")
                out.flush()
                os.fsync(out.fileno())
                out.seek(0)
                files = await run_in_threadpool(inspect_bundle, out, max_bytes)
            found = "sha256:" + digest.hexdigest()
            if expected is not None and expected != found:
                raise ArtifactError(
                    f"the config bundle's digest is {found}, not the {expected} it is pinned to",
                    hint="the URL serves other bytes than expected; check the URL and the digest",
                )
            final = self.path_for(found)
            os.replace(tmp_name, final)
            return StoredBundle(found, size, final, files)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)

    async def fetch(
        self, url: str, digest: str, max_bytes: int, timeout: float = FETCH_TIMEOUT
    ) -> StoredBundle:
        """Fetch an HTTP(S) bundle pinned by ``digest``, bounded by size and time."""
        if not url.startswith(("http://", "https://")):
            raise SpecError(
                f"config URL {url[:100]!r} is not http(s)", hint="give an http:// or https:// URL"
            )
        try:
            async with (
                asyncio.timeout(timeout),
                httpx.AsyncClient(timeout=timeout, follow_redirects=True, max_redirects=3) as http,
                http.stream("GET", url) as response,
            ):
                if response.status_code != 200:
                    raise ArtifactError(
                        f"{url} answered {response.status_code} {response.reason_phrase}",
                        hint="check that the URL serves the bundle",
                    )
                return await self.save(response.aiter_bytes(1 << 16), max_bytes, expected=digest)
        except TimeoutError:
            raise ArtifactError(
                f"fetching {url} took longer than {timeout:g}s", hint="check the server that holds the bundle"
            ) from None
        except httpx.HTTPError as error:
            raise ArtifactError(f"cannot fetch {url}: {error}", hint="check the URL and its server") from None


def record_revision(
    store: Store,
    service: str,
    bundle: StoredBundle,
    *,
    source: ConfigSourceKind,
    actor: str,
    now: float,
    origin: str = "",
    git_commit: str = "",
    committed_at: float | None = None,
) -> tuple[ConfigRevision, bool]:
    """Store the revision row (and its event); (the revision, True if it is new)."""
    revision = ConfigRevision(
        id=revision_id(bundle.digest),
        service=service,
        digest=bundle.digest,
        size=bundle.size,
        source=source,
        git_commit=git_commit,
        committed_at=committed_at,
        origin=origin,
        files=bundle.files,
        created_at=now,
        created_by=actor,
    )
    with store.tx() as tx:
        stored, created = tx.put_config_revision(revision, str(bundle.path))
        what = f"commit {git_commit[:12]}" if git_commit else (origin or "an upload")
        tx.append_events(
            [
                NewEvent(
                    ts=now,
                    kind="config.revision" if created else "config.unchanged",
                    message=(
                        f"config revision {stored.id} of {service} from {what} "
                        f"({len(stored.files)} files, {stored.size} bytes)"
                        if created
                        else f"config from {what} is revision {stored.id} of {service}, stored already"
                    ),
                    service=service,
                    actor=actor,
                )
            ]
        )
    return stored, created


# ------------------------------------------------------------------------ releases


def release_config(
    tx: Tx, service: str, requested: str | None, base: Release | None
) -> ConfigRevisionRef | None:
    """The config of a new release: ``requested`` (a revision, or ``none``), else the base's."""
    if requested is None:
        return base.config if base is not None else None
    if requested.strip().lower() == NO_CONFIG:
        return None
    return tx.get_config_revision(service, requested).ref()


def current_release(tx: Tx, service: str) -> Release | None:
    number = tx.service_current_release(service)
    return tx.get_release(service, number) if number is not None else None


def create_config_release(
    tx: Tx, service: str, revision: ConfigRevisionRef, actor: str, note: str, now: float
) -> Release | None:
    """A release with the current release's artifact and params and ``revision`` as config.

    None when the current release already carries that config. NotFound when the
    service has no current release (a config release needs an artifact to go with).
    """
    base = current_release(tx, service)
    if base is None:
        raise NotFound(
            f"{service} has no current release to take the artifact from",
            hint=f"create and roll out a first release: headway release create {service} --artifact FILE",
        )
    if base.config is not None and base.config.digest == revision.digest:
        return None
    release = tx.create_release(service, base.artifact, base.params, actor, note, now, config=revision)
    tx.append_events(
        [
            NewEvent(
                ts=now,
                kind="release.created",
                message=f"{service} v{release.number} created: config {revision.revision} "
                f"with the artifact of v{base.number}",
                service=service,
                actor=actor,
            )
        ]
    )
    return release


# ------------------------------------------------------------------------ rollouts


def config_only_reload(spec: ServiceSpec, current: Release | None, target: Release) -> bool:
    """Does going from ``current`` to ``target`` only change config that the app reloads?

    Then no host restarts (the agent writes the files and reloads the app in
    place), so hosts need not leave the load balancer: no drain, no readmit.
    Params count as part of the change: an agent restarts the app when they differ.
    """
    return (
        spec.config is not None
        and spec.config.apply is ApplyMode.RELOAD
        and current is not None
        and current.artifact.digest == target.artifact.digest
        and current.params == target.params
    )


def hotfix_strategy(strategy: Strategy) -> Strategy:
    """The service's strategy for an urgent change: bigger batches, short bakes, still verified.

    Rolling and canary become rolling in `HOTFIX_BATCH` (25%) batches; blue-green
    keeps its pools and shifts without pauses. Every host must still stay healthy
    for `HOTFIX_MIN_HEALTHY` (1 s), the verification gates still run after each
    step, and the failure budget and automatic rollback are the service's own.

    >>> from headway.domain.spec import CanaryStrategy
    >>> s = hotfix_strategy(CanaryStrategy(steps=[{"hosts": "5%"}, {"pause": "10m"}]))
    >>> s.type.value, str(s.batch_size), s.min_healthy_time
    ('rolling', '25%', 1.0)
    """
    shared = {
        "min_healthy_time": min(HOTFIX_MIN_HEALTHY, strategy.min_healthy_time),
        "progress_deadline": strategy.progress_deadline,
        "failure_budget": strategy.failure_budget,
        "auto_rollback": strategy.auto_rollback,
    }
    if isinstance(strategy, BlueGreenStrategy):
        return strategy.model_copy(update={**shared, "pause": 0.0})
    batch = HOTFIX_BATCH
    if (
        isinstance(strategy, RollingStrategy)
        and strategy.batch_size.percent
        and strategy.batch_size.value > 25
    ):
        batch = strategy.batch_size  # already bigger
    assert isinstance(strategy, RollingStrategy | CanaryStrategy)
    return RollingStrategy(batch_size=batch, max_unavailable=batch, **shared)


# ------------------------------------------------------------------------ drift


def restore_drifted(tx: Tx, service: str, active_rollout: str | None, now: float, actor: str) -> list[str]:
    """Bump the desired generation of the service's drifted hosts (same release).

    An agent whose generation changes re-applies its release; finding the files on
    disk unlike what it wrote, it writes them again. Refused while a rollout runs:
    the engine owns the hosts' generations then. Returns the hosts bumped.
    """
    tx.get_service(service)
    if active_rollout is not None:
        raise Conflict(
            f"{service} has a rollout in progress ({active_rollout}); config is not restored meanwhile",
            hint="wait for it to end (or abort it), then run `headway config restore` again",
        )
    bumped: list[str] = []
    for host in tx.list_hosts(service):
        if host.config_drift and host.desired_release is not None:
            tx.set_host_desired(host.name, host.desired_release, host.generation + 1)
            bumped.append(host.name)
    tx.append_events(
        [
            NewEvent(
                ts=now,
                kind="config.restore",
                message=(
                    f"config of {len(bumped)} drifted host(s) restored to their release: {', '.join(bumped)}"
                    if bumped
                    else f"no host of {service} reports config drift; nothing to restore"
                ),
                service=service,
                actor=actor,
            )
        ]
    )
    return bumped
