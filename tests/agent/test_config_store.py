"""Config bundles on the host without an agent: staging, filling, validation, activation."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import socket
import sys
import tarfile
from pathlib import Path

import pytest

from headway.agent.config import ConfigStore, fill_text, fill_values, short, tree_hash
from headway.clock import SystemClock
from headway.domain.config_spec import ConfigSpec
from headway.errors import ArtifactError
from headway.protocol.messages import ConfigBundle

from .conftest import TOKEN, FakeServer, config_tarball

VALUES = fill_values("web-1", "127.0.0.9", 8080, {"zone": "eu-1", "tier": "{{host}}"})


def store(tmp: Path, server: str = "http://127.0.0.1:1") -> ConfigStore:
    return ConfigStore(tmp / "state", server, TOKEN, SystemClock())


def bundle_of(data: bytes, path: Path, revision: str = "") -> tuple[ConfigBundle, Path]:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    path.write_bytes(data)
    return ConfigBundle(digest=digest, size=len(data), url="", revision=revision), path


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_fill_text_fills_exactly_the_known_placeholders_once() -> None:
    text = ("{{host}} {{address}}:{{port}} {{label.zone}} {{label.tier}} {{label.nope}} "
            "{{ host }} {host} {{hostname}} {{env.HOME}} $(id) {{{{host}}}}")
    assert fill_text(text, VALUES) == (
        "web-1 127.0.0.9:8080 eu-1 {{host}} {{label.nope}} "
        "{{ host }} {host} {{hostname}} {{env.HOME}} $(id) {{web-1}}"
    )


def test_stage_fills_utf8_files_only_and_drops_execute_bits(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data, mode in [("app.conf", b"name = {{host}}\n", 0o755),
                                 ("blob.bin", b"\xff\xfe{{host}}", 0o644),
                                 ("sub/x.conf", "caf\u00e9 {{port}}".encode(), 0o600)]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    bundle, path = bundle_of(raw.getvalue(), tmp_path / "b.tar.gz")
    configs = store(tmp_path)
    staged = configs.stage(path, bundle, VALUES, 1 << 20, "r1 of v1")
    assert files_under(staged.path) == {
        "app.conf": b"name = web-1\n",
        "blob.bin": b"\xff\xfe{{host}}",                 # not UTF-8: left exactly as it is
        "sub/x.conf": "caf\u00e9 8080".encode(),
    }
    assert all(p.stat().st_mode & 0o111 == 0 for p in staged.path.rglob("*") if p.is_file())
    assert staged.files == 3


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (member("../evil.conf"), "unsafe path '../evil.conf'"),
        (member("/etc/evil.conf"), "unsafe path"),
        (member("a/../../evil.conf"), "unsafe path"),
        (member("inside", tarfile.SYMTYPE, "app.conf"), "links are refused"),
        (member("out", tarfile.SYMTYPE, "/etc/passwd"), "links are refused"),
        (member("hard", tarfile.LNKTYPE, "app.conf"), "links are refused"),
        (member("fifo", tarfile.FIFOTYPE), "device or FIFO"),
        (member("new\nline.conf"), "control characters"),
    ],
)
def test_unsafe_bundles_are_refused_before_anything_is_written(
    tmp_path: Path, bad: tarfile.TarInfo, says: str
) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        ok = tarfile.TarInfo("app.conf")
        ok.size = 3
        tar.addfile(ok, io.BytesIO(b"a=b"))
        tar.addfile(bad, io.BytesIO(b"") if bad.isreg() else None)
    bundle, path = bundle_of(raw.getvalue(), tmp_path / "b.tar.gz")
    configs = store(tmp_path)
    with pytest.raises(ArtifactError, match=f"config bundle for r9 .*{says}"):
        configs.stage(path, bundle, VALUES, 1 << 20, "r9")
    assert list(configs.root.iterdir()) == []          # the staging directory is gone too
    assert not (tmp_path / "evil.conf").exists() and not (tmp_path / "state" / "evil.conf").exists()


def test_bundle_bigger_than_max_bytes_is_refused_before_any_download(tmp_path: Path) -> None:
    with socket.socket() as sock:                     # nothing listens: a GET would fail
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    configs = store(tmp_path, f"http://127.0.0.1:{port}")
    big = ConfigBundle(digest="sha256:" + "1" * 64, size=2048, url="/api/v1/configs/x")
    with pytest.raises(ArtifactError, match=r"2048 bytes, more than config.max_bytes \(1024\)"):
        asyncio.run(configs.fetch(big, ConfigSpec(max_bytes=1024), "r1 of v1"))


def test_a_bomb_that_unpacks_too_big_is_refused(tmp_path: Path) -> None:
    data = config_tarball({"zeros.conf": b"\0" * (2 << 20)})
    bundle, path = bundle_of(data, tmp_path / "b.tar.gz")
    configs = store(tmp_path)
    with pytest.raises(ArtifactError, match="unpacks to more than 1 MiB"):
        configs.stage(path, bundle, VALUES, 1024, "r1")


def test_fetch_uses_the_config_route_and_caches_by_digest(
    server: FakeServer, tmp_path: Path
) -> None:
    bundle = server.add_config({"app.conf": "greeting = hi\n"})
    bare = bundle.model_copy(update={"url": ""})     # no url: the server's config route
    configs = store(tmp_path, server.url)
    first = asyncio.run(configs.fetch(bare, ConfigSpec(), "r1"))
    again = asyncio.run(configs.fetch(bundle, ConfigSpec(), "r1"))
    assert first == again and server.config_gets_of(bundle) == 1
    assert first.read_bytes() == server.configs[bundle.digest]


def install(configs: ConfigStore, tmp: Path, files: dict[str, str | bytes]) -> ConfigBundle:
    bundle, path = bundle_of(config_tarball(files), tmp / f"b{len(os.listdir(tmp))}.tar.gz")
    staged = configs.stage(path, bundle, VALUES, 1 << 20, "r")
    configs.install(staged)
    configs.prune({short(bundle)})
    return bundle


def test_install_flips_current_keeps_three_revisions_and_repairs_hand_edits(
    tmp_path: Path,
) -> None:
    configs = store(tmp_path)
    (tmp_path / "in").mkdir()
    made = [install(configs, tmp_path / "in", {"app.conf": f"n = {n}\n", f"only{n}": "x"})
            for n in range(4)]
    assert os.readlink(configs.current) == short(made[3])
    assert files_under(configs.current) == {"app.conf": b"n = 3\n", "only3": b"x"}
    names = {p.name for p in configs.root.iterdir()}
    assert names == {"current", *(short(b) for b in made[1:]),
                     *(f"{short(b)}.json" for b in made[1:])}   # the oldest one pruned
    assert not list(configs.root.glob(".staging-*"))
    name, applied = configs.active()
    assert name == short(made[3]) and applied == configs.on_disk() == tree_hash(configs.current)

    # a hand edit changes the hash on disk (and only then is anything hashed again)
    (configs.current / "app.conf").write_text("n = hacked\n")
    (configs.current / "extra").write_text("y")
    assert configs.on_disk() != applied and not configs.is_active(made[3])
    # putting the same revision in place again restores it byte for byte
    install(configs, tmp_path / "in", {"app.conf": "n = 3\n", "only3": "x"})
    assert files_under(configs.current) == {"app.conf": b"n = 3\n", "only3": b"x"}
    assert configs.on_disk() == applied and configs.is_active(made[3])
    # an earlier revision kept on disk becomes current again
    install(configs, tmp_path / "in", {"app.conf": "n = 1\n", "only1": "x"})
    assert files_under(configs.current) == {"app.conf": b"n = 1\n", "only1": b"x"}


def test_validate_runs_on_the_staged_copy_and_reports_the_last_lines(tmp_path: Path) -> None:
    configs = store(tmp_path)
    bundle, path = bundle_of(config_tarball({"app.conf": "bad\n"}), tmp_path / "b.tar.gz")
    release = tmp_path / "release"
    release.mkdir()
    (release / "check.py").write_text(
        "import os, pathlib, sys\n"
        "assert pathlib.Path.cwd() == pathlib.Path(sys.argv[1])\n"
        "assert os.environ['HEADWAY_CONFIG_DIR'] == sys.argv[1]\n"
        "for n in range(10): print('noise', n)\n"
        "print('app.conf line 1: expected key = value', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    spec = ConfigSpec.model_validate(
        {"validate": [sys.executable, "{release_dir}/check.py", "{config_dir}"]})
    staged = configs.stage(path, bundle, VALUES, 1 << 20, "r1 of v1")
    with pytest.raises(ArtifactError) as refused:
        asyncio.run(configs.validate(staged, spec, dict(os.environ), release, "r1 of v1"))
    message = refused.value.message
    assert message.startswith("config r1 of v1 failed validation: ")
    assert "exited with code 3" in message
    assert "noise 8 | noise 9 | app.conf line 1: expected key = value" in message
    assert "noise 4" not in message                   # only the last lines

    ok = ConfigSpec.model_validate({"validate": [sys.executable, "-c", "pass"]})
    assert asyncio.run(configs.validate(staged, ok, dict(os.environ), release, "r1"))
    # a relative program is the release's file, never one from the bundle
    (release / "check-config").write_text("#!/bin/sh\nexit 0\n")
    (release / "check-config").chmod(0o755)
    relative = ConfigSpec.model_validate({"validate": ["./check-config", "{config_dir}"]})
    assert asyncio.run(configs.validate(staged, relative, dict(os.environ), release, "r1"))
