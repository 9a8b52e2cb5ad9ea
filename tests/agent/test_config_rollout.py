"""Config releases on real agents running the real sample app: reload, restart, refusal,
rollback, drift restore, and a SIGKILLed agent in the middle of a config switch."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from headway.domain.models import Health
from headway.protocol.messages import ConfigBundle

from .conftest import Agent, FakeServer, desired, service, wait_until

pytestmark = pytest.mark.integration

MakeAgent = Callable[..., Agent]

CHECK = [sys.executable, "{release_dir}/app.py", "--check-config", "{config_dir}"]
SLOW_CHECK = [sys.executable, "-c",
              "import pathlib, sys, time\n"
              "text = pathlib.Path(sys.argv[1], 'app.conf').read_text()\n"
              "time.sleep(2 if 'slow' in text else 0)\n",
              "{config_dir}"]
SLOW_RELOAD = ("import json, os, signal, sys, time\n"
               "time.sleep(1.5)\n"
               "os.killpg(json.load(open(sys.argv[1]))['pid'], signal.SIGHUP)\n")


def spec_with(**config: Any) -> Any:
    return service(config=config)


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def current(agent: Agent) -> Path:
    return agent.state_dir / "config" / "current"


def revision_dir(agent: Agent, bundle: ConfigBundle) -> Path:
    return agent.state_dir / "config" / bundle.digest[7:19]


def greeting(agent: Agent) -> str:
    return agent.get()[2].split(" from ")[0]


def test_config_only_change_reloads_in_place_rolls_back_and_restores_drift(
    server: FakeServer, make_agent: MakeAgent, tmp_path: Path
) -> None:
    v1 = server.add_release("v1", tmp_path)
    a = server.add_config({
        "app.conf": "greeting = hello {{host}}\n# {{address}}:{{port}} {{label.service}} "
                    "{{label.nope}} {{other}}\n",
        "data/blob.bin": b"\xff{{host}}\xfe",
    }, revision="a1")
    b = server.add_config({"app.conf": "greeting = bonjour\n"}, revision="b2")
    spec = spec_with(apply="reload", validate=CHECK)
    agent = make_agent("c1").start()
    server.set_desired("c1", desired(1, 1, v1, spec, config=a))
    first = server.wait_observed("c1", release=1, generation=1, health=Health.HEALTHY)
    assert greeting(agent) == "hello c1"
    written_a = files(current(agent))
    assert written_a == {
        "app.conf": f"greeting = hello c1\n# {agent.address}:18080 web {{{{label.nope}}}} "
                    "{{other}}\n".encode(),
        "data/blob.bin": b"\xff{{host}}\xfe",          # not UTF-8: untouched
    }
    assert first.config_applied.startswith("sha256:")
    assert first.config_on_disk == first.config_applied
    pid = agent.app_pids()

    # config only, apply: reload -> same process, new greeting, nothing restarted
    server.set_desired("c1", desired(2, 2, v1, spec, config=b))
    second = server.wait_observed("c1", release=2, generation=2, health=Health.HEALTHY)
    wait_until(lambda: greeting(agent) == "bonjour", 5, "the reloaded greeting")
    assert agent.app_pids() == pid
    assert files(current(agent)) == {"app.conf": b"greeting = bonjour\n"}
    assert second.config_applied == second.config_on_disk != first.config_applied
    assert files(revision_dir(agent, a)) == written_a           # the previous revision kept
    assert "config reloaded" in (agent.state_dir / "logs" / "app.log").read_text()

    # roll back: the kept revision comes back byte for byte, nothing downloaded again
    server.set_desired("c1", desired(3, 1, v1, spec, config=a))
    server.wait_observed("c1", release=1, generation=3, health=Health.HEALTHY)
    wait_until(lambda: greeting(agent) == "hello c1", 5, "the greeting of a1")
    assert files(current(agent)) == written_a
    assert agent.app_pids() == pid
    assert server.config_gets_of(a) == 1 and server.config_gets_of(b) == 1
    assert server.gets_of(v1) == 1

    # a hand edit shows as drift ...
    (current(agent) / "app.conf").write_text("greeting = hacked\n")
    os.kill(pid[0], signal.SIGHUP)
    wait_until(lambda: greeting(agent) == "hacked", 5, "the hand-edited greeting")
    drifted = wait_until(
        lambda: (o := server.observed("c1")) and o.config_on_disk != o.config_applied and o,
        5, "the drift to be reported")
    assert drifted.config_applied == first.config_applied
    # ... and a new generation of the same release puts the revision back and reloads
    server.set_desired("c1", desired(4, 1, v1, spec, config=a))
    restored = server.wait_observed("c1", release=1, generation=4, health=Health.HEALTHY)
    wait_until(lambda: greeting(agent) == "hello c1", 5, "the restored greeting")
    assert files(current(agent)) == written_a
    assert agent.app_pids() == pid and server.config_gets_of(a) == 1
    settled = wait_until(
        lambda: (o := server.observed("c1")) and o.config_on_disk == o.config_applied and o,
        5, "no more drift")
    assert settled.config_applied == restored.config_applied == first.config_applied


def test_config_change_with_restart_and_with_a_new_artifact(
    server: FakeServer, make_agent: MakeAgent, tmp_path: Path
) -> None:
    v1, v2 = server.add_release("v1", tmp_path), server.add_release("v2", tmp_path)
    a = server.add_config({"app.conf": "greeting = one\n"})
    b = server.add_config({"app.conf": "greeting = two\n"})
    c = server.add_config({"app.conf": "greeting = three\n"})
    spec = spec_with(apply="restart", validate=CHECK)
    agent = make_agent("c2").start()
    server.set_desired("c2", desired(1, 1, v1, spec, config=a))
    server.wait_observed("c2", release=1, generation=1, health=Health.HEALTHY)
    assert greeting(agent) == "one"
    pid = agent.app_pids()

    server.set_desired("c2", desired(2, 2, v1, spec, config=b))
    server.wait_observed("c2", release=2, generation=2, health=Health.HEALTHY)
    assert greeting(agent) == "two"
    assert agent.app_pids() != pid and len(agent.app_pids()) == 1
    assert server.gets_of(v1) == 1                       # restaged from the cached artifact

    # a new artifact with a new config: the normal switch, the config in place before start
    server.set_desired("c2", desired(3, 3, v2, spec, config=c))
    server.wait_observed("c2", release=3, generation=3, health=Health.HEALTHY)
    assert agent.get()[1:] == ("v2", "three from c2, version v2\n")
    app_log = (agent.state_dir / "logs" / "app.log").read_text()
    assert "config reloaded" not in app_log              # started with it, never reloaded


def bad_bundle(server: FakeServer, *members: tuple[str, bytes, str]) -> ConfigBundle:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.size = 4 if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(b"a=b\n") if kind == tarfile.REGTYPE else None)
    return server.add_config_bytes(raw.getvalue())


def test_refused_configs_are_never_activated(
    server: FakeServer, make_agent: MakeAgent, tmp_path: Path
) -> None:
    v1, v2 = server.add_release("v1", tmp_path), server.add_release("v2", tmp_path)
    good = server.add_config({"app.conf": "greeting = fine\n"})
    broken = server.add_config({"app.conf": "greeting = x\nthis line is broken\n"}, "bad1")
    spec = spec_with(apply="reload", validate=CHECK, max_bytes=4096)
    agent = make_agent("c3").start()
    server.set_desired("c3", desired(1, 1, v1, spec, config=good))
    server.wait_observed("c3", release=1, generation=1, health=Health.HEALTHY)
    before = files(current(agent))
    pid = agent.app_pids()

    def refused(generation: int, release: Any, bundle: ConfigBundle, says: str) -> str:
        server.set_desired("c3", desired(generation, generation, release, spec, config=bundle))
        failed = server.wait_observed("c3", generation=generation, health=Health.FAILED)
        assert says in failed.detail, failed.detail
        assert failed.release == 1
        assert agent.app_pids() == pid and agent.get()[1:] == ("v1", "fine from c3, version v1\n")
        assert files(current(agent)) == before
        assert not revision_dir(agent, bundle).exists()
        return failed.detail

    detail = refused(2, v1, broken, "line 2: expected 'key = value'")
    assert detail.startswith(f"config bad1 of v2 failed validation: {Path(sys.executable).name} "
                             "exited with code 1: <config>/app.conf: line 2")
    assert "not activated" in detail
    refused(3, v2, broken, "failed validation")        # a new artifact: the app is never stopped
    refused(4, v1, bad_bundle(server, ("../evil.conf", tarfile.REGTYPE, "")),
            "holds an unsafe path '../evil.conf'")
    refused(5, v1, bad_bundle(server, ("app.conf", tarfile.SYMTYPE, "/etc/passwd")),
            "links are refused")
    big = server.add_config({"app.conf": os.urandom(6000).hex()})
    refused(6, v1, big, "more than config.max_bytes (4096)")
    assert server.config_gets_of(big) == 0
    assert not (tmp_path / "evil.conf").exists()
    assert not list(agent.state_dir.rglob("evil.conf"))
    assert not list((agent.state_dir / "config").glob(".staging-*"))


def test_agent_killed_mid_config_switch_keeps_a_complete_revision_and_converges(
    server: FakeServer, make_agent: MakeAgent, tmp_path: Path
) -> None:
    v1 = server.add_release("v1", tmp_path)
    a = server.add_config({"app.conf": "greeting = first\n"})
    b = server.add_config({"app.conf": "greeting = second\n# slow\n"})
    c = server.add_config({"app.conf": "greeting = third\n"})
    spec = spec_with(apply="reload", validate=SLOW_CHECK)
    agent = make_agent("c4").start()
    server.set_desired("c4", desired(1, 1, v1, spec, config=a))
    server.wait_observed("c4", release=1, generation=1, health=Health.HEALTHY)
    written_a = files(current(agent))
    pid = agent.app_pids()
    journal = agent.state_dir / "journal.json"

    def at_step(step: str) -> bool:
        try:
            return bool(json.loads(journal.read_text())["step"] == step)
        except (OSError, ValueError):
            return False

    # killed while validating (nothing committed): the old revision stays current
    server.set_desired("c4", desired(2, 2, v1, spec, config=b))
    wait_until(lambda: at_step("config"), 10, "the config step")
    agent.signal(signal.SIGKILL)
    assert os.readlink(current(agent)) == a.digest[7:19]
    assert files(current(agent)) == written_a
    assert agent.get()[2].startswith("first from")      # the app serves on
    agent.start()
    server.wait_observed("c4", release=2, generation=2, health=Health.HEALTHY)
    wait_until(lambda: greeting(agent) == "second", 5, "the greeting of b")
    assert agent.app_pids() == pid
    assert not list((agent.state_dir / "config").glob(".staging-*"))

    # killed while reloading (committed): finished after the restart, the app not restarted
    reload_spec = spec_with(apply="reload", validate=SLOW_CHECK, reload_command=[
        sys.executable, "-c", SLOW_RELOAD, str(agent.state_dir / "app.json")])
    server.set_desired("c4", desired(3, 3, v1, reload_spec, config=c))
    wait_until(lambda: at_step("reload"), 10, "the reload step")
    agent.signal(signal.SIGKILL)
    assert os.readlink(current(agent)) in (b.digest[7:19], c.digest[7:19])
    assert files(current(agent)) in ({"app.conf": b"greeting = second\n# slow\n"},
                                     {"app.conf": b"greeting = third\n"})
    agent.start()
    server.wait_observed("c4", release=3, generation=3, health=Health.HEALTHY)
    wait_until(lambda: greeting(agent) == "third", 5, "the greeting of c")
    assert files(current(agent)) == {"app.conf": b"greeting = third\n"}
    assert agent.app_pids() == pid
    assert not journal.exists()
    assert "finishing the interrupted config reload" in agent.log()
    assert "another copy" not in agent.log()   # validators and reload commands are not the app
    obs = server.observed("c4")
    assert obs is not None and obs.config_applied == obs.config_on_disk != ""
