"""Config rollouts end to end (issue 5): a real Git repository, a real fleet behind HAProxy,
canary 1 host -> 50% -> 100%, open-loop load through HAProxy during every rollout.

The cases run in file order on one fleet; each starts from the branch head the previous
one left released and checks only what its own commits did.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from headway.fleet import balancer
from headway.fleet.loadgen import RequestRecord, summarize

from .conftest import CommitRollout, ConfigFleet, run, run_json

pytestmark = pytest.mark.integration


def _no_failed_requests(records: list[RequestRecord], what: str) -> None:
    total = summarize(records)
    assert total.sent >= 20, (what, total)
    assert total.failed == 0, (what, total.errors)


def _report(label: str, done: CommitRollout, last_greeting: float) -> str:
    events = done.events
    detected = next(e.ts for e in events if e.kind == "config.detected")
    succeeded = next(e.ts for e in done.rollout_events() if e.kind == "rollout.succeeded")
    line = (
        f"{label}: commit {done.commit.sha[:12]} -> v{done.release}: seen "
        f"+{detected - done.commit.before:.2f}s, rollout succeeded +{succeeded - done.commit.before:.2f}s, "
        f"last host answering the new greeting +{last_greeting - done.commit.before:.2f}s "
        f"(server's own: {done.timing()})"
    )
    print(line)
    return line


def test_a_commit_reaches_every_host_by_reload_then_by_restart(cfleet: ConfigFleet) -> None:
    # --- reload: the same app processes pick up the new greeting -------------------------
    cfleet.set_apply("reload")
    pids = cfleet.app_pids()
    after = cfleet.last_event_id()
    with cfleet.load(seed=11) as load:
        commit = cfleet.commit({"app.conf": "greeting = hello-reload\n"}, "reload greeting")
        last = cfleet.wait_greeting("hello-reload")
        done = cfleet.wait_commit(commit, after)
        records = load.stop()
    assert done.rollout.status.value == "succeeded", done.rollout_events()
    _no_failed_requests(records, "reload")
    assert cfleet.app_pids() == pids  # reloaded in place, nothing restarted
    assert set(cfleet.greetings().values()) == {"hello-reload"}
    assert not done.of_kind("host.drained")  # reload: no drain
    plan = [e.message for e in done.rollout_events() if e.kind == "rollout.config_plan"]
    assert plan and "reload" in plan[0], plan
    for host in cfleet.fleet.hosts:
        assert cfleet.config_files(host) == commit.files
    assert done.timing(), done.events
    _report("reload", done, last)

    # --- restart: new app processes, each host drained first -----------------------------
    cfleet.set_apply("restart")
    after = cfleet.last_event_id()
    with cfleet.load(seed=12) as load:
        commit = cfleet.commit({"app.conf": "greeting = hello-restart\n"}, "restart greeting")
        last = cfleet.wait_greeting("hello-restart")
        done = cfleet.wait_commit(commit, after)
        records = load.stop()
    assert done.rollout.status.value == "succeeded", done.rollout_events()
    _no_failed_requests(records, "restart")
    new_pids = cfleet.app_pids()
    assert all(new_pids[name] not in (0, pid) for name, pid in pids.items()), (pids, new_pids)
    drained = {e.host for e in done.rollout_events() if e.kind == "host.drained"}
    assert drained == {h.name for h in cfleet.fleet.hosts}
    assert set(cfleet.greetings().values()) == {"hello-restart"}
    for host in cfleet.fleet.hosts:
        assert cfleet.config_files(host) == commit.files
    _report("restart", done, last)
    haproxy = balancer.server_stats(Path(cfleet.fleet.haproxy_socket))
    assert balancer.serving(haproxy) == {h.name for h in cfleet.fleet.hosts}
    cfleet.set_apply("reload")


def test_b_a_config_that_fails_validation_is_never_activated(cfleet: ConfigFleet) -> None:
    before_files = {h.name: cfleet.config_files(h) for h in cfleet.fleet.hosts}
    before_greetings = cfleet.greetings()
    current = cfleet.client.get_service("web").current_release
    after = cfleet.last_event_id()
    with cfleet.load(seed=13) as load:
        commit = cfleet.commit({"app.conf": "greeting = never\nthis line is not key value\n"},
                               "bad syntax")
        done = cfleet.wait_commit(commit, after)
        records = load.stop()
    assert done.rollout.status.value in {"rolled_back", "failed"}, done.rollout
    _no_failed_requests(records, "invalid config")
    messages = "\n".join(e.message for e in done.events)
    assert "expected 'key = value'" in messages, messages
    assert cfleet.client.get_service("web").current_release == current
    for host in cfleet.fleet.hosts:
        assert cfleet.config_files(host) == before_files[host.name], host.name
        assert not (host.state_dir / "config" / done.revision()).exists(), host.name
    assert cfleet.greetings() == before_greetings
    assert all(files == cfleet.released for files in before_files.values())


def test_c_a_config_that_breaks_the_app_is_caught_at_the_first_canary_step(
    cfleet: ConfigFleet,
) -> None:
    previous = cfleet.released  # the last revision rolled out: what every host runs now
    pids = cfleet.app_pids()
    current = cfleet.client.get_service("web").current_release
    after = cfleet.last_event_id()
    with cfleet.load(seed=14) as load:
        commit = cfleet.commit({"app.conf": "greeting = broken\nfail_health = 1\n"}, "breaks health")
        done = cfleet.wait_commit(commit, after)
        records = load.stop()
    assert done.rollout.status.value == "rolled_back", done.rollout
    summary = summarize(records)
    print(f"breaking config: {summary.sent} requests, {summary.failed} failed")
    assert cfleet.client.get_service("web").current_release == current
    # Only the first canary host was ever told the bad release: the server told one host
    # to update and revert, and only that host ever wrote the bad revision's files.
    first = cfleet.fleet.hosts[0].name
    updating = {e.host for e in done.rollout_events() if e.kind == "host.updating"}
    assert updating == {first}, done.rollout_events()
    assert {e.host for e in done.rollout_events() if e.kind == "host.reverted"} == {first}
    failed = [e.message for e in done.rollout_events() if e.kind == "host.failed"]
    assert len(failed) == 1 and "/healthz answered 503" in failed[0], failed
    assert done.rollout.step == 1, done.rollout
    bad = done.revision()
    assert {h.name for h in cfleet.fleet.hosts if (h.state_dir / "config" / bad).is_dir()} == {first}
    # Every host ends with the previous files, byte for byte, and the apps serve them.
    for host in cfleet.fleet.hosts:
        assert cfleet.config_files(host) == previous, host.name
    assert set(cfleet.greetings().values()) == {previous["app.conf"].decode().split("=")[1].strip()}
    assert cfleet.app_pids() == pids
    hosts = cfleet.client.list_hosts(service="web")
    assert all(h.health.value == "healthy" and h.observed_release == current for h in hosts)


def test_d_a_hand_edited_file_is_drift_until_restored(cfleet: ConfigFleet) -> None:
    host = cfleet.fleet.hosts[2]
    released = cfleet.config_files(host)
    conf = host.state_dir / "config" / "current" / "app.conf"
    conf.write_bytes(b"greeting = edited-by-hand\n")

    deadline = time.monotonic() + 20
    while not any(h.config_drift for h in cfleet.client.list_hosts(service="web")):
        assert time.monotonic() < deadline, "no drift reported"
        time.sleep(0.2)
    drifted = {h.name for h in cfleet.client.list_hosts(service="web") if h.config_drift}
    assert drifted == {host.name}
    listed = run_json("hosts", "--service", "web", env=cfleet.env)
    assert {h["name"] for h in listed if h["config_drift"]} == {host.name}
    table = run("hosts", "--service", "web", env=cfleet.env)
    assert table.exit_code == 0 and "drift" in table.stdout, table.stdout

    restored = run("config", "restore", "web", env=cfleet.env)
    assert restored.exit_code == 0, restored.output
    assert host.name in restored.stdout

    deadline = time.monotonic() + 20
    while any(h.config_drift for h in cfleet.client.list_hosts(service="web")):
        assert time.monotonic() < deadline, "drift not cleared"
        time.sleep(0.2)
    assert conf.read_bytes() == released["app.conf"]
    assert cfleet.config_files(host) == released
    assert not [h["name"] for h in run_json("hosts", "--service", "web", env=cfleet.env)
                if h["config_drift"]]
