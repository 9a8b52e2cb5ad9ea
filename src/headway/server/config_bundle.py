"""Config bundles: reproducible .tar.gz files of a service's config files, and their checks.

A bundle holds regular files only, under relative paths. The same checks run
wherever a bundle is made or received (the CLI's `config push`, an upload, a
URL fetch, a Git commit), so a bad bundle is refused before anything is stored:

- no absolute path, no ``..``, no empty or ``.`` part, no backslash, no control
  character, at most 255 bytes a part and 1024 in all;
- no links (symbolic or hard), devices, FIFOs or sockets; no name twice;
- at most ``max_bytes`` of file contents (the service's ``config.max_bytes``) and
  at most `MAX_FILES` files.

`build_bundle` is reproducible: entries sorted by path, times, owners and
gzip header zeroed, modes reduced to 0644 or 0755. The same files give the
same bytes, so the same digest and the same revision, whether pushed from a
directory or taken from a Git commit.

Pure (no I/O beyond the files it is handed); shared by the server and the CLI.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from headway.errors import ArtifactError, SpecError

MAX_FILES = 1000
MAX_PART = 255
MAX_PATH = 1024
SKIPPED_DIRS = frozenset({".git"})  # a checkout's Git metadata is never config

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FIX = "fix the file names and push again"


class BadBundle(SpecError):
    """A bundle with a name, kind of file or format that is refused (HTTP 422)."""

    kind = "bad_config"


class BundleTooLarge(ArtifactError):
    """More bytes or files than allowed (HTTP 413)."""

    status_code = 413
    kind = "too_large"


@dataclass(frozen=True)
class BundleFile:
    path: str
    data: bytes
    executable: bool = False


def check_path(name: str) -> str:
    """The normalised relative path of a bundle entry, or `BadBundle` saying what is wrong.

    >>> check_path("./nginx/site.conf")
    'nginx/site.conf'
    """
    shown = _CONTROL.sub("?", name)[:80]
    if _CONTROL.search(name):
        raise BadBundle(f"config file name {shown!r} has control characters", hint=_FIX)
    if "\\" in name:
        raise BadBundle(f"config file name {shown!r} has a backslash", hint="use '/' between directories")
    if name.startswith("/"):
        raise BadBundle(
            f"config file {shown!r} has an absolute path", hint="paths are relative to the config directory"
        )
    parts = name.split("/")
    while parts and parts[0] == ".":
        parts = parts[1:]
    if parts and parts[-1] == "":
        parts = parts[:-1]  # a directory entry "dir/"
    if not parts:
        return ""
    if ".." in parts:
        raise BadBundle(f"config file {shown!r} leaves the config directory ('..')", hint=_FIX)
    if any(p in ("", ".") for p in parts):
        raise BadBundle(f"config file name {shown!r} has an empty or '.' part", hint=_FIX)
    if any(len(p.encode()) > MAX_PART for p in parts) or len(name.encode()) > MAX_PATH:
        raise BadBundle(
            f"config file name {shown!r} is too long",
            hint=f"at most {MAX_PART} bytes a part, {MAX_PATH} in all",
        )
    return "/".join(parts)


class _Budget:
    def __init__(self, max_bytes: int, max_files: int) -> None:
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.bytes = 0
        self.names: set[str] = set()

    def add(self, path: str, size: int) -> None:
        if path in self.names:
            raise BadBundle(f"config file {path!r} appears twice in the bundle", hint=_FIX)
        self.names.add(path)
        if len(self.names) > self.max_files:
            raise BundleTooLarge(
                f"the config bundle has more than {self.max_files} files",
                hint="config bundles are for config files; bake large trees into the artifact",
            )
        self.bytes += size
        if self.bytes > self.max_bytes:
            raise BundleTooLarge(
                f"the config files are larger than {self.max_bytes} bytes (config.max_bytes)",
                hint="raise config.max_bytes in the service spec, or bake large files into the artifact",
            )


def _members(tar: tarfile.TarFile, budget: _Budget) -> Iterator[tuple[tarfile.TarInfo, str]]:
    """Every regular file of ``tar`` with its checked path; refuses anything else."""
    for member in tar:
        path = check_path(member.name)
        if member.isdir():
            continue
        shown = path or member.name
        if member.issym() or member.islnk():
            raise BadBundle(
                f"config file {shown!r} is a link; links are not allowed in config bundles", hint=_FIX
            )
        if not member.isreg():
            raise BadBundle(
                f"config entry {shown!r} is a device, FIFO or other special file; "
                "only regular files are allowed",
                hint=_FIX,
            )
        if not path:
            raise BadBundle(f"config entry {member.name!r} has no file name", hint=_FIX)
        budget.add(path, member.size)
        yield member, path


def _open_failed(error: Exception) -> BadBundle:
    return BadBundle(
        f"the config bundle is not a readable .tar.gz ({error})",
        hint="push a directory with `headway config push SERVICE DIR`, which builds the bundle",
    )


_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError, UnicodeError)


def inspect_bundle(fileobj: IO[bytes], max_bytes: int, max_files: int = MAX_FILES) -> list[str]:
    """Check a .tar.gz bundle without extracting it; its file paths, sorted.

    Stops at the first entry over the limits, so a gzip bomb is read only up
    to ``max_bytes`` of declared contents.
    """
    budget = _Budget(max_bytes, max_files)
    try:
        with tarfile.open(fileobj=fileobj, mode="r:gz") as tar:
            names = [path for _member, path in _members(tar, budget)]
    except (BadBundle, BundleTooLarge):
        raise
    except _READ_ERRORS as error:
        raise _open_failed(error) from None
    if not names:
        raise BadBundle("the config bundle holds no files", hint="push a directory with at least one file")
    return sorted(names)


def files_from_tar(data: bytes, max_bytes: int, max_files: int = MAX_FILES) -> list[BundleFile]:
    """The files of an uncompressed tar (``git archive``'s output), checked."""
    budget = _Budget(max_bytes, max_files)
    out: list[BundleFile] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member, path in _members(tar, budget):
                handle = tar.extractfile(member)
                content = handle.read() if handle is not None else b""
                out.append(BundleFile(path, content, bool(member.mode & 0o111)))
    except (BadBundle, BundleTooLarge):
        raise
    except _READ_ERRORS as error:
        raise _open_failed(error) from None
    return out


def files_from_directory(root: Path, max_bytes: int, max_files: int = MAX_FILES) -> list[BundleFile]:
    """Every regular file under ``root`` (a top-level ``.git`` skipped), checked.

    Links, devices, FIFOs and sockets are refused, not followed or skipped: a
    bundle holds exactly what the directory shows.
    """
    try:
        top = os.lstat(root)
    except OSError as error:
        raise SpecError(
            f"cannot read config directory {root}: {error.strerror}", hint="check the path"
        ) from None
    if not stat.S_ISDIR(top.st_mode):
        raise SpecError(f"{root} is not a directory", hint="pass the directory that holds the config files")
    budget = _Budget(max_bytes, max_files)
    out: list[BundleFile] = []

    def walk(directory: Path, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as error:
            raise SpecError(f"cannot list {directory}: {error.strerror}", hint="check permissions") from None
        for entry in entries:
            rel = check_path(prefix + entry.name)
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                raise BadBundle(
                    f"{rel} is a link; links are not allowed in config bundles", hint="copy the file instead"
                )
            if stat.S_ISDIR(info.st_mode):
                if not prefix and entry.name in SKIPPED_DIRS:
                    continue
                walk(Path(entry.path), rel + "/")
            elif stat.S_ISREG(info.st_mode):
                budget.add(rel, info.st_size)
                data = Path(entry.path).read_bytes()
                out.append(BundleFile(rel, data, bool(info.st_mode & 0o111)))
            else:
                raise BadBundle(
                    f"{rel} is a device, FIFO or socket; only regular files are allowed", hint="remove it"
                )

    walk(root, "")
    if not out:
        raise BadBundle(f"{root} holds no files", hint="put the config files in it first")
    return out


def build_bundle(files: Iterable[BundleFile]) -> bytes:
    """A reproducible .tar.gz of ``files``: the same files always give the same bytes."""
    buf = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for item in sorted(files, key=lambda f: f.path):
            info = tarfile.TarInfo(item.path)
            info.size = len(item.data)
            info.mode = 0o755 if item.executable else 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(item.data))
    return buf.getvalue()
