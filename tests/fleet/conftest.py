"""What the fleet tests share: CLI runners and a look at who answers through HAProxy."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
from typer.testing import CliRunner, Result

from headway.cli.main import app


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def run_json(*args: str, env: dict[str, str] | None = None, code: int = 0) -> Any:
    result = run(*args, "--json", env=env)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return json.loads(result.stdout)


def answering_hosts(traffic: str, requests: int) -> dict[str, set[str]]:
    """Host name -> versions, from the bodies of ``requests`` GET / through HAProxy."""
    seen: dict[str, set[str]] = {}
    with httpx.Client(base_url=traffic, timeout=10) as client:
        for _ in range(requests):
            response = client.get("/")
            assert response.status_code == 200, response.text
            found = re.search(r"from (host-\d+), version (v\d+)", response.text)
            assert found is not None, response.text
            seen.setdefault(found[1], set()).add(found[2])
            assert response.headers["X-App-Version"] == found[2]
    return seen
