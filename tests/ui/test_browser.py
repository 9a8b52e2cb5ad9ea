"""The web UI in real headless Chromium against a real local fleet (server, HAProxy, agents).

One story: sign in, watch the fleet page, start a canary from the CLI and see the cells
change colour without a reload, pause it from the rollout page behind its confirmation
dialog and check through the API that it paused (and who paused it), then sign out and
check that nothing is visible any more: pages redirect and the event stream refuses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from playwright.sync_api import Browser, Page, expect
from typer.testing import CliRunner

from headway.cli.main import app as cli
from headway.client.api import ApiClient
from headway.fleet import local

pytestmark = [pytest.mark.browser, pytest.mark.integration]

HOSTS = ["host-01", "host-02", "host-03", "host-04"]
T = TypeVar("T")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.Fleet]:
    """Four hosts of the sample service, whose strategy becomes a canary of one host that
    then waits for a promote (applied with `headway apply`)."""
    state_dir = tmp_path_factory.mktemp("ui-fleet") / "state"
    up = off_loop(local.fleet_up, state_dir, len(HOSTS), port=0, address_prefix="127.0.23")
    try:
        spec = yaml.safe_load(up.spec_path.read_text())
        spec["strategy"] = {
            "type": "canary",
            "steps": [{"hosts": 1}, {"pause": "promote"}, {"hosts": "100%"}],
            "min_healthy_time": "1s",
            "progress_deadline": "60s",
        }
        canary = up.state_dir / "canary.yaml"
        canary.write_text(yaml.safe_dump(spec))
        cli_json(up, "apply", "-f", str(canary))
        yield up
    finally:
        off_loop(local.fleet_down, state_dir)


def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in a thread: Playwright's sync API keeps an event loop running on this one,
    and the fleet's helpers and the CLI may start their own (`asyncio.run`)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def cli_json(fleet: local.Fleet, *args: str) -> Any:
    env = {"HEADWAY_SERVER": fleet.server, "HEADWAY_TOKEN": fleet.token}
    result = off_loop(CliRunner().invoke, cli, [*args, "--json"], env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def sign_in(page: Page, fleet: local.Fleet, shots: Path | None = None) -> None:
    page.goto(f"{fleet.server}/ui")
    expect(page).to_have_url(f"{fleet.server}/ui/signin?next=%2Fui")
    page.fill("#name", "tester")
    if shots is not None:
        page.screenshot(path=str(shots / "signin.png"))
    page.fill("#token", fleet.token)
    page.click("#signin")
    expect(page).to_have_url(f"{fleet.server}/ui")


def wait_colours(page: Page, colours: dict[str, int]) -> None:
    """Until each host's cell is drawn in the colour of its release (read from the canvas)."""
    page.wait_for_function(
        """(want) => window.headwayFleet && Object.entries(want).every(
               ([host, release]) => headwayFleet.pixel(host) === headwayFleet.colour(release))""",
        arg=colours,
        timeout=30_000,
    )


def test_watch_a_canary_pause_it_and_sign_out(
    browser: Browser, fleet: local.Fleet, screenshots: Path
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    page = context.new_page()
    page.set_default_timeout(15_000)
    sign_in(page, fleet, screenshots)

    # the fleet page draws every host from the event stream's snapshot
    expect(page.locator("#fleet")).to_have_attribute("data-hosts", str(len(HOSTS)))
    wait_colours(page, dict.fromkeys(HOSTS, 1))
    assert page.evaluate("headwayFleet.host('host-02').address") == "127.0.23.2"
    assert page.evaluate("headwayFleet.colour(1)") != page.evaluate("headwayFleet.colour(2)")
    page.evaluate("window.__sameDocument = true")

    # a canary started from the CLI: its host turns to v2's colour, live
    cli_json(fleet, "release", "create", "web", "--from", "v1", "--param", "latency_ms=1", "--note", "ui")
    started = cli_json(fleet, "rollout", "start", "web")
    rollout_id = started["rollout"]["id"]
    wait_colours(page, {"host-01": 2, "host-02": 1, "host-03": 1, "host-04": 1})
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    expect(page.locator("#services")).to_contain_text("running")
    # hovering a cell shows the host
    box = page.locator("#fleet").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 10, box["y"] + 30 + 10)
    expect(page.locator("#tip")).to_contain_text("host-01")
    expect(page.locator("#tip")).to_contain_text("v2")
    page.mouse.click(box["x"] + 10, box["y"] + 30 + 10)  # a click pins it in the side panel
    expect(page.locator("#host-panel")).to_contain_text("127.0.23.1")
    page.mouse.move(0, 0)
    page.screenshot(path=str(screenshots / "fleet.png"), full_page=True)

    # the rollout page, from the services table
    page.click(f"#services a[href='/ui/rollouts/{rollout_id}']")
    status = page.locator("#live .head-row [data-status]")
    expect(status).to_have_attribute("data-status", "running")
    expect(page.locator("ol.steps li[data-state='current']")).to_contain_text("pause until promoted")
    expect(page.locator("#timeline")).to_contain_text("rollout.started")

    # pause, behind the confirmation dialog: cancelling does nothing
    page.click("#act-pause")
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    page.click("#confirm-cancel")
    expect(dialog).to_be_hidden()
    with ApiClient(fleet.server, fleet.token) as api:
        assert api.get_rollout(rollout_id).rollout.status.value == "running"
        page.click("#act-pause")
        page.fill("#confirm-reason", "checking the canary")
        page.click("#confirm-ok")
        expect(dialog).to_be_hidden()
        expect(status).to_have_attribute("data-status", "paused")  # over the event stream
        assert api.get_rollout(rollout_id).rollout.status.value == "paused"
        paused = [e for e in api.list_events(rollout=rollout_id) if e.kind == "rollout.paused"]
        assert [(e.actor, "checking the canary" in e.message) for e in paused] == [("ui:tester", True)]
    expect(page.locator("#act-resume")).to_be_enabled()
    expect(page.locator("#act-pause")).to_be_disabled()
    expect(page.locator("#timeline")).to_contain_text("rollout.paused")
    page.screenshot(path=str(screenshots / "rollout.png"), full_page=True)

    # the service page: releases with their params, the current rollout, the history
    page.click("nav.crumbs a[href='/ui/services/web']")
    expect(page.locator("#releases")).to_contain_text("latency_ms=1")
    expect(page.locator("#current-rollout")).to_contain_text(rollout_id)
    expect(page.locator("#history")).to_contain_text("paused")
    page.screenshot(path=str(screenshots / "service.png"), full_page=True)

    # sign out: the session is gone on the server, not only in this browser
    cookie = next(c["value"] for c in context.cookies() if c["name"] == "headway_session")
    page.click("form.signout button")
    expect(page).to_have_url(f"{fleet.server}/ui/signin")
    for path in ("/ui", "/ui/services/web", f"/ui/rollouts/{rollout_id}"):
        page.goto(fleet.server + path)
        expect(page).to_have_url(f"{fleet.server}/ui/signin?next={path.replace('/', '%2F')}")
        expect(page.locator("body")).not_to_contain_text(rollout_id)
    assert page.request.get(f"{fleet.server}/ui/events/stream").status == 401
    with httpx.Client(base_url=fleet.server, cookies={"headway_session": cookie}) as replay:
        assert replay.get("/ui").status_code == 303
        assert replay.get("/ui/events/stream").status_code == 401
        assert replay.post(f"/ui/actions/rollouts/{rollout_id}/resume", json={}).status_code == 401
    context.close()


def test_wrong_token_and_forged_actions_are_refused(browser: Browser, fleet: local.Fleet) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{fleet.server}/ui/signin")
    page.fill("#token", "not-the-token")
    page.click("#signin")
    expect(page.locator(".error")).to_contain_text("not the operator token")
    assert not [c for c in context.cookies() if c["name"] == "headway_session"]
    sign_in(page, fleet)
    # the browser's cookie alone does not make an action: it needs the page's CSRF token
    forged = page.request.post(f"{fleet.server}/ui/actions/services/web/rollback", data={})
    assert forged.status == 403
    cross_site = page.request.post(
        f"{fleet.server}/ui/actions/services/web/rollback",
        data={},
        headers={"Origin": "http://evil.example", "X-CSRF-Token": page.evaluate("Headway.csrf()")},
    )
    assert cross_site.status == 403
    context.close()
