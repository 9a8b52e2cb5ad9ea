"""Sign-in sessions of the web UI: random ids kept in memory, each with its CSRF token.

Why random ids in memory rather than an HMAC of the token in the cookie:

- signing out *revokes*: the id is forgotten on the server, so a copy of the
  cookie (a shared screen, a proxy log) stops working at once. An HMAC of the
  operator token would be the same value for every sign-in and stay valid
  until the token itself is rotated;
- nothing secret is stored or derived: the cookie says nothing about the token;
- each session has its own CSRF token and its own name for the audit log
  (``ui:<name>``).

The cost: a restarted server has forgotten every session (operators sign in
again), and with several server replicas a browser must stick to one of them.
Both are acceptable for an operator's console; the API and CLI are unaffected.

The cookie (`COOKIE`) is ``HttpOnly`` (scripts cannot read it), ``SameSite=Strict``
(no other site can make the browser send it), scoped to ``/ui`` and ``Secure``
when the request came over HTTPS. Sessions end after `IDLE` seconds without a
request or `LIFETIME` seconds after sign-in, whichever is first. At most
`MAX_SESSIONS` live at once; signing in beyond that forgets the oldest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from headway.clock import Clock

COOKIE = "headway_session"
COOKIE_PATH = "/ui"
IDLE = 8 * 3600.0
LIFETIME = 24 * 3600.0
MAX_SESSIONS = 1000
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._@-]+")


def actor_name(raw: str) -> str:
    """What the sign-in form's name becomes in the audit log: ``ui:<name>``.

    >>> actor_name(" Ada Lovelace ")
    'ui:Ada-Lovelace'
    >>> actor_name("")
    'ui:operator'
    """
    name = _NAME_UNSAFE.sub("-", raw.strip()).strip("-")[:32]
    return f"ui:{name or 'operator'}"


@dataclass
class Session:
    key: str  # sha256 of the cookie value: the value itself is never kept
    actor: str
    csrf: str
    created: float
    seen: float


class Sessions:
    """The live sessions of one server (one instance per app; not shared between replicas)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._by_key: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    @staticmethod
    def _key(cookie: str) -> str:
        return hashlib.sha256(cookie.encode()).hexdigest()

    def create(self, actor: str) -> tuple[str, Session]:
        """A new session; returns the cookie value (shown once) and the session."""
        self._expire()
        while len(self._by_key) >= MAX_SESSIONS:
            oldest = min(self._by_key.values(), key=lambda s: s.created)
            del self._by_key[oldest.key]
        cookie = secrets.token_urlsafe(32)
        now = self._clock.monotonic()
        session = Session(self._key(cookie), actor, secrets.token_urlsafe(24), now, now)
        self._by_key[session.key] = session
        return cookie, session

    def get(self, cookie: str | None, *, touch: bool = True) -> Session | None:
        """The live session of a cookie value, or None (unknown, signed out or expired)."""
        if not cookie:
            return None
        key = self._key(cookie)
        session = self._by_key.get(key)
        if session is None:
            return None
        now = self._clock.monotonic()
        if now - session.seen > IDLE or now - session.created > LIFETIME:
            del self._by_key[key]
            return None
        if touch:
            session.seen = now
        return session

    def alive(self, session: Session) -> bool:
        """Still signed in (an open event stream checks this before each message)."""
        return self._by_key.get(session.key) is session

    def end(self, cookie: str | None) -> None:
        if cookie:
            self._by_key.pop(self._key(cookie), None)

    def _expire(self) -> None:
        now = self._clock.monotonic()
        for key, session in list(self._by_key.items()):
            if now - session.seen > IDLE or now - session.created > LIFETIME:
                del self._by_key[key]


def csrf_ok(session: Session, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(session.csrf.encode(), (presented or "").encode())
