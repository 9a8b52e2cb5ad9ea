"""A release's configuration on the host: fetch, stage, fill, validate, activate, keep, hash.

    state_dir/config-bundles/<hex>.tar.gz     verified bundles by digest (a rollback re-downloads
                                              nothing)
    state_dir/config/.staging-<hex12>-<pid>/  a bundle being extracted, filled and validated
    state_dir/config/<hex12>/                 activated revisions; the last `KEEP_REVISIONS` kept
    state_dir/config/<hex12>.json             digest, revision and hash of what was written
    state_dir/config/current -> <hex12>       the active revision: the app's HEADWAY_CONFIG_DIR

A bundle is fetched like an artifact (bearer token, bounded by its declared size, by
``config.max_bytes`` and by time, sha256 verified before use) and extracted strictly: no
absolute paths, no ``..``, no links of any kind, no devices, no control characters in
names. Files lose their execute bits. In UTF-8 text files exactly ``{{host}}``,
``{{address}}``, ``{{port}}`` and ``{{label.NAME}}`` (of a label the agent has) are filled
in one pass; anything else is left as it is and nothing is executed.

``config.validate`` runs on the staged copy (``{config_dir}``: the staged directory,
``{release_dir}``: the release's directory; a relative program path like
``./check-config`` is the release's file, never the bundle's; cwd: the staged
directory). A non-zero exit refuses the revision; its last lines of output say why.

Activation moves each staged file into ``config/<hex12>/`` by rename after an fsync
(files the revision does not hold are removed), records the hash, then flips the
``current`` link in one rename, so ``current`` always names a complete revision.

The config hash (drift): sha256 over the revision's entries in sorted order of their
relative POSIX paths, each as ``path NUL "file" NUL size NUL contents`` (or ``path NUL
"link" NUL target NUL`` for a link someone made by hand), written ``sha256:<hex>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from headway.agent.artifacts import ArtifactCache, safe_extract
from headway.agent.files import atomic_symlink, atomic_write_json, fsync_dir, read_json
from headway.agent.servers import ServerList
from headway.clock import Clock
from headway.domain.config_spec import ConfigSpec
from headway.errors import ArtifactError
from headway.protocol.messages import ConfigBundle

log = logging.getLogger("headway.agent")

KIND = "config bundle"
KEEP_REVISIONS = 3
UNPACK_FACTOR = 32             # a bundle may unpack to 32 times config.max_bytes
MIN_UNPACKED = 1 << 20
VALIDATE_TIMEOUT = 60.0        # seconds config.validate may run
OUTPUT_TAIL = 16 * 1024        # bytes of the validator's output kept
TAIL_LINES = 5
CURRENT = "current"

_PLACEHOLDER = re.compile(r"\{\{(host|address|port|label\.[^{}\s]+)\}\}")

Signature = tuple[str, tuple[tuple[str, int, int, int, int, int], ...]]


def short(bundle: ConfigBundle) -> str:
    """``<hex12>``: the revision's directory name on the host."""
    return bundle.digest.removeprefix("sha256:")[:12]


def label_of(bundle: ConfigBundle) -> str:
    """How people know the revision: its revision id, else the start of its digest."""
    return bundle.revision or short(bundle)


def fill_values(host: str, address: str, port: int, labels: dict[str, str]) -> dict[str, str]:
    values = {"host": host, "address": address, "port": str(port)}
    values.update({f"label.{key}": value for key, value in labels.items()})
    return values


def fill_text(text: str, values: dict[str, str]) -> str:
    """One pass over ``text``: known placeholders filled, everything else left as it is."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def _walk(root: Path) -> list[tuple[str, os.stat_result]]:
    """(relative POSIX path, lstat) of everything under ``root``, links not followed."""
    found: list[tuple[str, os.stat_result]] = []

    def visit(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                rel = f"{prefix}{entry.name}"
                info = entry.stat(follow_symlinks=False)
                found.append((rel, info))
                if stat.S_ISDIR(info.st_mode):
                    visit(Path(entry.path), rel + "/")

    visit(root, "")
    found.sort(key=lambda item: item[0])
    return found


def tree_hash(root: Path) -> str:
    """The config hash of the files under ``root`` ("" when it is not a directory)."""
    try:
        entries = _walk(root)
    except OSError:
        return ""
    digest = hashlib.sha256()
    for rel, info in entries:
        name = rel.encode("utf-8", "surrogateescape")
        if stat.S_ISREG(info.st_mode):
            try:
                data = (root / rel).read_bytes()
            except OSError:
                data = b""
            digest.update(name + b"\0file\0" + str(len(data)).encode() + b"\0" + data)
        elif stat.S_ISLNK(info.st_mode):
            with contextlib.suppress(OSError):
                target = os.readlink(root / rel).encode("utf-8", "surrogateescape")
                digest.update(name + b"\0link\0" + target + b"\0")
    return f"sha256:{digest.hexdigest()}"


def last_lines(output: str, count: int = TAIL_LINES, limit: int = 600) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    text = " | ".join(lines[-count:])
    return text if len(text) <= limit else "..." + text[-limit:]


async def run_capturing(
    argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float
) -> tuple[int | None, str, str]:
    """Run ``argv``; (exit code or None, what went wrong, the tail of its output)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    except OSError as error:
        return None, f"cannot run {argv[0]!r}: {error.strerror or error}", ""
    tail = bytearray()

    async def drain() -> int:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            tail.extend(chunk)
            del tail[:-OUTPUT_TAIL]
        return await proc.wait()

    try:
        async with asyncio.timeout(timeout):
            code = await drain()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return None, f"timed out after {timeout:g}s", tail.decode("utf-8", "replace")
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    detail = "" if code == 0 else f"exited with code {code}"
    return code, detail, tail.decode("utf-8", "replace")


@dataclass
class Staged:
    """A bundle extracted and filled in a private directory, not active yet."""

    path: Path
    bundle: ConfigBundle
    files: int = 0

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class ConfigStore:
    def __init__(self, state_dir: Path, server: str | ServerList, token: str, clock: Clock) -> None:
        self.root = state_dir / "config"
        self.current = self.root / CURRENT
        self.bundles = ArtifactCache(state_dir, server, token, clock, subdir="config-bundles",
                                     kind=KIND, default_path="/api/v1/configs/")
        self._signature: Signature | None = None
        self._signature_hash = ""
        self._stagings = 0

    # ---- fetch and stage -----------------------------------------------------------------

    async def fetch(self, bundle: ConfigBundle, spec: ConfigSpec, what: str) -> Path:
        """The verified bundle, from the cache or the server (see `ArtifactCache.fetch`)."""
        if bundle.size > spec.max_bytes:
            raise ArtifactError(
                f"{KIND} for {what} is {bundle.size} bytes, more than config.max_bytes "
                f"({spec.max_bytes}); refused",
                hint="shrink the config, or raise config.max_bytes in the service spec",
            )
        return await self.bundles.fetch(bundle, what)

    def stage(self, tarball: Path, bundle: ConfigBundle, values: dict[str, str],
              max_bytes: int, what: str) -> Staged:
        """Extract ``tarball`` into a fresh staging directory and fill its placeholders."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._stagings += 1
        path = self.root / f".staging-{short(bundle)}-{os.getpid()}-{self._stagings}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        staged = Staged(path, bundle)
        try:
            safe_extract(tarball, path, what, kind=KIND, strict=True,
                         max_unpacked=max(max_bytes * UNPACK_FACTOR, MIN_UNPACKED))
            for rel, info in _walk(path):
                full = path / rel
                if stat.S_ISDIR(info.st_mode):
                    os.chmod(full, 0o755)
                elif stat.S_ISREG(info.st_mode):
                    os.chmod(full, 0o644)
                    _fill_file(full, values)
                    staged.files += 1
                else:     # the strict extraction lets nothing else through; be sure
                    raise ArtifactError(f"{KIND} for {what} holds {rel!r}, not a plain file")
        except BaseException:
            staged.discard()
            raise
        return staged

    async def validate(self, staged: Staged, spec: ConfigSpec, env: dict[str, str],
                       release_dir: Path, what: str) -> bool:
        """Run ``config.validate`` on ``staged``; raise `ArtifactError` if it refuses."""
        if spec.validate_command:
            argv = [
                arg.replace("{config_dir}", str(staged.path)).replace("{release_dir}",
                                                                      str(release_dir))
                for arg in spec.validate_command
            ]
            if "/" in argv[0] and not os.path.isabs(argv[0]):
                argv[0] = str(release_dir / argv[0])    # the release's program, never the bundle's
            code, detail, output = await run_capturing(
                argv, cwd=staged.path, env={**env, "HEADWAY_CONFIG_DIR": str(staged.path)},
                timeout=VALIDATE_TIMEOUT,
            )
            if code != 0:
                said = last_lines(output.replace(str(staged.path), "<config>"))
                raise ArtifactError(
                    f"config {what} failed validation: {Path(argv[0]).name} {detail}"
                    + (f": {said}" if said else ""),
                    hint="fix the config and release a new revision",
                )
        return True

    # ---- activate ------------------------------------------------------------------------

    def install(self, staged: Staged) -> str:
        """Put ``staged`` in place as its revision and make it current; the applied hash."""
        name = short(staged.bundle)
        dest = self.root / name
        _sync(staged.path, dest)
        applied = tree_hash(dest)
        atomic_write_json(self.root / f"{name}.json", {
            "digest": staged.bundle.digest,
            "revision": staged.bundle.revision,
            "hash": applied,
            "activated": 1 + max((seq for _, seq in self._revisions()), default=0),
        })
        atomic_symlink(self.current, Path(name))
        staged.discard()
        return applied

    def active(self) -> tuple[str, str]:
        """(directory name of the current revision, its applied hash); "" when not known."""
        try:
            name = Path(os.readlink(self.current)).name
        except OSError:
            return "", ""
        meta = read_json(self.root / f"{name}.json")
        return name, str(meta.get("hash", "")) if meta is not None else ""

    def on_disk(self) -> str:
        """The config hash of what ``current`` holds now; hashed again only when a stat moved."""
        try:
            where = os.path.realpath(self.current)
            signature: Signature = (where, tuple(
                (rel, info.st_mode, info.st_size, info.st_mtime_ns, info.st_ctime_ns,
                 info.st_ino) for rel, info in _walk(Path(where))
            ))
        except OSError:
            self._signature = None
            return ""
        if signature != self._signature:
            self._signature = signature
            self._signature_hash = tree_hash(Path(where))
        return self._signature_hash

    def is_active(self, bundle: ConfigBundle) -> bool:
        """True when ``current`` names the bundle's revision, as it was written."""
        name, applied = self.active()
        return name == short(bundle) and bool(applied) and self.on_disk() == applied

    # ---- housekeeping --------------------------------------------------------------------

    def prune(self, keep: set[str]) -> None:
        """Keep the current revision, ``keep`` and the `KEEP_REVISIONS` last activated."""
        if not self.root.is_dir():
            return
        newest = sorted(self._revisions(), key=lambda item: item[1], reverse=True)
        kept = {name for name, _ in newest[:KEEP_REVISIONS]} | keep | {self.active()[0]}
        for path in self.root.iterdir():
            stem = path.name.removesuffix(".json")
            if path.name.startswith(".") or path.name == CURRENT or stem in kept:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if self.bundles.artifacts.is_dir():
            for file in self.bundles.artifacts.glob("*.tar.gz"):
                if file.name[:12] not in kept:
                    file.unlink(missing_ok=True)

    def _revisions(self) -> list[tuple[str, int]]:
        """(name, activation order) of every revision with a record."""
        found = []
        for path in self.root.glob("*.json"):
            meta = read_json(path)
            order = meta.get("activated") if meta is not None else None
            found.append((path.stem, order if isinstance(order, int) else 0))
        return found

    def clean_partials(self) -> None:
        """Remove half-made downloads and stagings a crash left behind."""
        if self.bundles.artifacts.is_dir():
            for file in self.bundles.artifacts.glob("*.part"):
                file.unlink(missing_ok=True)
        if self.root.is_dir():
            for path in self.root.glob(".staging-*"):
                shutil.rmtree(path, ignore_errors=True)


def _fill_file(path: Path, values: dict[str, str]) -> None:
    data = path.read_bytes()
    if b"{{" not in data:
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return                                   # not UTF-8 text: left exactly as it is
    filled = fill_text(text, values)
    if filled != text:
        path.write_bytes(filled.encode("utf-8"))


def _sync(src: Path, dest: Path) -> None:
    """Make ``dest`` hold exactly the files of ``src``: each changed file fsynced in ``src``
    and renamed into place; what ``src`` does not hold is removed."""
    wanted = {rel: stat.S_ISDIR(info.st_mode) for rel, info in _walk(src)
              if stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)}
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        dest.unlink()                                 # never write through a link made by hand
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o755)
    for rel, info in reversed(_walk(dest)):           # children before their parents
        is_dir = stat.S_ISDIR(info.st_mode)
        want = wanted.get(rel)
        if want is None or want != is_dir or not (is_dir or stat.S_ISREG(info.st_mode)):
            if is_dir:
                shutil.rmtree(dest / rel)
            else:
                (dest / rel).unlink()
    touched = {dest}
    for rel, is_dir in sorted(wanted.items()):
        target = dest / rel
        if is_dir:
            target.mkdir(exist_ok=True)
            continue
        source = src / rel
        data = source.read_bytes()
        with contextlib.suppress(OSError):
            if target.read_bytes() == data and stat.S_IMODE(target.stat().st_mode) == 0o644:
                continue
        with source.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(source, target)
        touched.add(target.parent)
    for directory in touched:
        fsync_dir(directory)
    fsync_dir(dest.parent)


__all__ = [
    "ConfigStore",
    "Staged",
    "fill_text",
    "fill_values",
    "label_of",
    "short",
    "tree_hash",
]
