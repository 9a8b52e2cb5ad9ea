"""The servers an agent knows: parsing ``--server`` lists, and which one it uses now.

With several ``headway server`` processes on one PostgreSQL database, every
server serves agents, so an agent may be given several URLs::

    --server http://10.0.0.1:7400,http://10.0.0.2:7400   (or --server repeated)

The channel (`headway.agent.runtime.Channel`) connects to the first; when a
connection fails or is lost it moves to the next one, round robin. Downloads
of server-relative URLs (artifacts and config bundles) go to the server the
channel uses now first, then to the others (`headway.agent.artifacts`).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from headway.errors import SpecError
from headway.protocol.messages import CHANNEL_PATH

URL_HINT = ("pass it like --server http://127.0.0.1:7400; several servers as a comma-separated "
            "list: --server http://127.0.0.1:7400,http://127.0.0.2:7400")


def split_servers(values: str | Iterable[str]) -> tuple[str, ...]:
    """Base URLs (no trailing ``/``) from one or more ``--server`` values, each of which may
    be a comma-separated list; blank items and repeats are dropped, the order is kept.

    ``"http://a:7400/, http://b:7400"`` -> ``("http://a:7400", "http://b:7400")``
    """
    items = [values] if isinstance(values, str) else list(values)
    found: list[str] = []
    for item in items:
        for part in item.split(","):
            url = part.strip()
            if urlsplit(url).path.endswith("/"):
                url = url.rstrip("/")
            if url and url not in found:
                found.append(url)
    return tuple(found)


def check_server_url(url: str) -> None:
    """Raise `SpecError` unless ``url`` is an ``http(s)://host[:port][/path]`` base URL."""
    problem = ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problem = "is not an http(s) URL"
    elif any(c.isspace() for c in url):
        problem = "holds white space"
    elif parts.query or parts.fragment or url.endswith(("?", "#")):
        problem = "must not have a query or a fragment"
    else:
        try:
            _ = parts.port                                # raises on a bad port
        except ValueError:
            problem = "has a bad port"
    if problem:
        raise SpecError(f"server address {url!r} {problem}", hint=URL_HINT)


def parse_servers(values: str | Iterable[str]) -> tuple[str, ...]:
    """`split_servers`, then every URL checked; at least one. Raises `SpecError`."""
    urls = split_servers(values)
    if not urls:
        raise SpecError("no server URL given", hint=URL_HINT)
    for url in urls:
        check_server_url(url)
    return urls


def channel_url_for(base_url: str) -> str:
    """``ws(s)://host:port[/path]/agent/v1/channel`` from ``http(s)://host:port[/path]``."""
    parts = urlsplit(base_url.rstrip("/"))
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path}{CHANNEL_PATH}"


class ServerList:
    """The agent's servers in order, and the one the channel uses now (shared by the
    channel, which moves it, and the downloads, which start from it)."""

    def __init__(self, urls: Iterable[str]) -> None:
        self.urls = split_servers(urls)
        if not self.urls:
            raise ValueError("a ServerList needs at least one URL")
        self._index = 0

    def __len__(self) -> int:
        return len(self.urls)

    @property
    def current(self) -> str:
        return self.urls[self._index]

    def advance(self) -> str:
        """Move to the next server (after the last one: the first again); return it."""
        self._index = (self._index + 1) % len(self.urls)
        return self.current

    def in_order(self) -> tuple[str, ...]:
        """Every server, the current one first, then the others in round-robin order."""
        return self.urls[self._index:] + self.urls[:self._index]


__all__ = ["ServerList", "channel_url_for", "check_server_url", "parse_servers",
           "split_servers"]
