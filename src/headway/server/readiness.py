"""The readiness adapter: steering a load balancer that polls each host's GET /ready.

Cloud load balancers and the like cannot be told "drain h3"; they poll a
health URL on every host and stop sending to hosts that fail it ``fall``
times in a row. With ``traffic.balancer: readiness`` that URL is the agent's
readiness endpoint (`headway.agent.readiness`), and Headway steers the
balancer by what it answers:

    set_state(h, DRAIN | MAINT)   hosts.serve = FALSE in the store, the new
                                  `Desired` (serve=False) pushed to h's agent,
                                  whose GET /ready turns 503
    set_state(h, READY)           hosts.serve = TRUE; /ready answers 200 again
                                  once the app's health check passes

The flag is stored, so it survives a server restart and reaches an agent
that reconnects (desired state stays level-triggered); it is not part of
the generation, so the engine's own generations are untouched.

What this balancer cannot do, and how the port is still honoured:

- *Confirming the drain.* The balancer is not asked; ``settle_time`` is
  its check interval times its fall count (`ReadinessTraffic.settle_time`),
  which the drain handshake waits after setting DRAIN. The agent also
  refuses to stop the app before /ready has answered 503 that long.
- *Requests in flight.* Unknown: ``current_sessions`` is always 0, so the
  drain ends right after the settle time. Requests still running then are
  covered by the app's graceful shutdown (on SIGTERM it stops accepting,
  finishes what it has in flight, then exits; ``run.stop_timeout`` bounds it).
- *Weights.* A host is in or out. Any weight above 0 means in; 0 means out,
  like a drain (the weight is remembered and read back, so a blue-green
  shift in weighted steps becomes a shift at once on its first step).
- *Counters.* Sessions, responses and errors are not seen: all 0, and
  ``avg_response_ms`` None. Verification gates need another metrics source.
- *Membership.* The balancer's list of targets is the cloud's; here every
  host of the service in the store counts as registered (a host the server
  has never seen cannot be registered). `register` sets the state for
  ``admitted``; `deregister` takes the host out (serve = FALSE) and forgets
  it until it is registered again. DRAIN versus MAINT, and weights, are
  kept in memory: after a server restart a host reads back READY or DRAIN
  from its flag.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from headway.domain.spec import ReadinessTraffic
from headway.errors import HeadwayError, NotFound, StoreUnavailable
from headway.protocol.messages import Desired
from headway.store import Store, Tx
from headway.traffic.base import (
    ServerState,
    ServerStats,
    TrafficError,
    TransientTrafficError,
    check_address,
    check_name,
    check_port,
    check_weight,
)

SetServe = Callable[[str, bool], None]  # (host, serve): store the flag and tell the host's agent
GetServe = Callable[[], dict[str, bool]]  # every host of the service -> its stored flag

DEFAULT_WEIGHT = 1


@dataclass
class _Set:
    """What Headway last set on a host (the stored flag is the truth for in or out)."""

    state: ServerState
    weight: int


class ReadinessBackend:
    """A `TrafficBackend` for one service behind a polling balancer.

    ``set_serve(host, serve)`` stores a host's flag and pushes it to its agent;
    ``get_serve()`` reads every host's flag. Both may raise `TrafficError`
    (`TransientTrafficError` when the store is unavailable): see `StoreServeFlags`.
    """

    def __init__(
        self,
        readiness: ReadinessTraffic,
        *,
        set_serve: SetServe,
        get_serve: GetServe,
        name: str = "readiness",
    ) -> None:
        self.name = name
        self.settle_time = readiness.settle_time
        self._set_serve = set_serve
        self._get_serve = get_serve
        self._set: dict[str, _Set] = {}
        self._removed: set[str] = set()  # deregistered since; not members until registered

    # --- TrafficBackend ------------------------------------------------------------------------

    async def register(self, host: str, address: str, port: int, *, admitted: bool) -> None:
        """``address:port`` (the app's) are checked but not used: the balancer knows its
        targets. An existing host keeps its state unless ``admitted``; a new one starts out
        (MAINT) unless ``admitted``."""
        check_name(host)
        check_address(address)
        check_port(port)
        flags = self._get_serve()
        if self._member(host, flags):
            state, weight = self._current(host, flags)
            if admitted:
                state = ServerState.READY
        else:
            state, weight = (ServerState.READY if admitted else ServerState.MAINT), DEFAULT_WEIGHT
        self._apply(host, state, weight, flags.get(host))
        self._removed.discard(host)

    async def deregister(self, host: str) -> None:
        """Take ``host`` out (serve = FALSE) and forget it; nothing happens if it is not
        registered. Never refused for requests in flight: they are not seen."""
        check_name(host)
        flags = self._get_serve()
        if not self._member(host, flags):
            return
        if flags.get(host, False):
            self._set_serve(host, False)
        self._set.pop(host, None)
        self._removed.add(host)

    async def set_state(self, host: str, state: ServerState) -> None:
        check_name(host)
        state = ServerState(state)
        flags = self._known(host)
        _, weight = self._current(host, flags)
        self._apply(host, state, weight, None)  # pushed even when unchanged: heals a stale agent

    async def set_weight(self, host: str, weight: int) -> None:
        """Any weight above 0 serves fully; 0 takes the host out, like DRAIN."""
        check_name(host)
        check_weight(weight)
        flags = self._known(host)
        state, _ = self._current(host, flags)
        self._apply(host, state, weight, flags.get(host))

    async def stats(self) -> dict[str, ServerStats]:
        flags = self._get_serve()
        result = {}
        for host, serving in flags.items():
            if host in self._removed:
                continue
            state, weight = self._current(host, flags)
            result[host] = ServerStats(
                name=host,
                admin_state=state,
                status=_status(state, weight, serving),
                current_sessions=0,
                total_sessions=0,
                weight=weight,
                responses_2xx=0,
                responses_5xx=0,
                connection_errors=0,
                response_errors=0,
                avg_response_ms=None,
            )
        return result

    # --- helpers -------------------------------------------------------------------------------

    def _member(self, host: str, flags: dict[str, bool]) -> bool:
        return host in flags and host not in self._removed

    def _known(self, host: str) -> dict[str, bool]:
        flags = self._get_serve()
        if not self._member(host, flags):
            raise TrafficError(
                f"{self.name} has no host {host}",
                hint="register the host with the load balancer first (its agent must have connected)",
            )
        return flags

    def _current(self, host: str, flags: dict[str, bool]) -> tuple[ServerState, int]:
        """The host's state and weight: what Headway set, unless the stored flag says that
        someone else (another server, a restart) put it in or out since."""
        serving = flags[host]
        last = self._set.get(host)
        if last is None:
            return (ServerState.READY if serving else ServerState.DRAIN), DEFAULT_WEIGHT
        if serving == _serves(last.state, last.weight):
            return last.state, last.weight
        if serving:
            return ServerState.READY, max(last.weight, DEFAULT_WEIGHT)
        return ServerState.DRAIN, last.weight

    def _apply(self, host: str, state: ServerState, weight: int, stored: bool | None) -> None:
        """Store the flag ``state`` and ``weight`` mean (unless ``stored`` already says
        so), then remember them; nothing is remembered if the store refused."""
        serve = _serves(state, weight)
        if stored is None or stored != serve:
            self._set_serve(host, serve)
        self._set[host] = _Set(state, weight)


def _serves(state: ServerState, weight: int) -> bool:
    return state is ServerState.READY and weight > 0


def _status(state: ServerState, weight: int, serving: bool) -> str:
    if serving:
        return "UP"
    if state is ServerState.READY:
        return "UP, weight 0: /ready answers 503" if weight == 0 else "UP"
    return "MAINT" if state is ServerState.MAINT else "DRAIN"


class StoreServeFlags:
    """The serve flags of a server's hosts: kept in the store, pushed to connected agents.

    ``desired(tx, host)`` builds the host's current `Desired` (the runner's), and
    ``push(host, message)`` hands it to the host's agent session if it has one; an agent
    that is away gets the flag in the answer to its next hello.
    """

    def __init__(
        self,
        store: Store,
        desired: Callable[[Tx, str], Desired | None],
        push: Callable[[str, Desired], object],
    ) -> None:
        self._store = store
        self._desired = desired
        self._push = push

    def set_serve(self, host: str, serve: bool) -> None:
        """Store the flag and push the host's desired state (even if the flag was already so:
        an agent that missed a message is brought in line)."""
        with _mapped(host), self._store.tx() as tx:
            tx.set_host_serve(host, serve)
            message = self._desired(tx, host)
        if message is not None:
            self._push(host, message)

    def serving(self, service: str) -> dict[str, bool]:
        with _mapped(service), self._store.tx() as tx:
            return {h.name: h.serve for h in tx.list_hosts(service)}

    def backend(self, service: str, readiness: ReadinessTraffic) -> ReadinessBackend:
        return ReadinessBackend(
            readiness, set_serve=self.set_serve, get_serve=lambda: self.serving(service)
        )


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    """Store errors as the traffic port's: unavailable -> transient, the rest -> permanent."""
    try:
        yield
    except TrafficError:
        raise
    except StoreUnavailable as error:
        raise TransientTrafficError(error.message, hint=error.hint) from error
    except NotFound as error:
        raise TrafficError(
            f"{what} is not known to the server",
            hint="a host is known once its agent has connected; check that `headway agent` runs there",
        ) from error
    except HeadwayError as error:
        raise TrafficError(error.message, hint=error.hint or "see the server log") from error


__all__ = ["GetServe", "ReadinessBackend", "SetServe", "StoreServeFlags"]
