"""A synthetic test (a test suite, a script) run against the canary hosts; exit 0 passes.

The argv is run as it is, never through a shell. Placeholders are filled with values built
from the hosts, never from user text:

- ``{canary_urls}``: ``http://address:port`` of each canary host;
- ``{canary_addresses}``: the canary hosts' IP addresses.

An argv item that is exactly a placeholder becomes one item per host
(``["smoke", "{canary_urls}"]`` -> ``["smoke", "http://127.0.22.1:8080", "http://127.0.22.2:8080"]``);
a placeholder inside a longer item is replaced by the values joined with spaces
(``--targets={canary_addresses}`` -> ``--targets=127.0.22.1 127.0.22.2``).

The command runs in its own process group with stdin closed; on timeout the whole group is
killed (SIGKILL), so a script's children go too. Standard output and error are merged and the
last `OUTPUT_LIMIT` bytes kept for the rollout's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from headway.clock import Clock

OUTPUT_LIMIT = 4096
PLACEHOLDERS = ("{canary_urls}", "{canary_addresses}")


@dataclass(frozen=True)
class CommandOutcome:
    argv: tuple[str, ...]
    exit_code: int | None  # None: it did not start or was killed on timeout; -N: killed by signal N
    timed_out: bool
    output: str  # the last OUTPUT_LIMIT bytes of stdout + stderr, decoded leniently
    seconds: float
    error: str = ""  # why it could not start ("" if it did)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def expand_argv(template: Sequence[str], urls: Sequence[str], addresses: Sequence[str]) -> list[str]:
    values = {"{canary_urls}": list(urls), "{canary_addresses}": list(addresses)}
    argv: list[str] = []
    for item in template:
        if item in values:
            argv.extend(values[item])
            continue
        for name, filled in values.items():
            item = item.replace(name, " ".join(filled))
        argv.append(item)
    return argv


async def run_command_gate(
    template: Sequence[str],
    *,
    urls: Sequence[str],
    addresses: Sequence[str],
    timeout: float,
    clock: Clock,
    cwd: str | None = None,
) -> CommandOutcome:
    argv = tuple(expand_argv(template, urls, addresses))
    start = clock.monotonic()
    if not argv or not argv[0]:
        return CommandOutcome(argv, None, False, "", 0.0, "the command is empty")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
        )
    except OSError as error:
        why = f"cannot run {argv[0]!r}: {error.strerror or error}"
        return CommandOutcome(argv, None, False, "", clock.monotonic() - start, why)
    tail = bytearray()
    assert proc.stdout is not None
    stdout = proc.stdout

    async def read() -> None:
        while chunk := await stdout.read(65536):
            tail.extend(chunk)
            del tail[:-OUTPUT_LIMIT]

    reader = asyncio.create_task(read())
    timed_out = False
    try:
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            timed_out = True
            _kill_group(proc.pid)
            await proc.wait()
        # A child that left the group may still hold the pipe open: do not wait for it long.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), 2.0)
    finally:
        if proc.returncode is None:
            _kill_group(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
        _kill_group(proc.pid)  # leftovers of a script that exited but left children behind
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    output = bytes(tail).decode("utf-8", errors="replace")
    code = None if timed_out else proc.returncode
    return CommandOutcome(argv, code, timed_out, output, clock.monotonic() - start)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
