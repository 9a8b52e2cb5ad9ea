"""A real Git repository followed by the server: commits become revisions, releases, rollouts."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from headway.testing.api_helpers import tiny_tarball, wait_hosts, wait_rollout
from headway.testing.server_process import ServerProcess

from .conftest import Fleet, commit, git

pytestmark = pytest.mark.integration

HOSTS = 4


def spec(repo: Path, *, min_healthy: str = "0.1s", auto: bool = True) -> dict[str, Any]:
    return {
        "name": "web",
        "run": {"start": ["python3", "app.py"]},
        "health": {"http": {"path": "/healthz"}},
        "strategy": {"batch_size": 1, "min_healthy_time": min_healthy, "progress_deadline": "20s"},
        "config": {
            "source": {"git": {"url": str(repo), "branch": "main", "subdir": "web", "poll": "0.2s"}},
            "on_change": "release",
            "auto_rollout": auto,
            "apply": "reload",
        },
    }


def events(api: httpx.Client, kind: str) -> list[dict[str, Any]]:
    return [
        e
        for e in api.get("/api/v1/events", params={"service": "web", "limit": 5000}).json()
        if e["kind"] == kind
    ]


def wait_for(api: httpx.Client, check: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    log = [(e["kind"], e["message"]) for e in api.get("/api/v1/events", params={"service": "web"}).json()]
    raise AssertionError(f"{what} within {timeout}s; events: {log[-15:]}")


def releases(api: httpx.Client) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = api.get("/api/v1/services/web/releases").json()
    return result


def succeeded_to(api: httpx.Client, number: int) -> dict[str, Any] | None:
    for out in api.get("/api/v1/rollouts", params={"service": "web"}).json():
        if out["rollout"]["to_release"] == number:
            done = wait_rollout(api, out["rollout"]["id"])
            assert done["rollout"]["status"] == "succeeded", done
            return done
    return None


def test_commits_become_releases_and_roll_out_by_themselves(
    server: ServerProcess, repo: Path, tmp_path: Path
) -> None:
    c1 = commit(repo, {"web/app.conf": "level = 1\n", "README": "not config\n"}, "first")
    with server.client() as api:
        assert api.post("/api/v1/services", json={"spec": spec(repo)}).status_code == 200
        # no release yet: the commit waits for one (the artifact to go with it)
        wait_for(api, lambda: events(api, "config.waiting"), "a config.waiting event")
        artifact = api.post("/api/v1/artifacts", content=tiny_tarball("v1")).json()
        api.post("/api/v1/services/web/releases", json={"artifact": artifact["digest"]})
        with Fleet(server, tmp_path / "hosts", HOSTS, subnet="127.0.44") as fleet:
            # c1 -> revision -> v2 (v1's artifact, c1's files) -> its rollout, started by the server
            wait_for(api, lambda: succeeded_to(api, 2), "the rollout of v2")
            wait_hosts(api, "web", 2, HOSTS)
            v2 = releases(api)[1]
            assert v2["artifact"] == releases(api)[0]["artifact"] and v2["created_by"] == f"git:{c1[:12]}"
            revision = api.get("/api/v1/services/web/configs").json()[0]
            assert (
                revision["git_commit"] == c1
                and revision["source"] == "git"
                and revision["files"] == ["app.conf"]
            )
            assert revision["id"] == v2["config"]["revision"]
            for agent in fleet.agents:
                assert (agent.config_dir / "app.conf").read_text() == "level = 1\n"

            # a new commit: measured from the commit to the last host applied
            c2 = commit(repo, {"web/app.conf": "level = 2\n"}, "second")
            done = wait_for(api, lambda: succeeded_to(api, 3), "the rollout of v3")
            wait_hosts(api, "web", 3, HOSTS)
            timing = wait_for(
                api,
                lambda: [e for e in events(api, "config.timing") if e["rollout_id"] == done["rollout"]["id"]],
                "the timing of v3",
            )[0]
            assert c2[:12] in timing["message"] and "succeeded" in timing["message"]
            last_host = float(re.search(r"last host \+([\d.]+)s", timing["message"]).group(1))  # type: ignore[union-attr]
            assert 0 < last_host < 20
            started = [
                e for e in events(api, "config.rollout_started") if e["rollout_id"] == done["rollout"]["id"]
            ]
            assert len(started) == 1 and "after the commit" in started[0]["message"]
            assert any(c2[:12] in e["message"] for e in events(api, "config.detected"))
            for agent in fleet.agents:
                assert (agent.config_dir / "app.conf").read_text() == "level = 2\n"
                assert agent.restarts == 1 and agent.reloads == 2  # config changes reload in place

            # a commit outside the subdirectory changes no config: no release
            commit(repo, {"README": "still not config\n"}, "docs only")
            wait_for(api, lambda: len(events(api, "config.detected")) == 3, "the docs commit to be seen")
            assert len(releases(api)) == 3

            # a commit with a link in it is refused: no revision, no release
            (repo / "web" / "passwd").symlink_to("/etc/passwd")
            bad = commit(repo, {"web/app.conf": "level = 666\n"}, "a link")
            refused = wait_for(api, lambda: events(api, "config.git_refused"), "the refusal")
            assert bad[:12] in refused[0]["message"] and "link" in refused[0]["message"]
            assert len(releases(api)) == 3


def test_a_commit_during_a_rollout_waits_for_it(server: ServerProcess, repo: Path, tmp_path: Path) -> None:
    commit(repo, {"web/app.conf": "level = 1\n"}, "first")
    with server.client() as api:
        assert api.post("/api/v1/services", json={"spec": spec(repo, min_healthy="1s")}).status_code == 200
        artifact = api.post("/api/v1/artifacts", content=tiny_tarball("v1")).json()
        api.post("/api/v1/services/web/releases", json={"artifact": artifact["digest"]})
        with Fleet(server, tmp_path / "hosts", HOSTS, subnet="127.0.45") as fleet:
            wait_for(api, lambda: api.get("/api/v1/services/web").json()["active_rollout"], "the v2 rollout")
            # while v2 rolls out (one host a second), two more commits land
            commit(repo, {"web/app.conf": "level = 2\n"}, "second")
            wait_for(api, lambda: events(api, "config.rollout_deferred"), "the deferral")
            c3 = commit(repo, {"web/app.conf": "level = 3\n"}, "third")
            wait_for(api, lambda: succeeded_to(api, 4), "the rollout of v4", timeout=40)
            wait_hosts(api, "web", 4, HOSTS)
            assert releases(api)[-1]["created_by"] == f"git:{c3[:12]}"
            for agent in fleet.agents:
                assert (agent.config_dir / "app.conf").read_text() == "level = 3\n"
            rolled = {o["rollout"]["to_release"] for o in api.get("/api/v1/rollouts").json()}
            assert 4 in rolled and 2 in rolled


def test_a_person_decides_when_auto_rollout_is_off(server: ServerProcess, repo: Path, tmp_path: Path) -> None:
    commit(repo, {"web/app.conf": "level = 1\n"}, "first")
    with server.client() as api:
        api.post("/api/v1/services", json={"spec": spec(repo, auto=False)})
        artifact = api.post("/api/v1/artifacts", content=tiny_tarball("v1")).json()
        api.post("/api/v1/services/web/releases", json={"artifact": artifact["digest"]})
        wait_for(api, lambda: len(releases(api)) == 2, "the config release")
        time.sleep(1)
        assert api.get("/api/v1/rollouts").json() == []
        assert api.get("/api/v1/services/web").json()["current_release"] == 1
        # a bad URL is reported once, not on every poll
        broken = spec(repo, auto=False)
        broken["config"]["source"]["git"]["url"] = str(tmp_path / "nowhere")
        api.post("/api/v1/services", json={"spec": broken})
        wait_for(api, lambda: events(api, "config.git_failed"), "the failure")
        time.sleep(1)
        failures = events(api, "config.git_failed")
        assert len(failures) == 1 and "fetch" in failures[0]["message"]
        assert git(repo, "rev-parse", "HEAD")
