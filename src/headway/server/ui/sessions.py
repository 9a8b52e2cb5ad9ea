"""Sign-in sessions of the web UI: random ids kept in the database, each with its CSRF token.

Why random ids in the database rather than an HMAC of the token in the cookie:

- signing out *revokes*: the id is forgotten on the server, so a copy of the
  cookie (a shared screen, a proxy log) stops working at once. An HMAC of the
  operator token would be the same value for every sign-in and stay valid
  until the token itself is rotated;
- nothing secret is stored or derived: the cookie says nothing about the token;
- each session has its own CSRF token and its own name for the audit log
  (``ui:<name>``).

Sessions live in the store (table ``ui_sessions``, keyed by the sha256 of the
cookie), so a restarted server still knows them and every server sharing a
PostgreSQL database accepts them: a browser need not stick to one replica. Each
server remembers a session it has checked for `RECHECK` seconds, so a page with
a live event stream does not read the database for every message; a sign-out on
another server therefore takes effect here within `RECHECK` seconds. The time a
session was last seen is written at most every `TOUCH_EVERY` seconds.

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
from collections.abc import Callable
from dataclasses import dataclass

from headway.clock import Clock
from headway.store import Store
from headway.store._tx_ui import UiSessionRow

COOKIE = "headway_session"
COOKIE_PATH = "/ui"
IDLE = 8 * 3600.0
LIFETIME = 24 * 3600.0
MAX_SESSIONS = 1000
RECHECK = 5.0
TOUCH_EVERY = 60.0
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
    created: float  # epoch seconds
    seen: float


class Sessions:
    """The sessions of every server sharing the store, with a short-lived local memory."""

    def __init__(self, clock: Clock, store: Callable[[], Store]) -> None:
        """``store`` gives the server's store (made when the app starts, after this)."""
        self._clock = clock
        self._store_of = store
        self._checked: dict[str, tuple[Session, float]] = {}  # key -> (session, monotonic check)

    def __len__(self) -> int:
        return len(self._checked)

    @staticmethod
    def _key(cookie: str) -> str:
        return hashlib.sha256(cookie.encode()).hexdigest()

    def create(self, actor: str) -> tuple[str, Session]:
        """A new session; returns the cookie value (shown once) and the session."""
        cookie = secrets.token_urlsafe(32)
        now = self._clock.now()
        session = Session(self._key(cookie), actor, secrets.token_urlsafe(24), now, now)
        with self._store_of().tx() as tx:
            tx.expire_ui_sessions(now - IDLE, now - LIFETIME, keep=MAX_SESSIONS - 1)
            tx.put_ui_session(UiSessionRow(session.key, actor, session.csrf, now, now))
        self._checked[session.key] = (session, self._clock.monotonic())
        return cookie, session

    def get(self, cookie: str | None, *, touch: bool = True) -> Session | None:
        """The live session of a cookie value, or None (unknown, signed out or expired)."""
        if not cookie:
            return None
        session = self._lookup(self._key(cookie))
        if session is not None and touch:
            now = self._clock.now()
            if now - session.seen > TOUCH_EVERY:
                session.seen = now
                with self._store_of().tx() as tx:
                    tx.touch_ui_session(session.key, now)
        return session

    def alive(self, session: Session) -> bool:
        """Still signed in (an open event stream checks this before each message)."""
        return self._lookup(session.key) is not None

    def end(self, cookie: str | None) -> None:
        if cookie:
            key = self._key(cookie)
            self._checked.pop(key, None)
            with self._store_of().tx() as tx:
                tx.end_ui_session(key)

    def _lookup(self, key: str) -> Session | None:
        checked = self._checked.get(key)
        now = self._clock.now()
        if checked is not None and self._clock.monotonic() - checked[1] < RECHECK:
            session = checked[0]
        else:
            with self._store_of().tx() as tx:
                row = tx.get_ui_session(key)
            if row is None:
                self._checked.pop(key, None)
                return None
            session = Session(row.key, row.actor, row.csrf, row.created_at, row.seen_at)
            if checked is not None:
                session.seen = max(session.seen, checked[0].seen)
            self._checked[key] = (session, self._clock.monotonic())
        if now - session.seen > IDLE or now - session.created > LIFETIME:
            self._checked.pop(key, None)
            return None
        return session


def csrf_ok(session: Session, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(session.csrf.encode(), (presented or "").encode())
