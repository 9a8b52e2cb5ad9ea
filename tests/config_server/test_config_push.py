"""Config revisions through a real server: push a directory, fetch by URL, refuse bad bundles."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from typer.testing import CliRunner

from headway.cli.main import app
from headway.server.config_bundle import build_bundle, files_from_directory
from headway.testing.server_process import ServerProcess, start_server

pytestmark = pytest.mark.integration

SPEC: dict[str, Any] = {
    "name": "web",
    "run": {"start": ["python3", "app.py"]},
    "health": {"http": {"path": "/healthz"}},
    "config": {"apply": "reload", "max_bytes": 4096},
}


def cli(server: ServerProcess, *args: str) -> Any:
    result = CliRunner().invoke(
        app, [*args, "--server", server.url, "--token", server.tokens["api"]], env={"COLUMNS": "200"}
    )
    return result


def make_dir(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def stored_files(server: ServerProcess) -> list[str]:
    folder = server.state_dir / "configs"
    return sorted(os.listdir(folder)) if folder.exists() else []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module, a service of its own for each test (starting one takes seconds)."""
    proc = start_server(tmp_path_factory.mktemp("push") / "server")
    yield proc
    proc.stop()


_names = iter(f"svc{i}" for i in range(1000))


@pytest.fixture
def svc(server: ServerProcess) -> str:
    name = next(_names)
    with server.client() as client:
        assert client.post("/api/v1/services", json={"spec": {**SPEC, "name": name}}).status_code == 200
    return name


@pytest.fixture
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def test_push_a_directory_makes_a_content_addressed_revision(
    server: ServerProcess, api: httpx.Client, svc: str, tmp_path: Path
) -> None:
    conf = make_dir(tmp_path / "conf", {"site.conf": "listen {{port}};\n", "sub/mime.types": "text/html\n"})
    (conf / ".git").mkdir()
    (conf / ".git" / "HEAD").write_text("ref: refs/heads/main\n")  # a checkout's metadata: skipped
    result = cli(server, "config", "push", svc, str(conf), "--json")
    assert result.exit_code == 0, result.output
    pushed = json.loads(result.output)
    revision = pushed["revision"]
    assert pushed["created"] is True
    assert revision["files"] == ["site.conf", "sub/mime.types"]
    assert revision["source"] == "store"
    assert revision["id"] == revision["digest"].removeprefix("sha256:")[:12]

    # the same files again (another mtime, another directory): the same revision, not a new one
    again_dir = make_dir(
        tmp_path / "again", {"sub/mime.types": "text/html\n", "site.conf": "listen {{port}};\n"}
    )
    again = json.loads(cli(server, "config", "push", svc, str(again_dir), "--json").output)
    assert again["created"] is False and again["revision"]["id"] == revision["id"]
    listed = api.get(f"/api/v1/services/{svc}/configs").json()
    assert [r["id"] for r in listed] == [revision["id"]]

    # the bytes, by digest, for operators and agents alike; nobody else
    body = api.get(f"/api/v1/configs/{revision['digest']}")
    assert (
        body.status_code == 200 and "sha256:" + hashlib.sha256(body.content).hexdigest() == revision["digest"]
    )
    agent = httpx.get(
        f"{server.url}/api/v1/configs/{revision['digest']}",
        headers={"Authorization": f"Bearer {server.tokens['agent']}"},
    )
    assert agent.content == body.content
    assert httpx.get(f"{server.url}/api/v1/configs/{revision['digest']}").status_code == 401
    assert api.get("/api/v1/configs/sha256:" + "0" * 64).status_code == 404
    assert api.get("/api/v1/configs/../../tokens.json").status_code in (404, 422)

    # a table for people, and the audit log has the push
    table = cli(server, "config", "list", svc)
    assert table.exit_code == 0 and revision["id"] in table.output
    kinds = [e["kind"] for e in api.get("/api/v1/events", params={"service": svc}).json()]
    assert kinds.count("config.revision") == 1 and "config.unchanged" in kinds


def _tar(entries: list[tarfile.TarInfo], data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info in entries:
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


BAD_BUNDLES = {
    "traversal": (_tar([_entry("../../etc/passwd")]), 422, "leaves the config directory"),
    "nested traversal": (_tar([_entry("a/../../b")]), 422, "leaves the config directory"),
    "absolute": (_tar([_entry("/etc/cron.d/x")]), 422, "absolute path"),
    "symlink": (_tar([_entry("link", tarfile.SYMTYPE, "/etc/shadow")]), 422, "is a link"),
    "hard link": (_tar([_entry("ok"), _entry("hard", tarfile.LNKTYPE, "ok")]), 422, "is a link"),
    "device": (_tar([_entry("dev", tarfile.CHRTYPE)]), 422, "device"),
    "fifo": (_tar([_entry("pipe", tarfile.FIFOTYPE)]), 422, "device, FIFO"),
    "control character": (_tar([_entry("bad\x1bname.conf")]), 422, "control characters"),
    "duplicate": (_tar([_entry("a.conf"), _entry("a.conf")]), 422, "appears twice"),
    "oversized contents": (_tar([_entry("big.conf")], b"x" * 5000), 413, "larger than 4096 bytes"),
    "too many files": (_tar([_entry(f"f{i}") for i in range(1001)]), 413, "more than 1000 files"),
    "not a tarball": (b"\x1f\x8b this is not gzip at all", 422, "not a readable .tar.gz"),
    "empty": (_tar([]), 422, "holds no files"),
    "empty body": (b"", 422, "empty"),
}


@pytest.mark.parametrize("case", list(BAD_BUNDLES), ids=list(BAD_BUNDLES))
def test_bad_bundles_are_refused_and_nothing_is_stored(
    server: ServerProcess, api: httpx.Client, svc: str, case: str
) -> None:
    data, status, words = BAD_BUNDLES[case]
    before = stored_files(server)
    response = api.post(
        f"/api/v1/services/{svc}/configs", content=data, headers={"content-type": "application/gzip"}
    )
    assert response.status_code == status, response.text
    problem = response.json()
    assert words in problem["message"] and problem["hint"]
    assert api.get(f"/api/v1/services/{svc}/configs").json() == []
    assert stored_files(server) == before  # not even a temporary file left


def test_an_oversized_stream_is_cut_off(server: ServerProcess, api: httpx.Client, svc: str) -> None:
    """A body far over the limit is refused while it streams, without a Content-Length."""
    before = stored_files(server)

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield os.urandom(16 * 1024)

    response = api.post(f"/api/v1/services/{svc}/configs", content=chunks())
    assert response.status_code == 413
    assert stored_files(server) == before and api.get(f"/api/v1/services/{svc}/configs").json() == []


def test_the_cli_refuses_links_before_sending(
    server: ServerProcess, api: httpx.Client, svc: str, tmp_path: Path
) -> None:
    conf = make_dir(tmp_path / "conf", {"a.conf": "a\n"})
    (conf / "secret").symlink_to("/etc/hostname")
    result = cli(server, "config", "push", svc, str(conf))
    assert result.exit_code == 2
    assert "link" in result.output and "Traceback" not in result.output
    assert api.get(f"/api/v1/services/{svc}/configs").json() == []
    with pytest.raises(Exception, match="link"):
        files_from_directory(conf, 4096)


class _Bundles(http.server.BaseHTTPRequestHandler):
    served: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        data = self.served.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def bundle_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    served: dict[str, bytes] = {}
    handler = type("Handler", (_Bundles,), {"served": served})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    httpd.shutdown()
    httpd.server_close()


def test_a_url_source_is_fetched_pinned_by_digest(
    server: ServerProcess,
    api: httpx.Client,
    svc: str,
    tmp_path: Path,
    bundle_server: tuple[str, dict[str, bytes]],
) -> None:
    base, served = bundle_server
    before = stored_files(server)
    good = build_bundle(files_from_directory(make_dir(tmp_path / "c", {"app.ini": "[app]\nx=1\n"}), 4096))
    digest = "sha256:" + hashlib.sha256(good).hexdigest()
    served["/bundles/good.tar.gz"] = good
    served["/bundles/big.tar.gz"] = os.urandom(400 * 1024)

    wrong = api.post(
        f"/api/v1/services/{svc}/configs",
        json={"url": base + "/bundles/good.tar.gz", "digest": "sha256:" + "1" * 64},
    )
    assert wrong.status_code == 422 and "pinned" in wrong.json()["message"]
    big = api.post(
        f"/api/v1/services/{svc}/configs", json={"url": base + "/bundles/big.tar.gz", "digest": digest}
    )
    assert big.status_code == 413
    missing = api.post(f"/api/v1/services/{svc}/configs", json={"url": base + "/nope", "digest": digest})
    assert missing.status_code == 422 and "404" in missing.json()["message"]
    scheme = api.post(f"/api/v1/services/{svc}/configs", json={"url": "file:///etc/passwd", "digest": digest})
    assert scheme.status_code == 422
    assert api.get(f"/api/v1/services/{svc}/configs").json() == [] and stored_files(server) == before

    result = cli(
        server, "config", "push", svc, "--url", base + "/bundles/good.tar.gz", "--digest", digest, "--json"
    )
    assert result.exit_code == 0, result.output
    revision = json.loads(result.output)["revision"]
    assert revision["digest"] == digest and revision["source"] == "url"
    assert revision["origin"].endswith("/bundles/good.tar.gz") and revision["files"] == ["app.ini"]
