"""Small helpers for tests and benchmarks that drive a server over its REST API."""

from __future__ import annotations

import io
import tarfile
import time
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "rolled_back", "aborted"}


def tiny_tarball(text: str) -> bytes:
    """A valid .tar.gz holding one file, VERSION, with ``text`` in it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = text.encode()
        info = tarfile.TarInfo("VERSION")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def wait_rollout(api: httpx.Client, rollout_id: str, timeout: float = 60) -> dict[str, Any]:
    """Poll until the rollout ends; its ``RolloutOut`` body."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = api.get(f"/api/v1/rollouts/{rollout_id}").json()
        if body["rollout"]["status"] in TERMINAL:
            return body
        time.sleep(0.05)
    raise AssertionError(f"rollout {rollout_id} did not end within {timeout}s: {body}")


def wait_hosts(api: httpx.Client, service: str, release: int, n: int, timeout: float = 30) -> None:
    """Poll until ``n`` hosts of ``service`` are healthy on ``release``."""
    deadline = time.monotonic() + timeout
    hosts: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        hosts = api.get("/api/v1/hosts", params={"service": service}).json()
        if len(hosts) == n and all(
            h["observed_release"] == release and h["health"] == "healthy" for h in hosts
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"hosts not all healthy on v{release} within {timeout}s: {hosts}")
