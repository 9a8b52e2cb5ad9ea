"""Just enough HTTP/1.1 to stream one GET: the agent's only HTTP client (artifacts).

Written on asyncio streams rather than pulling in a client library, to keep
the agent small (an idle agent should stay under 50 MiB). Bodies sized by
Content-Length, chunked, or ended by close are all handled; the caller
decides how much it is willing to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

CHUNK = 64 * 1024
MAX_HEADER_LINES = 100


class ConnectFailed(OSError):
    """No answer from the server at all (worth a retry)."""


class BrokenResponse(Exception):
    """The answer started but was malformed or cut short."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    read_timeout: float
    writer: asyncio.StreamWriter = field(repr=False)

    async def _read(self, pending: Awaitable[bytes]) -> bytes:
        async with asyncio.timeout(self.read_timeout):
            return await pending

    async def body(self) -> AsyncIterator[bytes]:
        """The body in pieces; raises `BrokenResponse` if it ends before it says it would."""
        try:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                async for piece in self._chunked():
                    yield piece
                return
            length = self.headers.get("content-length")
            remaining = int(length) if length is not None and length.isdigit() else None
            while remaining is None or remaining > 0:
                want = CHUNK if remaining is None else min(CHUNK, remaining)
                piece = await self._read(self.reader.read(want))
                if not piece:
                    if remaining is None:
                        return
                    raise BrokenResponse(f"connection closed with {remaining} bytes still due")
                if remaining is not None:
                    remaining -= len(piece)
                yield piece
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
            raise BrokenResponse(str(error) or type(error).__name__) from None

    async def _chunked(self) -> AsyncIterator[bytes]:
        while True:
            line = await self._read(self.reader.readline())
            size = int(line.split(b";")[0].strip() or b"x", 16)
            if size == 0:
                while (await self._read(self.reader.readline())).strip():
                    pass                                  # trailers
                return
            while size > 0:
                piece = await self._read(self.reader.readexactly(min(size, CHUNK)))
                size -= len(piece)
                yield piece
            await self._read(self.reader.readexactly(2))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def get(
    url: str, headers: dict[str, str], *, connect_timeout: float = 10.0, read_timeout: float = 30.0
) -> Response:
    """Send ``GET url`` and read the status and headers; close the `Response` when done."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    port = parts.port or (443 if tls else 80)
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=tls,
                                                           limit=CHUNK * 2)
    except (OSError, TimeoutError) as error:
        raise ConnectFailed(f"cannot connect to {parts.netloc}: {error or 'timed out'}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close",
             "User-Agent: headway-agent", *(f"{k}: {v}" for k, v in headers.items())]
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        async with asyncio.timeout(read_timeout):
            await writer.drain()
            status_line = await reader.readline()
            fields = status_line.decode("latin-1").split(None, 2)
            if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
                raise BrokenResponse(f"not an HTTP answer: {status_line[:60]!r}")
            found: dict[str, str] = {}
            for _ in range(MAX_HEADER_LINES):
                line = (await reader.readline()).decode("latin-1").strip()
                if not line:
                    break
                key, _, value = line.partition(":")
                found[key.strip().lower()] = value.strip()
            else:
                raise BrokenResponse("too many header lines")
    except (OSError, TimeoutError) as error:
        writer.close()
        raise ConnectFailed(f"no answer from {parts.netloc}: {error or 'timed out'}") from None
    except BaseException:
        writer.close()
        raise
    return Response(int(fields[1]), found, reader, read_timeout, writer)
