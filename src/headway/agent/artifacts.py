"""Release tarballs on the host: fetch and verify, keep a cache, stage into release directories.

    state_dir/artifacts/<sha256 hex>.tar.gz   verified downloads (reused on rollback)
    state_dir/releases/v<N>-<hex12>/          extracted releases; the newest few are kept

A download streams into a ``.part`` file, hashing as it goes; it never
reads past the size the release declares and must finish within a time
bound. Only a file whose size and digest match becomes a cache entry.

Where from: an absolute URL as it is; a server-relative one (``/api/v1/...``,
or none: ``default_path`` + digest) from the agent's servers (`ServerList`),
the one its channel uses now first. A server may keep uploaded files in a
state directory the others do not see, so when that one is unreachable,
answers 5xx or 404, the others are tried in turn; the time bound covers all
the tries. The agent token goes only to the agent's own servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import posixpath
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from headway.agent import httpget
from headway.agent.servers import ServerList
from headway.agent.target import Target, release_dir_name
from headway.clock import Clock
from headway.errors import ArtifactError, ServerUnreachable

log = logging.getLogger("headway.agent")

KEEP_RELEASES = 3
MIN_RATE = 256 * 1024          # bytes/s a download must average (on top of BASE_TIME)
BASE_TIME = 30.0               # seconds any download may take
MAX_UNPACKED = 4 << 30         # bytes a release may unpack to


def download_deadline(size: int) -> float:
    """Seconds a download of ``size`` bytes may take: 30 s plus 256 KiB/s."""
    return BASE_TIME + size / MIN_RATE


class Blob(Protocol):
    """A tarball pinned by digest: an `ArtifactRef` or a `ConfigBundle`."""

    @property
    def digest(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def url(self) -> str: ...


class _Missing(ArtifactError):
    """HTTP 404 from one server: another of the agent's servers may hold the file."""


class ArtifactCache:
    """Verified downloads kept by digest; ``kind`` names them in errors ("artifact",
    "config bundle") and ``subdir`` is their directory in the state directory.
    ``server`` is one base URL or the agent's `ServerList` (shared with its channel)."""

    def __init__(self, state_dir: Path, server: str | ServerList, token: str, clock: Clock, *,
                 subdir: str = "artifacts", kind: str = "artifact",
                 default_path: str = "/api/v1/artifacts/") -> None:
        self.artifacts = state_dir / subdir
        self.releases = state_dir / "releases"
        self.servers = server if isinstance(server, ServerList) else ServerList([server])
        self.token = token
        self.clock = clock
        self.kind = kind
        self.default_path = default_path
        self.downloads = 0           # completed fetches from the network (for logs and tests)

    # ---- fetch ---------------------------------------------------------------------------

    @property
    def server(self) -> str:
        """The server downloads start from: the one the agent's channel uses now."""
        return self.servers.current

    def urls_for(self, ref: Blob) -> list[str]:
        """Where to fetch ``ref`` from, in order (see the module's docstring)."""
        if ref.url and not ref.url.startswith("/"):
            return [ref.url]
        path = ref.url or f"{self.default_path}{ref.digest}"
        return [server + path for server in self.servers.in_order()]

    def url_for(self, ref: Blob) -> str:
        return self.urls_for(ref)[0]

    def cached_path(self, ref: Blob) -> Path:
        return self.artifacts / f"{ref.digest.removeprefix('sha256:')}.tar.gz"

    def is_cached(self, ref: Blob) -> bool:
        return self._verified(self.cached_path(ref), ref)

    def _verified(self, path: Path, ref: Blob) -> bool:
        try:
            if path.stat().st_size != ref.size:
                return False
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError:
            return False
        return f"sha256:{digest.hexdigest()}" == ref.digest

    async def fetch(self, ref: Blob, what: str) -> Path:
        """The verified tarball for ``ref``, from the cache or the network.

        Raises `ArtifactError` for a definitive failure (digest mismatch,
        truncation, oversize, too slow, refused) and `ServerUnreachable` when
        the source cannot be reached right now (worth retrying).
        """
        path = self.cached_path(ref)
        if await asyncio.to_thread(self._verified, path, ref):
            return path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.artifacts.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f"{path.name}.{os.getpid()}.part")
        deadline = download_deadline(ref.size)
        try:
            async with asyncio.timeout(deadline):
                await self._download_any(ref, part, what)
        except TimeoutError:
            part.unlink(missing_ok=True)
            raise ArtifactError(
                f"{self.kind} for {what} did not arrive within {deadline:.0f}s "
                f"({ref.size} bytes); the download was abandoned",
                hint=f"check the {self.kind} source's speed, or publish a smaller {self.kind}",
            ) from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, path)
        self.downloads += 1
        return path

    async def _download_any(self, ref: Blob, part: Path, what: str) -> None:
        """`_download` from each URL of `urls_for` in turn until one serves the file.

        Unreachable (or 5xx) and 404 move on to the next server; anything else (a
        refused token, a digest mismatch, ...) is definitive. When none served it,
        raise `ServerUnreachable` if any of them was unreachable (worth retrying: the
        one holding the file may come back), else the first 404.
        """
        urls = self.urls_for(ref)
        unreachable: ServerUnreachable | None = None
        missing: _Missing | None = None
        for n, url in enumerate(urls):
            try:
                await self._download(ref, part, what, url)
                return
            except ServerUnreachable as error:
                unreachable = unreachable or error
                problem = error.message
            except _Missing as error:
                missing = missing or error
                problem = error.message
            if n + 1 < len(urls):
                log.info("%s; trying %s", problem, urls[n + 1])
        failure = unreachable or missing
        assert failure is not None
        raise failure

    async def _download(self, ref: Blob, part: Path, what: str, url: str) -> None:
        kind = self.kind
        headers = {"Accept-Encoding": "identity"}
        if self.token and any(_same_origin(url, server) for server in self.servers.urls):
            headers["Authorization"] = f"Bearer {self.token}"   # never leak it to other hosts
        hasher = hashlib.sha256()
        received = 0
        try:
            response = await httpget.get(url, headers)
        except httpget.ConnectFailed as error:
            raise ServerUnreachable(
                f"{kind} source unreachable for {what} ({error})", hint="the agent retries"
            ) from None
        except (httpget.BrokenResponse, ValueError) as error:
            raise ArtifactError(f"{kind} for {what}: bad answer from {url}: {error}") from None
        try:
            if response.status >= 500:
                raise ServerUnreachable(
                    f"{kind} source answered HTTP {response.status} for {what}",
                    hint="the agent retries; check the server's log",
                )
            if response.status == 404:
                raise _Missing(
                    f"{kind} for {what} cannot be fetched: HTTP 404 from {url}",
                    hint=f"check that the release's {kind} still exists",
                )
            if response.status != 200:
                hint = "check --token" if response.status in (401, 403) else ""
                raise ArtifactError(
                    f"{kind} for {what} cannot be fetched: HTTP {response.status} from {url}",
                    hint=hint or f"check that the release's {kind} still exists",
                )
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > ref.size:
                raise _oversize(kind, what, ref, int(declared))
            with part.open("wb") as handle:
                async for chunk in response.body():
                    received += len(chunk)
                    if received > ref.size:
                        raise _oversize(kind, what, ref, received)
                    hasher.update(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
        except httpget.BrokenResponse as error:
            raise ArtifactError(
                f"{kind} for {what} truncated or broken in transit after {received} of "
                f"{ref.size} bytes ({error}); digest mismatch assumed",
                hint=f"the agent will not use it; check the {kind} source",
            ) from None
        finally:
            await response.close()
        if received != ref.size:
            raise ArtifactError(
                f"{kind} for {what} truncated: got {received} of {ref.size} bytes; "
                "digest mismatch",
                hint=f"the agent will not use it; check the {kind} source",
            )
        actual = f"sha256:{hasher.hexdigest()}"
        if actual != ref.digest:
            raise ArtifactError(
                f"{kind} for {what} digest mismatch: expected {ref.digest}, got {actual}",
                hint=f"the {kind} was altered or corrupted; republish it as a new release",
            )

    # ---- stage ---------------------------------------------------------------------------

    def release_dir(self, target: Target) -> Path:
        return self.releases / target.dir_name

    def is_staged(self, target: Target) -> bool:
        return self.release_dir(target).is_dir()

    def stage(self, target: Target, tarball: Path) -> Path:
        """Extract ``tarball`` into the release directory (once; an existing one is reused)."""
        final = self.release_dir(target)
        if final.is_dir():
            return final
        self.releases.mkdir(parents=True, exist_ok=True)
        tmp = self.releases / f".staging-{target.dir_name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            safe_extract(tarball, tmp, f"v{target.number}")
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def touch(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            os.utime(path)

    def prune(self, keep: set[str]) -> None:
        """Keep the `KEEP_RELEASES` newest release directories (and ``keep``), drop the rest."""
        if not self.releases.is_dir():
            return
        dirs = [p for p in self.releases.iterdir() if p.is_dir() and not p.name.startswith(".")]
        dirs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        kept = {p.name for p in dirs[:KEEP_RELEASES]} | keep
        for path in dirs:
            if path.name not in kept:
                shutil.rmtree(path, ignore_errors=True)
        prefixes = {name.partition("-")[2] for name in kept}
        if self.artifacts.is_dir():
            for file in self.artifacts.iterdir():
                if file.name.endswith(".tar.gz") and file.name[:12] not in prefixes:
                    file.unlink(missing_ok=True)

    def clean_partials(self) -> None:
        """Remove half-made downloads and stagings a crash left behind."""
        if self.artifacts.is_dir():
            for file in self.artifacts.glob("*.part"):
                file.unlink(missing_ok=True)
        if self.releases.is_dir():
            for path in self.releases.glob(".staging-*"):
                shutil.rmtree(path, ignore_errors=True)


def _oversize(kind: str, what: str, ref: Blob, seen: int) -> ArtifactError:
    return ArtifactError(
        f"{kind} for {what} is larger than its declared {ref.size} bytes (at least {seen}); "
        "digest mismatch assumed, download abandoned",
        hint=f"the {kind} source serves a different file; republish the release",
    )


def _same_origin(url: str, server: str) -> bool:
    a, b = urlsplit(url), urlsplit(server)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def safe_extract(
    tarball: Path, dest: Path, what: str = "release", *, kind: str = "artifact",
    strict: bool = False, max_unpacked: int = MAX_UNPACKED,
) -> None:
    """Extract into ``dest``, refusing anything that could land outside it.

    Absolute names, ``..`` components, links pointing outside, devices and
    FIFOs are refused with an `ArtifactError` naming the entry; then the
    standard library's ``data`` filter extracts (and checks again). ``strict``
    (config bundles) also refuses every link and control characters in names.
    """
    try:
        with tarfile.open(tarball, "r:*") as tar:
            members = tar.getmembers()
            total = 0
            for member in members:
                _check_member(member, what, kind, strict)
                total += max(member.size, 0)
                if total > max_unpacked:
                    raise ArtifactError(
                        f"{kind} for {what} unpacks to more than {_bytes(max_unpacked)}",
                        hint=f"publish a smaller {kind}",
                    )
            tar.extractall(dest, members=members, filter="data")
    except ArtifactError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as error:
        raise ArtifactError(
            f"{kind} for {what} is not a valid or safe tarball: {error}",
            hint="build it with 'headway' tooling or plain 'tar czf', relative paths only",
        ) from None


def _bytes(n: int) -> str:
    if n >= 1 << 30 and n % (1 << 30) == 0:
        return f"{n >> 30} GiB"
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    return f"{n} bytes"


def _check_member(member: tarfile.TarInfo, what: str, kind: str, strict: bool) -> None:
    name = member.name
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts:
        raise ArtifactError(
            f"{kind} for {what} holds an unsafe path {name!r} (absolute or with '..')",
            hint=f"a {kind} must hold relative paths inside it",
        )
    if strict and any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ArtifactError(
            f"{kind} for {what} holds a name with control characters {name!r}",
            hint="rename the file",
        )
    if member.isdev() or member.isfifo():
        raise ArtifactError(
            f"{kind} for {what} holds a device or FIFO {name!r}",
            hint=f"a {kind} may hold only files, directories and links inside it",
        )
    if strict and (member.issym() or member.islnk()):
        raise ArtifactError(
            f"{kind} for {what} holds a link {name!r} -> {member.linkname!r}; links are refused",
            hint=f"a {kind} may hold only plain files and directories",
        )
    if member.issym() or member.islnk():
        link = member.linkname
        base = posixpath.dirname("/".join(parts)) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, link))
        if link.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise ArtifactError(
                f"{kind} for {what} holds a link {name!r} -> {link!r} that points outside it",
                hint=f"links in a {kind} must stay inside it",
            )


__all__ = ["ArtifactCache", "Blob", "download_deadline", "release_dir_name", "safe_extract"]
