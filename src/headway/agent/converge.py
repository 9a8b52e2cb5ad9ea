"""The controller: make this host run the newest desired release, and keep it running.

Level-triggered, like a Kubernetes controller. Each pass compares the newest
`Desired` with what runs and does what is missing:

    same release running      adopt the new generation; no restart (its config is put
                              back first if it was edited on the host: drift restore)
    only ``serve`` differs    GET /ready follows it (`headway.agent.readiness`); no pass
    only the config differs   with ``config.apply: reload``: stage and validate the config,
                              put it in place, send the reload signal (or run
                              ``reload_command``); the same process keeps serving
    another release (or none) switch: fetch -> stage -> config -> stop old -> flip -> start new
    nothing to switch         supervise: probe health, restart the app if it died, hash
                              the config on disk (drift)

The config step stages, fills and validates the release's config bundle
(`headway.agent.config`) before anything running is touched: a refused
config fails the generation and leaves the app and its files as they were.
The revision is put in place (and the ``config/current`` link flipped) only
after the old app stopped, or right before the reload.

A switch writes the journal before each step. Until the old app is stopped
a newer `Desired` simply wins (the switch is dropped); from then on the
switch goes to the end and the next pass moves on to the newer target.
Under a polling balancer the old app is stopped only once GET /ready has
answered 503 for the balancer's settle time (`_leave_balancer`).

``Observation.generation`` is the generation of the desired state the host
has converged to: it moves once the release runs and its health check has
passed, or once the agent has definitively failed it (bad artifact, app
exiting during start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from headway.agent.appstate import AppRecord, app_id_for, find_app_processes, load_app, save_app
from headway.agent.artifacts import ArtifactCache
from headway.agent.config import ConfigStore, Staged, fill_values, label_of, short
from headway.agent.executors import (
    CommandsExecutor,
    Executor,
    Launch,
    ProcessExecutor,
    StartFailed,
    run_command,
)
from headway.agent.files import atomic_symlink
from headway.agent.health import probe
from headway.agent.journal import Journal, Step, clear_journal, read_journal, write_journal
from headway.agent.readiness import Readiness
from headway.agent.servers import ServerList
from headway.agent.settings import AgentSettings
from headway.agent.target import Target, app_env
from headway.clock import Clock
from headway.domain.config_spec import ApplyMode, ConfigSpec
from headway.domain.models import Health
from headway.domain.spec import ExecutorKind
from headway.errors import ArtifactError, ServerUnreachable
from headway.protocol.messages import Desired, Observation

log = logging.getLogger("headway.agent")

T = TypeVar("T")

STARTING_TICK = 0.2      # probe this often until the first pass
IDLE_TICK = 1.0          # look again this often when nothing needs probing
BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0
RELOAD_TIMEOUT = 60.0    # seconds config.reload_command may run


class Outcome(Enum):
    DONE = "done"                  # the desired state was acted on (converging or failed)
    SUPERSEDED = "superseded"      # a newer desired state arrived; act on that one
    RETRY = "retry"                # the artifact source is unreachable; try again later


class Signal:
    """Wakes every task that looked before the change: take `waiter()`, check, then wait."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def waiter(self) -> asyncio.Event:
        return self._event


async def wait_for_event(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(timeout, 0.0)):
            await event.wait()


class Controller:
    def __init__(
        self,
        settings: AgentSettings,
        clock: Clock,
        executors: dict[ExecutorKind, Executor] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.state_dir = settings.state_dir
        self.app_id = app_id_for(settings.state_dir)
        # the channel moves ``servers`` along; downloads start from the server it uses now
        self.servers = ServerList(settings.servers)
        self.cache = ArtifactCache(settings.state_dir, self.servers, settings.token, clock)
        self.configs = ConfigStore(settings.state_dir, self.servers, settings.token, clock)
        self.process = ProcessExecutor(self.app_id, clock)
        self.executors: dict[ExecutorKind, Executor] = executors or {
            ExecutorKind.PROCESS: self.process,
            ExecutorKind.COMMANDS: CommandsExecutor(),
        }
        self.observed = Observation()
        self.observed_changed = Signal()
        self.desired_changed = Signal()
        self.adopted = asyncio.Event()     # set once the running app (if any) is known
        self._desired: Desired | None = None
        self._desired_seq = 0
        self._handled_seq = 0
        self._retry_at: float | None = None
        self._fetch_backoff = BACKOFF_MIN
        self.app: AppRecord | None = None
        self._generation = 0
        self._pending: int | None = None   # generation to adopt once healthy
        self._health = Health.UNKNOWN
        self._detail = ""
        self._sticky = False               # FAILED for the desired release; probes keep quiet
        self._ever_healthy = False         # since the last start
        self._hold: Health | None = None   # after a crash: say this until a probe passes
        self._started = 0.0
        self._restart_at: float | None = None
        self._backoff = BACKOFF_MIN
        self.readiness = Readiness(settings.state_dir, clock)   # what GET /ready answers
        self._config_applied = ""          # hash of the config files as written
        self._config_on_disk = ""          # hash of what is on disk now (drift when different)

    # ---- inputs and outputs ---------------------------------------------------------------

    def offer(self, desired: Desired) -> None:
        """The server's newest desired state (every message on the channel is newer)."""
        if desired == self._desired:
            return
        self.readiness.configure(desired.service)
        if self.readiness.set_serve(desired.serve):
            self._publish()
        if self._desired is not None and desired == self._desired.model_copy(
            update={"serve": desired.serve}
        ):
            # Only in or out of load balancing: /ready follows; the app is left alone (a
            # switch under way is not superseded, the generation is not adopted again).
            self._desired = desired
            return
        self._desired = desired
        self._desired_seq += 1
        self._retry_at = None
        self._fetch_backoff = BACKOFF_MIN
        self.desired_changed.fire()

    def _publish(self) -> None:
        self.readiness.update(self._health, self._detail)
        note = self.readiness.note()
        observed = Observation(
            release=self.app.release if self.app else None,
            generation=self._generation,
            health=self._health,
            detail=f"{self._detail}; {note}" if self._detail and note else self._detail or note,
            config_applied=self._config_applied,
            config_on_disk=self._config_on_disk,
        )
        if observed != self.observed:
            self.observed = observed
            self.observed_changed.fire()

    def publish(self) -> None:
        """Report the observation again if it changed (the readiness endpoint's state did)."""
        self._publish()

    def _set(self, health: Health, detail: str, *, force: bool = False) -> None:
        if self._sticky and not force:
            return
        self._health, self._detail = health, detail
        self._publish()

    def _converged(self, generation: int) -> None:
        self._pending = None
        if generation != self._generation:
            self._generation = generation
            if self.app is not None:
                self.app = self.app.with_(generation=generation)
                save_app(self.state_dir, self.app)
            self._publish()

    def _fail(self, generation: int, detail: str) -> None:
        """Definitively FAILED for this generation: say so until a newer desired state."""
        log.error("%s", detail)
        self._set(Health.FAILED, detail, force=True)
        self._sticky = True
        self._converged(generation)

    def close(self) -> None:
        self.process.detach()

    def _refresh_config(self) -> None:
        """Hash the config on disk again (cheap: a stat walk, a hash only if a stat moved)."""
        app = self.app
        if app is None or (app.target is not None and app.target.release.config is None):
            applied = on_disk = ""
        else:
            applied = self.configs.active()[1]
            on_disk = self.configs.on_disk()
        if (applied, on_disk) == (self._config_applied, self._config_on_disk):
            return
        if applied and on_disk != applied and on_disk != self._config_on_disk:
            log.warning("config drift: the files in %s differ from what was applied "
                        "(%s on disk, %s applied)", self.configs.current, on_disk or "missing",
                        applied)
        self._config_applied, self._config_on_disk = applied, on_disk
        self._publish()

    # ---- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        await self.recover()
        while True:
            desired = self._desired
            now = self.clock.monotonic()
            unhandled = desired is not None and self._handled_seq != self._desired_seq
            if desired is not None and unhandled and (self._retry_at is None or now >= self._retry_at):
                seq = self._desired_seq
                outcome = await self.apply(desired, seq)
                if outcome is Outcome.DONE:
                    self._handled_seq = seq
                elif outcome is Outcome.RETRY:
                    self._retry_at = self.clock.monotonic() + self._fetch_backoff
                    self._fetch_backoff = min(self._fetch_backoff * 2, BACKOFF_MAX)
                continue
            waiter = self.desired_changed.waiter()
            delay = await self.supervise()
            if self._retry_at is not None and unhandled:
                delay = min(delay, self._retry_at - self.clock.monotonic())
            if self._handled_seq == self._desired_seq or self._retry_at is not None:
                await wait_for_event(waiter, delay)

    async def apply(self, desired: Desired, seq: int) -> Outcome:
        if desired.release is None:
            log.info("desired generation %d names no release; keeping what runs", desired.generation)
            self._converged(desired.generation)
            return Outcome.DONE
        target = Target.from_desired(desired)
        if target is None:
            self._fail(
                desired.generation,
                f"desired release v{desired.release.number} came without its service spec; "
                "the agent cannot run it (a server bug: report it)",
            )
            return Outcome.DONE
        app = self.app
        if app is not None and self._running(app):
            if _same_release(app, target):
                return await self._adopt(app, target, seq)
            if _config_only(app, target) and _reloadable(app, target):
                return await self._reload_switch(app, target, seq)
        return await self._switch(target, seq)

    def _running(self, app: AppRecord) -> bool:
        return self._restart_at is None and self.executors[app.executor].poll(app.pid) is None

    async def _adopt(self, app: AppRecord, target: Target, seq: int) -> Outcome:
        """The release runs already: take the new generation (and spec) without a restart."""
        log.info("v%d already runs; adopting generation %d", target.number, target.generation)
        bundle = target.release.config
        if bundle is not None and self.configs.active()[0] == short(bundle):
            self._refresh_config()
            if self._config_on_disk != self._config_applied:
                # Edited by hand on the host: put the released revision back and apply it
                # (`headway config restore` is a new generation of the same release).
                log.info("restoring config %s of v%d (the files on disk were changed)",
                         label_of(bundle), target.number)
                if _reloadable(app, target):
                    return await self._reload_switch(app, target, seq)
                return await self._switch(target, seq)
        self.app = app.with_(target=target, executor=target.service.run.executor)
        save_app(self.state_dir, self.app)
        self._sticky = False
        if not Path(app.release_dir).is_dir():
            # Our state directory was deleted under the app: stage the release again, at
            # the same path, so a later restart finds it.
            with contextlib.suppress(ArtifactError, ServerUnreachable):
                tarball = await self.cache.fetch(target.release.artifact, f"v{target.number}")
                await asyncio.to_thread(self.cache.stage, target, tarball)
        if self.cache.release_dir(target).is_dir() and app.dir_name == target.dir_name:
            atomic_symlink(self.state_dir / "current", self.cache.release_dir(target))
        if bundle is not None and not self.configs.is_active(bundle):
            # The files are gone (state directory deleted): put them back for the next read;
            # the app has this revision loaded already.
            await self._install_config(target, Path(app.release_dir), None)
        if self._health is Health.HEALTHY:
            self._converged(target.generation)
        else:
            self._pending = target.generation
            self._publish()
        return Outcome.DONE

    # ---- config --------------------------------------------------------------------------

    def _values(self, target: Target) -> dict[str, str]:
        return fill_values(self.settings.name, self.settings.address, target.service.port,
                           dict(self.settings.labels))

    def _env(self, target: Target, release_dir: Path) -> dict[str, str]:
        return app_env(
            target, host=self.settings.name, address=self.settings.address,
            release_dir=release_dir, app_id=self.app_id,
            config_dir=self.configs.current if target.release.config is not None else None,
        )

    def _tool_env(self, target: Target, release_dir: Path) -> dict[str, str]:
        """The app's environment for a validator or reload command, without the app id (so
        one left running by a killed agent is never taken for a copy of the app)."""
        env = self._env(target, release_dir)
        env.pop("HEADWAY_APP_ID", None)
        return env

    async def _prepare_config(self, target: Target, release_dir: Path) -> Staged | None:
        """The release's config fetched (or from the cache), staged, filled and validated."""
        bundle = target.release.config
        if bundle is None:
            return None
        spec = target.service.config or ConfigSpec()
        what = f"{label_of(bundle)} of v{target.number}"
        tarball = await self.configs.fetch(bundle, spec, what)
        staged = await asyncio.to_thread(self.configs.stage, tarball, bundle,
                                         self._values(target), spec.max_bytes, what)
        try:
            await self.configs.validate(staged, spec, self._tool_env(target, release_dir),
                                        release_dir, what)
        except BaseException:
            staged.discard()
            raise
        return staged

    async def _stage_config(
        self, target: Target, seq: int, previous: AppRecord | None, release_dir: Path
    ) -> Staged | Outcome | None:
        """The config step of a switch: a `Staged` revision, None (the release has no
        config), or the `Outcome` of the desired state when it cannot go on."""
        bundle = target.release.config
        if bundle is None:
            return None
        self._journal(Step.CONFIG, target, previous)
        self._set(self._health, f"installing v{target.number}: staging and validating "
                                f"its config {label_of(bundle)}")
        try:
            staged = await self._unless_superseded(self._prepare_config(target, release_dir), seq)
        except ServerUnreachable as error:
            clear_journal(self.state_dir)
            log.warning("%s; retrying", error.message)
            self._set(self._health, f"installing v{target.number}: {error.message}; retrying")
            return Outcome.RETRY
        except ArtifactError as error:
            clear_journal(self.state_dir)
            self._fail(target.generation, f"{error.message}; not activated, the running app "
                                          "and its config are untouched")
            return Outcome.DONE
        if staged is None:
            clear_journal(self.state_dir)
            return Outcome.SUPERSEDED
        return staged

    async def _install_config(self, target: Target, release_dir: Path,
                              staged: Staged | None) -> None:
        """Put the release's config in place and make it current (from ``staged``, or
        prepared again from the cached bundle when it is not current and intact)."""
        bundle = target.release.config
        if bundle is None:
            return
        try:
            if staged is None:
                if self.configs.is_active(bundle):
                    return
                staged = await self._prepare_config(target, release_dir)
                assert staged is not None
            applied = await asyncio.to_thread(self.configs.install, staged)
            log.info("config %s of v%d in place (%d files, %s)", label_of(bundle),
                     target.number, staged.files, applied)
            await asyncio.to_thread(self.configs.prune, {short(bundle)})
        except (ArtifactError, ServerUnreachable) as error:
            log.error("cannot put config %s of v%d in place: %s; the app gets the config "
                      "on disk", label_of(bundle), target.number, error.message)
        except OSError as error:
            log.error("cannot write config %s of v%d: %s", label_of(bundle), target.number,
                      error)
        finally:
            if staged is not None:
                staged.discard()
            self._refresh_config()

    async def _reload_switch(self, app: AppRecord, target: Target, seq: int) -> Outcome:
        """A config-only change (or a restore) applied by reloading the running app."""
        bundle = target.release.config
        assert bundle is not None
        self._sticky = False
        release_dir = Path(app.release_dir)
        log.info("config %s for v%d (generation %d): reloading v%d in place",
                 label_of(bundle), target.number, target.generation, app.release)
        staged = await self._stage_config(target, seq, app, release_dir)
        if isinstance(staged, Outcome):
            return staged
        assert staged is not None
        if self._desired_seq != seq:
            staged.discard()
            clear_journal(self.state_dir)
            return Outcome.SUPERSEDED
        self._journal(Step.RELOAD, target, app)
        await self._install_config(target, release_dir, staged)
        self.app = app.with_(target=target, release=target.number,
                             executor=target.service.run.executor)
        save_app(self.state_dir, self.app)
        problem = await self._reload(self.app)
        clear_journal(self.state_dir)
        if problem:
            self._fail(target.generation, f"config {label_of(bundle)} is in place but "
                                          f"reloading the app failed: {problem}")
            return Outcome.DONE
        self._pending = target.generation
        self._set(self._health, f"reloaded config {label_of(bundle)}; checking health")
        return Outcome.DONE

    async def _reload(self, app: AppRecord) -> str:
        """Tell the running app to read its config again; "" or what went wrong."""
        target = app.target
        assert target is not None
        spec = target.service.config or ConfigSpec()
        if spec.reload_command:
            code, detail = await run_command(
                list(spec.reload_command), cwd=Path(app.release_dir),
                env=self._tool_env(target, Path(app.release_dir)), timeout=RELOAD_TIMEOUT,
                log_path=self.state_dir / "logs" / "app.log",
            )
            return "" if code == 0 else f"reload command {spec.reload_command[0]!r} {detail}"
        if app.pid is None:
            return "no process to signal"
        sig = signal.Signals[f"SIG{spec.reload_signal}"]
        if self.process.send(app.pid, sig):
            log.info("sent SIG%s to v%d (pid %d)", spec.reload_signal, app.release, app.pid)
        else:
            log.warning("v%d (pid %d) is gone; it starts again with the new config",
                        app.release, app.pid)
        return ""

    async def _unless_superseded(self, work: Coroutine[Any, Any, T], seq: int) -> T | None:
        """The result of ``work``, or None (and ``work`` cancelled) once a newer desired arrives."""
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                waiter = self.desired_changed.waiter()
                if self._desired_seq != seq:
                    return None
                woken = asyncio.ensure_future(waiter.wait())
                try:
                    await asyncio.wait({task, woken}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woken.cancel()
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _leave_balancer(self, previous: AppRecord, target: Target, seq: int) -> bool:
        """Under a polling balancer, stop the app only once GET /ready has answered 503 for
        the balancer's settle time. Normally the server's drain waited that long already and
        this returns at once; it waits when the drain and the new release came together
        (say, after a reconnect). False if a newer desired state arrived meanwhile."""
        if self.readiness.spec is None:
            return True
        self._set(Health.STARTING, f"taking v{previous.release} out of load balancing "
                                   f"to start v{target.number}")
        wait = self.readiness.settle_left()
        if wait <= 0:
            return True
        log.info("waiting %.2fs for the load balancer to stop sending to v%d before stopping it",
                 wait, previous.release)

        async def settle() -> bool:
            await asyncio.sleep(wait)
            return True

        return await self._unless_superseded(settle(), seq) is not None

    def _journal(self, step: Step, target: Target, previous: AppRecord | None) -> None:
        write_journal(
            self.state_dir,
            Journal(step, target, previous.pid if previous else None,
                    previous.release if previous else None),
        )

    async def _switch(self, target: Target, seq: int) -> Outcome:
        what = f"v{target.number}"
        previous = self.app
        self._sticky = False
        if previous is not None:
            log.info("switching v%d -> %s (generation %d)", previous.release, what, target.generation)
        else:
            log.info("installing %s (generation %d)", what, target.generation)
        release_dir = self.cache.release_dir(target)
        if not release_dir.is_dir():
            self._journal(Step.FETCH, target, previous)
            self._set(self._health, f"installing {what}: fetching its artifact")
            try:
                tarball = await self._unless_superseded(
                    self.cache.fetch(target.release.artifact, what), seq
                )
                if tarball is None:
                    clear_journal(self.state_dir)
                    return Outcome.SUPERSEDED
                self._journal(Step.STAGE, target, previous)
                release_dir = await asyncio.to_thread(self.cache.stage, target, tarball)
            except ServerUnreachable as error:
                clear_journal(self.state_dir)
                log.warning("%s; retrying", error.message)
                self._set(self._health, f"installing {what}: {error.message}; retrying")
                return Outcome.RETRY
            except ArtifactError as error:
                clear_journal(self.state_dir)
                self._fail(target.generation, f"{error.message}; the running app is untouched")
                return Outcome.DONE
        if self._desired_seq != seq:
            clear_journal(self.state_dir)
            return Outcome.SUPERSEDED
        staged = await self._stage_config(target, seq, previous, release_dir)
        if isinstance(staged, Outcome):
            return staged
        try:
            if self._desired_seq != seq:
                clear_journal(self.state_dir)
                return Outcome.SUPERSEDED
            if previous is not None and not await self._leave_balancer(previous, target, seq):
                clear_journal(self.state_dir)
                return Outcome.SUPERSEDED
            self._journal(Step.STOP, target, previous)
            if previous is not None:
                self._set(Health.STARTING, f"stopping v{previous.release} to start {what}")
                await self._stop(previous)
            self.app = None
            save_app(self.state_dir, None)
            if self._desired_seq != seq:
                return Outcome.SUPERSEDED   # the journal stays: a crash now still finishes it
            await self._flip_and_start(target, release_dir, staged)
        finally:
            if staged is not None:
                staged.discard()
        keep = {target.dir_name} | ({previous.dir_name} if previous else set())
        await asyncio.to_thread(self.cache.prune, keep)
        return Outcome.DONE

    async def _flip_and_start(self, target: Target, release_dir: Path,
                              staged: Staged | None = None) -> None:
        self._journal(Step.FLIP, target, None)
        await self._install_config(target, release_dir, staged)
        atomic_symlink(self.state_dir / "current", release_dir)
        self.cache.touch(release_dir)
        self._journal(Step.START, target, None)
        self._hold = None
        self._backoff = BACKOFF_MIN
        self._pending = target.generation
        await self._start(target, release_dir)
        clear_journal(self.state_dir)

    def _launch(self, target: Target, release_dir: Path) -> Launch:
        run = target.service.run
        return Launch(
            argv=list(run.start),
            cwd=release_dir,
            env=self._env(target, release_dir),
            log_path=self.state_dir / "logs" / "app.log",
            stop_argv=list(run.stop) if run.stop else None,
            stop_timeout=run.stop_timeout,
        )

    async def _stop(self, app: AppRecord) -> None:
        launch = self._launch(app.target, Path(app.release_dir)) if app.target else None
        note = await self.executors[app.executor].stop(app.pid, launch)
        if note:
            log.warning("stopping v%d: %s", app.release, note)

    async def _stop_strays(self, keep: int | None = None) -> None:
        """Never two copies: stop any process that carries our app id (but ``keep``)."""
        for stray in find_app_processes(self.app_id):
            if stray.pid != keep:
                log.warning("found another copy of the app (pid %d); stopping it", stray.pid)
                await self.process.stop(stray.pid, None)

    async def _start(self, target: Target, release_dir: Path) -> None:
        what = f"v{target.number}"
        kind = target.service.run.executor
        if self._hold is None:
            self._set(Health.STARTING, f"starting {what}")
        self._ever_healthy = False
        self._started = self.clock.monotonic()
        self._restart_at = None
        record = AppRecord(
            pid=None, release=target.number, generation=self._generation,
            started_at=self.clock.now(), release_dir=str(release_dir), executor=kind,
            target=target,
        )
        if kind is ExecutorKind.PROCESS:
            await self._stop_strays()
        try:
            pid = await self.executors[kind].start(self._launch(target, release_dir))
        except StartFailed as error:
            self.app = record
            save_app(self.state_dir, record)
            self._crashed(str(error), during_start=True)
            return
        self.app = record.with_(pid=pid)
        save_app(self.state_dir, self.app)
        log.info("started %s (pid %s)", what, pid)

    def _crashed(self, detail: str, *, during_start: bool) -> None:
        delay = self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        self._restart_at = self.clock.monotonic() + delay
        self._hold = Health.FAILED if during_start else Health.UNHEALTHY
        if during_start:
            message = f"{detail} during start; retrying in {delay:g}s"
            log.error("%s", message)
            self._set(Health.FAILED, message)
            if self._pending is not None:
                self._converged(self._pending)
        else:
            message = f"{detail}; restarting it in {delay:g}s"
            log.warning("%s", message)
            self._set(Health.UNHEALTHY, message)

    # ---- supervision ----------------------------------------------------------------------

    async def supervise(self) -> float:
        """Probe or restart the app; seconds until it wants to look again."""
        app = self.app
        self._refresh_config()
        if app is None:
            return IDLE_TICK
        now = self.clock.monotonic()
        if self._restart_at is not None:
            if now < self._restart_at:
                return self._restart_at - now
            return await self._restart(app)
        exited = self.executors[app.executor].poll(app.pid)
        if exited is not None:
            code = "unknown" if exited.code is None else str(exited.code)
            self.app = app.with_(pid=None)
            save_app(self.state_dir, self.app)
            self._crashed(f"app exited with code {code}", during_start=not self._ever_healthy)
            return max(0.0, (self._restart_at or now) - now)
        if app.target is None:
            self._set(self._health, "running; waiting for the server's desired state")
            return IDLE_TICK
        spec = app.target.service
        release_dir = Path(app.release_dir)
        env = self._env(app.target, release_dir)
        result = await probe(spec.health, self.settings.address, spec.port,
                             release_dir if release_dir.is_dir() else None, env)
        if result.ok:
            if not self._ever_healthy:
                log.info("v%d is healthy", app.release)
            self._ever_healthy = True
            self._hold = None
            self._backoff = BACKOFF_MIN
            self._set(Health.HEALTHY, "")
            if self._pending is not None:
                self._converged(self._pending)
        elif self._hold is None:
            grace = spec.strategy.progress_deadline
            starting = (
                not self._ever_healthy and not result.answered and now - self._started < grace
            )
            self._set(Health.STARTING if starting else Health.UNHEALTHY, result.detail)
        return STARTING_TICK if not self._ever_healthy else spec.health.interval

    async def _restart(self, app: AppRecord) -> float:
        self._restart_at = None
        target = app.target
        if target is None:
            self._set(Health.UNHEALTHY, "app is not running and its spec is not known yet; "
                                        "waiting for the server's desired state")
            return IDLE_TICK
        release_dir = Path(app.release_dir)
        if not release_dir.is_dir():
            try:
                tarball = await self.cache.fetch(target.release.artifact, f"v{target.number}")
                release_dir = await asyncio.to_thread(self.cache.stage, target, tarball)
                atomic_symlink(self.state_dir / "current", release_dir)
            except (ArtifactError, ServerUnreachable) as error:
                self._crashed(f"cannot restage v{target.number}: {error.message}",
                              during_start=not self._ever_healthy)
                return IDLE_TICK
        await self._start(target, release_dir)
        return STARTING_TICK

    # ---- after a crash of the agent -------------------------------------------------------

    async def recover(self) -> None:
        """Find the app again, finish or drop a half-done switch, never start a second copy."""
        self.cache.clean_partials()
        self.configs.clean_partials()
        record = load_app(self.state_dir)
        found = find_app_processes(self.app_id)
        chosen = next((p for p in found if record and p.pid == record.pid), None)
        if chosen is None and found:
            chosen = found[-1]                      # the newest one
        await self._stop_strays(keep=chosen.pid if chosen else None)
        app: AppRecord | None = None
        if chosen is not None:
            if record is not None and Path(chosen.release_dir).name == record.dir_name:
                app = record.with_(pid=chosen.pid)
            else:
                app = AppRecord(
                    pid=chosen.pid, release=chosen.release or 0, generation=0,
                    started_at=self.clock.now(), release_dir=chosen.release_dir,
                )
            log.info("adopted the running app: pid %d, v%d", chosen.pid, app.release)
        elif record is not None:
            app = record if record.executor is ExecutorKind.COMMANDS else record.with_(pid=None)
        self.app = app
        if self._desired is None and app is not None and app.target is not None:
            self.readiness.configure(app.target.service)  # /ready answers before the server
        self._generation = app.generation if app else 0
        self._ever_healthy = True
        self._started = self.clock.monotonic()
        if app is not None and app.pid is None and app.executor is ExecutorKind.PROCESS:
            log.info("v%d is recorded but not running; starting it", app.release)
            self._restart_at = self.clock.monotonic()
            self._set(Health.STARTING, f"v{app.release} was not running; starting it")
        self._refresh_config()
        self._publish()
        self.adopted.set()
        journal = read_journal(self.state_dir)
        if journal is not None:
            await self._recover_switch(journal)
        save_app(self.state_dir, self.app)
        self._publish()

    async def _recover_switch(self, journal: Journal) -> None:
        target, app = journal.target, self.app
        if not journal.step.committed:
            log.info("dropping a switch to v%d that had not touched the app", target.number)
            clear_journal(self.state_dir)
            return
        if journal.step is Step.RELOAD:
            await self._recover_reload(target, app)
            return
        if app is not None and app.pid is not None and app.dir_name == target.dir_name:
            log.info("the switch to v%d had started it; finishing the switch", target.number)
            self.app = app.with_(target=target)
            self._pending = target.generation
            self._ever_healthy = False
            clear_journal(self.state_dir)
            return
        release_dir = self.cache.release_dir(target)
        if not release_dir.is_dir():
            log.warning("cannot finish the switch to v%d: its release directory is gone",
                        target.number)
            clear_journal(self.state_dir)
            return
        log.info("finishing the interrupted switch to v%d", target.number)
        if app is not None:
            self._set(Health.STARTING, f"stopping v{app.release} to start v{target.number}")
            await self._stop(app)
            self.app = None
            save_app(self.state_dir, None)
        await self._flip_and_start(target, release_dir)

    async def _recover_reload(self, target: Target, app: AppRecord | None) -> None:
        """Finish a config reload: the revision in place (again), the app told (again)."""
        log.info("finishing the interrupted config reload for v%d", target.number)
        release_dir = Path(app.release_dir) if app is not None else self.cache.release_dir(target)
        await self._install_config(target, release_dir, None)
        if app is not None:
            self.app = app.with_(target=target, release=target.number,
                                 executor=target.service.run.executor)
            save_app(self.state_dir, self.app)
            if self._restart_at is None:
                problem = await self._reload(self.app)
                if problem:
                    log.warning("reloading after the interrupted config reload: %s", problem)
            self._pending = target.generation
            self._ever_healthy = False
        clear_journal(self.state_dir)
        self._refresh_config()


def _config_digest(target: Target) -> str:
    return target.release.config.digest if target.release.config is not None else ""


def _same_release(app: AppRecord, target: Target) -> bool:
    """The app runs ``target``'s release already (artifact and config)."""
    if app.target is None:
        return app.dir_name == target.dir_name
    running = app.target
    return (running.number == target.number
            and running.release.artifact.digest == target.release.artifact.digest
            and _config_digest(running) == _config_digest(target))


def _config_only(app: AppRecord, target: Target) -> bool:
    """Only the config differs from what runs: same artifact, parameters and run section."""
    running = app.target
    if running is None or running.release.config is None or target.release.config is None:
        return False
    return (running.release.artifact.digest == target.release.artifact.digest
            and running.release.params == target.release.params
            and running.service.run == target.service.run
            and running.service.port == target.service.port
            and running.release.config.digest != target.release.config.digest)


def _reloadable(app: AppRecord, target: Target) -> bool:
    """``config.apply: reload`` and a way to reload (the signal needs the process executor)."""
    spec = target.service.config or ConfigSpec()
    if spec.apply is not ApplyMode.RELOAD:
        return False
    return bool(spec.reload_command) or app.executor is ExecutorKind.PROCESS
