"""Bounded retries with full-jitter exponential backoff for calls to a load balancer.

Attempt ``n`` (from 0) that fails with a transient error waits a uniformly random time in
``[0, min(cap, base * 2**n)]`` before the next one ("full jitter", so that many callers
retrying at once spread out instead of hitting the balancer in lock step). With the defaults
(5 attempts, base 0.05 s, cap 2 s) the waits are at most 0.05, 0.1, 0.2 and 0.4 s: 0.75 s in
all, 0.375 s on average.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from headway.traffic.base import TransientTrafficError

T = TypeVar("T")

RETRYABLE: tuple[type[BaseException], ...] = (TransientTrafficError, OSError)


def backoff(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """The wait after failed attempt ``attempt`` (0-based)."""
    return rng.uniform(0.0, min(cap, base * (2.0**attempt)))


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int = 5,
    base: float = 0.05,
    cap: float = 2.0,
    rng: random.Random,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Await ``call()`` until it succeeds; retry `TransientTrafficError` and `OSError` (a
    socket that refuses, resets or times out) up to ``attempts`` times in all, then re-raise
    the last error. Any other error goes straight to the caller."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(attempts):
        try:
            return await call()
        except RETRYABLE:
            if attempt == attempts - 1:
                raise
        await sleep(backoff(attempt, base=base, cap=cap, rng=rng))
    raise AssertionError("unreachable")  # the loop returns or raises
