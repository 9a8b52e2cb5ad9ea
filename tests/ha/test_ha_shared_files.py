"""An artifact recorded in the shared database whose file this server's disk lacks
(servers that do not share a volume): a 404 that says what to do, not a 500."""

from __future__ import annotations

from pathlib import Path

import pytest

from headway.testing.api_helpers import tiny_tarball
from headway.testing.pg import fresh_schema
from headway.testing.server_process import start_server

pytestmark = [pytest.mark.postgres, pytest.mark.integration]


def test_an_artifact_file_missing_from_this_servers_disk_is_a_clear_404(tmp_path: Path) -> None:
    with fresh_schema() as url:
        server = start_server(tmp_path / "a", database_url=url)
        try:
            with server.client() as api:
                uploaded = api.post("/api/v1/artifacts", content=tiny_tarball("v1"))
                assert uploaded.is_success, uploaded.text
                digest = uploaded.json()["digest"]
                assert api.get(f"/api/v1/artifacts/{digest}").status_code == 200
                (file,) = [p for p in (tmp_path / "a" / "artifacts").rglob("*") if p.is_file()]
                file.unlink()  # as on another server that does not share this volume
                missing = api.get(f"/api/v1/artifacts/{digest}")
            assert missing.status_code == 404
            body = missing.json()
            assert "not on this server" in body["message"]
            assert "share their state directory" in body["hint"]
        finally:
            server.stop()
