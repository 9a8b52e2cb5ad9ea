"""HAProxy (2.6 or newer) steered over its runtime API: the UNIX stats socket.

The socket must be declared with admin rights in ``global``::

    stats socket /path/haproxy.sock mode 600 level admin

and the backend must use a dynamic algorithm (``balance roundrobin``) so that servers can be
added at run time. Each command travels on its own connection: send one line, read until
HAProxy closes. Commands used, and the replies they give on success (HAProxy 2.6.12)::

    add server B/H ADDR:PORT [check inter 500ms fall 2 rise 1]   "New server registered."
    enable health B/H                                           ""  (checks start; the server
                                                                     is assumed UP until `fall`
                                                                     checks fail)
    set server B/H state ready|drain|maint                      ""
    set server B/H weight N                                     ""
    set server B/H addr IP port P                               "IP changed from ..."
    del server B/H                                              "Server deleted." (only in
                                                                     maint, with no connection)
    show stat B 4 -1                                            CSV, one line per server
    show servers state B                                        admin state bit masks, weights

A dynamic server starts in maintenance. DRAIN removes a server from load balancing at once:
requests in flight finish, new ones go elsewhere, health checks go on (a drained server whose
app stopped shows ``DOWN``). MAINT also stops the checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

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
from headway.traffic.retry import with_retries

T = TypeVar("T")

# srv_admin_state bits in `show servers state` (management.txt, "show servers state").
_FMAINT, _IMAINT, _CMAINT, _FDRAIN, _IDRAIN, _RMAINT = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_MAINT_BITS = _FMAINT | _IMAINT | _CMAINT | _RMAINT
_DRAIN_BITS = _FDRAIN | _IDRAIN

_SOCKET_HINT = "is HAProxy running, and does its `stats socket` line point at this path?"


class HAProxyRuntime:
    """One runtime API command per connection over the UNIX stats socket.

    Socket problems (missing, refused, reset, silent) become `TransientTrafficError`; a socket
    Headway may not open becomes `TrafficError`. Replies are returned as text: judging them is
    the caller's business (see `HAProxyBackend`).
    """

    def __init__(self, socket_path: Path, *, timeout: float = 5.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    async def execute(self, command: str) -> str:
        if not command or any(c in command for c in "\r\n;") or not command.isprintable():
            raise TrafficError(
                f"refusing to send {command!r} to HAProxy",
                hint="one runtime API command, without ';' or line breaks",
            )
        verb = " ".join(command.split()[:2])
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
                try:
                    writer.write(command.encode("ascii") + b"\n")
                    await writer.drain()
                    data = await reader.read()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError:
            raise TransientTrafficError(
                f"HAProxy at {self.socket_path} did not answer `{verb}` within {self.timeout:g}s",
                hint="HAProxy may be overloaded or stopping; " + _SOCKET_HINT,
            ) from None
        except PermissionError as error:
            raise TrafficError(
                f"no permission to open HAProxy's stats socket {self.socket_path}: {error.strerror}",
                hint="run Headway as the user that owns the socket, or change `mode`/`user` "
                "on the `stats socket` line",
            ) from None
        except FileNotFoundError:
            raise TransientTrafficError(
                f"no HAProxy stats socket at {self.socket_path}", hint=_SOCKET_HINT
            ) from None
        except OSError as error:
            raise TransientTrafficError(
                f"cannot talk to HAProxy at {self.socket_path}: {error.strerror or error}",
                hint=_SOCKET_HINT,
            ) from None
        if not data:
            # Every command answers at least a newline; nothing at all means HAProxy dropped us
            # (stopping, reloading, or out of connections on the socket).
            raise TransientTrafficError(
                f"HAProxy closed the stats socket without answering `{verb}`", hint=_SOCKET_HINT
            )
        return data.decode("utf-8", "replace")


def _refusal(command: str, reply: str) -> TrafficError:
    """Map a reply that is not the expected one to an error with a next step."""
    text = " ".join(reply.split())
    message = f"HAProxy refused `{command}`: {text}"
    if "Permission denied" in text:
        return TrafficError(message, hint="declare the stats socket with `level admin` in haproxy.cfg")
    if "No such backend" in text or "No such proxy" in text or "Can't find backend" in text:
        return TrafficError(message, hint="add the backend to haproxy.cfg, with `balance roundrobin`")
    if "No such server" in text:
        return TrafficError(message, hint="register the host with the load balancer first")
    if "dynamic load balancing" in text:
        return TrafficError(message, hint="use `balance roundrobin` (or leastconn) in this backend")
    if "Unknown command" in text:
        return TrafficError(message, hint="Headway needs HAProxy 2.6 or newer")
    if "connections attached" in text or "still has" in text:
        return TransientTrafficError(message, hint="wait for its requests to finish (drain it first)")
    return TrafficError(message, hint="check HAProxy's log and configuration")


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


class HAProxyBackend:
    """`TrafficBackend` for one HAProxy backend (a pool of servers, one per host).

    Every runtime command is retried on transient errors (``attempts``, jittered by ``rng``);
    callers such as `headway.traffic.drain.drain` add their own, longer-lived retries.
    With ``check``, servers get HTTP health checks as configured by the backend's
    ``option httpchk`` (every ``check_interval_ms``, DOWN after ``fall`` failures, UP after
    ``rise`` successes).
    """

    name = "haproxy"
    settle_time = 0.0  # the runtime API changes the load-balancing tree before it answers

    def __init__(
        self,
        socket_path: Path,
        backend: str,
        *,
        rng: random.Random,
        check: bool = True,
        check_interval_ms: int = 500,
        fall: int = 2,
        rise: int = 1,
        timeout: float = 5.0,
        attempts: int = 3,
    ) -> None:
        self.runtime = HAProxyRuntime(socket_path, timeout=timeout)
        self.backend = check_name(backend, "backend")
        self.check = check
        self.check_interval_ms = check_interval_ms
        self.fall = fall
        self.rise = rise
        self._rng = rng
        self._attempts = attempts

    # --- TrafficBackend ------------------------------------------------------------------------

    async def register(self, host: str, address: str, port: int, *, admitted: bool) -> None:
        target = f"{self.backend}/{check_name(host)}"
        ip, port = check_address(address), check_port(port)
        command = f"add server {target} {ip}:{port}"
        if self.check:
            command += f" check inter {self.check_interval_ms}ms fall {self.fall} rise {self.rise}"
        reply = await self._command(command, ok=("New server registered.",), tolerate=("Already exists",))
        if "Already exists" in reply:
            await self._move(host, ip, port)
        if self.check:
            # A server someone added without `check` stays unchecked; that is not ours to change.
            await self._command(f"enable health {target}", tolerate=("not configured",))
        if admitted:
            await self.set_state(host, ServerState.READY)

    async def deregister(self, host: str) -> None:
        target = f"{self.backend}/{check_name(host)}"
        if "No such server" in await self._command(
            f"set server {target} state maint", tolerate=("No such server",)
        ):
            return
        await self._command(f"del server {target}", ok=("Server deleted.",), tolerate=("No such server",))

    async def set_state(self, host: str, state: ServerState) -> None:
        await self._command(f"set server {self.backend}/{check_name(host)} state {ServerState(state)}")

    async def set_weight(self, host: str, weight: int) -> None:
        await self._command(f"set server {self.backend}/{check_name(host)} weight {check_weight(weight)}")

    async def stats(self) -> dict[str, ServerStats]:
        stat_csv, state_text = await asyncio.gather(
            self._run(f"show stat {self.backend} 4 -1"),
            self._run(f"show servers state {self.backend}"),
        )
        admin = self._parse_servers_state(state_text)
        result: dict[str, ServerStats] = {}
        for row in self._parse_stat(stat_csv):
            name = row.get("svname", "")
            if row.get("pxname") != self.backend or name in ("FRONTEND", "BACKEND") or name not in admin:
                continue  # a server added or removed between the two commands is left for next time
            state, weight = admin[name]
            rtime, total = row.get("rtime") or "", _int(row.get("stot"))
            result[name] = ServerStats(
                name=name,
                admin_state=state,
                status=row.get("status", ""),
                current_sessions=_int(row.get("scur")) + _int(row.get("qcur")),
                total_sessions=total,
                weight=weight,
                responses_2xx=_int(row.get("hrsp_2xx")),
                responses_5xx=_int(row.get("hrsp_5xx")),
                connection_errors=_int(row.get("econ")),
                response_errors=_int(row.get("eresp")),
                avg_response_ms=float(rtime) if rtime.isdigit() and total else None,
            )
        return result

    # --- helpers -------------------------------------------------------------------------------

    async def _run(self, command: str) -> str:
        return await self._retry(lambda: self.runtime.execute(command))

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        return await with_retries(call, attempts=self._attempts, rng=self._rng)

    async def _command(
        self, command: str, ok: tuple[str, ...] = ("",), tolerate: tuple[str, ...] = ()
    ) -> str:
        """Run ``command`` until its reply is one of ``ok`` or contains one of ``tolerate``
        (returned); other replies raise, transient ones (a busy server) after retries."""

        async def once() -> str:
            reply = (await self.runtime.execute(command)).strip()
            if reply in ok or any(part in reply for part in tolerate):
                return reply
            raise _refusal(command, reply)

        return await self._retry(once)

    async def _move(self, host: str, ip: str, port: int) -> None:
        """Point an existing server at ``ip:port`` if it moved."""
        text = await self._run(f"show servers state {self.backend}")
        for row in self._rows(text):
            if row.get("srv_name") == host:
                if row.get("srv_addr") != ip or _int(row.get("srv_port")) != port:
                    await self._command(
                        f"set server {self.backend}/{host} addr {ip} port {port}", tolerate=("changed",)
                    )
                return

    def _rows(self, text: str) -> list[dict[str, str]]:
        """``show servers state``: a version line, ``# header``, then space-separated rows."""
        lines = text.splitlines()
        if not lines or lines[0].strip() != "1":
            raise _refusal(f"show servers state {self.backend}", text)
        header: list[str] = []
        rows = []
        for line in lines[1:]:
            if line.startswith("#"):
                header = line[1:].split()
            elif line.strip() and header:
                rows.append(dict(zip(header, line.split(), strict=False)))
        return rows

    def _parse_servers_state(self, text: str) -> dict[str, tuple[ServerState, int]]:
        admin: dict[str, tuple[ServerState, int]] = {}
        for row in self._rows(text):
            if row.get("be_name") != self.backend:
                continue
            bits = _int(row.get("srv_admin_state"))
            state = (
                ServerState.MAINT
                if bits & _MAINT_BITS
                else ServerState.DRAIN
                if bits & _DRAIN_BITS
                else ServerState.READY
            )
            admin[row.get("srv_name", "")] = (state, _int(row.get("srv_uweight")))
        return admin

    def _parse_stat(self, text: str) -> list[dict[str, str]]:
        if not text.startswith("# pxname"):
            raise _refusal(f"show stat {self.backend} 4 -1", text)
        lines = [line for line in text.removeprefix("# ").splitlines() if line.strip()]
        return list(csv.DictReader(lines))
