"""Health probes: one HTTP GET, one TCP connect, or one command, each under a timeout.

A probe says whether it passed and whether the app *answered*: an HTTP
status that is not the expected one is an answer (the app is up and says it
is unwell), a refused connection is not (it may still be starting).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from headway.agent.executors import run_command
from headway.domain.spec import HealthSpec


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    answered: bool
    detail: str


async def probe(
    spec: HealthSpec, address: str, port: int, cwd: Path | None, env: dict[str, str] | None
) -> ProbeResult:
    try:
        async with asyncio.timeout(spec.timeout):
            if spec.http is not None:
                return await _http(address, spec.http.port or port, spec.http.path,
                                   spec.http.expect_status)
            if spec.tcp is not None:
                return await _tcp(address, spec.tcp.port or port)
            assert spec.command is not None
            return await _command(spec.command, cwd, env, spec.timeout)
    except TimeoutError:
        return ProbeResult(False, False, f"health check timed out after {spec.timeout:g}s")


async def _http(address: str, port: int, path: str, expect: int) -> ProbeResult:
    where = f"http://{address}:{port}{path}"
    try:
        reader, writer = await asyncio.open_connection(address, port)
    except OSError as error:
        return ProbeResult(False, False, f"health check {where}: {error.strerror or error}")
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {address}:{port}\r\nUser-Agent: headway-agent\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        line = await reader.readline()
    except OSError as error:
        return ProbeResult(False, False, f"health check {where}: {error.strerror or error}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    fields = line.decode("latin-1").split()
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        return ProbeResult(False, False, f"health check {where}: no HTTP answer")
    status = int(fields[1])
    if status != expect:
        return ProbeResult(False, True, f"health check {where} answered {status}, expected {expect}")
    return ProbeResult(True, True, "")


async def _tcp(address: str, port: int) -> ProbeResult:
    try:
        _, writer = await asyncio.open_connection(address, port)
    except OSError as error:
        return ProbeResult(False, False, f"health check tcp {address}:{port}: "
                                         f"{error.strerror or error}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeResult(True, True, "")


async def _command(
    argv: list[str], cwd: Path | None, env: dict[str, str] | None, timeout: float
) -> ProbeResult:
    code, detail = await run_command(argv, cwd=cwd, env=env, timeout=timeout + 1)
    if code == 0:
        return ProbeResult(True, True, "")
    return ProbeResult(False, False, f"health command {argv[0]!r} {detail}")
