"""A real local fleet (server, agents, sample apps on loopback) meets bad releases.

Each bad release is caught in the first batch and rolled back by itself;
every host ends healthy on the previous release, answering with its version.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from headway.api_models import CreateRelease
from headway.client.api import ApiClient
from headway.fleet import local
from headway.testing.api_helpers import wait_hosts, wait_rollout

pytestmark = pytest.mark.integration

HOSTS = 4


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.Fleet]:
    state_dir = tmp_path_factory.mktemp("faults") / "state"
    up = local.fleet_up(state_dir, HOSTS, port=0, address_prefix="127.0.16")
    try:
        with ApiClient(up.server, up.token) as api:
            spec = local.sample_spec().model_dump(mode="json")
            spec["strategy"] = {
                "batch_size": 2,
                "min_healthy_time": "1s",
                "progress_deadline": "8s",
            }
            api.apply_service(spec)
        yield up
    finally:
        local.fleet_down(state_dir)


def versions(fleet: local.Fleet) -> set[str]:
    seen = set()
    for host in fleet.hosts:
        response = httpx.get(f"http://{host.address}:8080/", timeout=5)
        assert response.status_code == 200
        seen.add(response.headers["X-App-Version"])
    return seen


@pytest.mark.parametrize(
    "fault",
    [{"FAIL_HEALTH": "1"}, {"CRASH_AT_START": "1"}],
    ids=["health-check-fails", "crashes-at-start"],
)
def test_bad_release_is_rolled_back_by_itself(fleet: local.Fleet, fault: dict[str, str]) -> None:
    with ApiClient(fleet.server, fleet.token) as api:
        before = {h.name: h.observed_release for h in api.list_hosts("web")}
        current = api.get_service("web").current_release
        assert current is not None and set(before.values()) == {current}
        bad = api.create_release("web", CreateRelease(from_version=f"v{current}", params=fault, note="bad"))
        rollout = api.start_rollout("web", to=f"v{bad.number}")
        http = httpx.Client(base_url=fleet.server, headers={"Authorization": f"Bearer {fleet.token}"})
        with http:
            ended = wait_rollout(http, rollout.rollout.id, timeout=60)
            assert ended["rollout"]["status"] == "rolled_back", ended
            wait_hosts(http, "web", current, HOSTS, timeout=30)
            events = http.get("/api/v1/events", params={"rollout": rollout.rollout.id}).json()
        touched = {e["host"] for e in events if e["kind"] == "host.updating"}
        assert 1 <= len(touched) <= 2, "the bad release never left the first batch"
        assert api.get_service("web").current_release == current
    assert versions(fleet) == {"v1"}


def test_good_release_after_the_bad_ones_succeeds(fleet: local.Fleet) -> None:
    with ApiClient(fleet.server, fleet.token) as api:
        current = api.get_service("web").current_release
        good = api.create_release("web", CreateRelease(from_version=f"v{current}", params={"GREETING": "hi"}))
        rollout = api.start_rollout("web", to=f"v{good.number}")
        with httpx.Client(base_url=fleet.server, headers={"Authorization": f"Bearer {fleet.token}"}) as http:
            ended = wait_rollout(http, rollout.rollout.id, timeout=60)
            assert ended["rollout"]["status"] == "succeeded", ended
            wait_hosts(http, "web", good.number, HOSTS)
