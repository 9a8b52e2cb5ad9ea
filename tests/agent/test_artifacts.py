"""Fetching, verifying, caching and safely extracting release tarballs."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import tarfile
from pathlib import Path

import pytest

from headway.agent.artifacts import ArtifactCache, safe_extract
from headway.agent.target import Target
from headway.clock import SystemClock
from headway.domain.models import ArtifactRef
from headway.errors import ArtifactError, ServerUnreachable
from headway.fleet.artifact import build_sample_artifact, sha256_file
from headway.protocol.messages import DesiredRelease

from .conftest import TOKEN, FakeServer, service


def tarball(tmp: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    path = tmp / "t.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info, b"data"


def test_safe_extract_keeps_a_good_release_inside(tmp_path: Path) -> None:
    path = tarball(tmp_path, entry("bin", tarfile.DIRTYPE), entry("bin/app"),
                   entry("./lib/x.py"), entry("latest", tarfile.SYMTYPE, "bin/app"),
                   entry("bin/up", tarfile.SYMTYPE, "../lib/x.py"))
    dest = tmp_path / "out"
    dest.mkdir()
    safe_extract(path, dest)
    assert (dest / "bin" / "app").read_bytes() == b"data"
    assert (dest / "latest").resolve() == (dest / "bin" / "app").resolve()
    assert (dest / "bin" / "up").read_bytes() == b"data"


@pytest.mark.parametrize(
    ("member", "says"),
    [
        (entry("/etc/cron.d/evil"), "unsafe path"),
        (entry("../evil"), "unsafe path"),
        (entry("a/../../evil"), "unsafe path"),
        (entry("link", tarfile.SYMTYPE, "/etc/passwd"), "points outside"),
        (entry("a/link", tarfile.SYMTYPE, "../../x"), "points outside"),
        (entry("hard", tarfile.LNKTYPE, "../x"), "points outside"),
        (entry("fifo", tarfile.FIFOTYPE), "device or FIFO"),
        (entry("dev", tarfile.CHRTYPE), "device or FIFO"),
    ],
)
def test_safe_extract_refuses_what_would_escape(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes], says: str
) -> None:
    path = tarball(tmp_path, entry("ok.txt"), member)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArtifactError, match=says):
        safe_extract(path, dest)
    assert list(dest.iterdir()) == []        # refused before anything was written
    assert not (tmp_path / "evil").exists()


def test_garbage_is_refused_as_a_tarball(tmp_path: Path) -> None:
    path = tmp_path / "junk.tar.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ArtifactError, match="not a valid or safe tarball"):
        safe_extract(path, tmp_path)


def test_sample_artifact_is_reproducible(tmp_path: Path) -> None:
    a = build_sample_artifact("v7", tmp_path / "a")
    b = build_sample_artifact("v7", tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    assert sha256_file(a) == sha256_file(b) != sha256_file(build_sample_artifact("v8", tmp_path))
    with tarfile.open(a) as tar:
        assert tar.getnames() == ["VERSION", "app.py"]
        assert all(m.mtime == 946684800 and m.uid == 0 for m in tar.getmembers())
        version = tar.extractfile("VERSION")
        assert version is not None and version.read() == b"v7\n"


def cache_for(server: FakeServer, tmp: Path, token: str = TOKEN) -> ArtifactCache:
    return ArtifactCache(tmp / "state", server.url, token, SystemClock())


def test_fetch_verifies_caches_and_stages(server: FakeServer, tmp_path: Path) -> None:
    ref = server.add_release("v1", tmp_path)
    cache = cache_for(server, tmp_path)
    first = asyncio.run(cache.fetch(ref, "v1"))
    again = asyncio.run(cache.fetch(ref, "v1"))
    assert first == again and server.gets_of(ref) == 1 and cache.downloads == 1
    target = Target(1, DesiredRelease(number=1, artifact=ref), service())
    staged = cache.stage(target, first)
    assert staged.name == f"v1-{ref.digest[7:19]}"
    assert (staged / "VERSION").read_text() == "v1\n"
    # a cached file that was tampered with is fetched again
    first.write_bytes(b"tampered")
    asyncio.run(cache.fetch(ref, "v1"))
    assert server.gets_of(ref) == 2


def test_fetch_reads_chunked_answers(server: FakeServer, tmp_path: Path) -> None:
    ref = server.add_release("v1", tmp_path)
    streamed = ArtifactRef(digest=ref.digest, size=ref.size, url=f"/stream/{ref.digest}")
    path = asyncio.run(cache_for(server, tmp_path).fetch(streamed, "v1"))
    assert path.read_bytes() == server.artifacts[ref.digest]


@pytest.mark.parametrize("stream", [False, True])
def test_fetch_never_reads_past_the_declared_size(
    server: FakeServer, tmp_path: Path, stream: bool
) -> None:
    ref = server.add_release("v1", tmp_path)
    url = f"/stream/{ref.digest}" if stream else ref.url
    short = ArtifactRef(digest=ref.digest, size=ref.size - 10, url=url)
    cache = cache_for(server, tmp_path)
    with pytest.raises(ArtifactError, match="larger than its declared"):
        asyncio.run(cache.fetch(short, "v1"))
    assert not list((tmp_path / "state" / "artifacts").iterdir())


def test_fetch_refuses_truncation_and_bad_tokens(server: FakeServer, tmp_path: Path) -> None:
    ref = server.add_release("v1", tmp_path)
    long = ArtifactRef(digest=ref.digest, size=ref.size + 10, url=ref.url)
    with pytest.raises(ArtifactError, match="truncated"):
        asyncio.run(cache_for(server, tmp_path).fetch(long, "v1"))
    with pytest.raises(ArtifactError, match=r"HTTP 401.*check --token"):
        asyncio.run(cache_for(server, tmp_path, token="wrong").fetch(ref, "v1"))


def test_unreachable_source_is_worth_a_retry(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cache = ArtifactCache(tmp_path, f"http://127.0.0.1:{port}", TOKEN, SystemClock())
    ref = ArtifactRef(digest="sha256:" + "0" * 64, size=10, url="")
    with pytest.raises(ServerUnreachable, match="unreachable"):
        asyncio.run(cache.fetch(ref, "v1"))


def test_prune_keeps_the_three_newest_releases_and_what_is_in_use(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path, "http://127.0.0.1:1", TOKEN, SystemClock())
    names = [f"v{n}-{n:012x}" for n in range(1, 6)]
    for age, name in enumerate(reversed(names)):
        (cache.releases / name).mkdir(parents=True)
        os.utime(cache.releases / name, (1000 - age, 1000 - age))
        (cache.artifacts).mkdir(exist_ok=True)
        (cache.artifacts / f"{name[3:]}{'0' * 52}.tar.gz").write_bytes(b"x")
    cache.prune(keep={"v1-000000000001"})
    assert sorted(p.name for p in cache.releases.iterdir()) == [
        "v1-000000000001", "v3-000000000003", "v4-000000000004", "v5-000000000005"]
    assert len(list(cache.artifacts.iterdir())) == 4
