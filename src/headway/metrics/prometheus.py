"""One number from Prometheus's HTTP API (``GET /api/v1/query``), for the canary or the baseline.

The query is a template: ``{hosts}`` becomes a regular expression matching exactly the given
``address:port`` instances (``127\\.0\\.22\\.1:8080|127\\.0\\.22\\.2:8080``), escaped for RE2 and,
inside a ``"..."`` or ``'...'`` PromQL string, escaped again for the string (backslashes
doubled); inside a raw, backquoted string it is left as it is. Nothing else in the template is
touched, so PromQL's own braces stay.

`PrometheusSource.query` returns a float, None when Prometheus answers with no data (an empty
result, NaN or an infinite value, as a rate over no requests gives), or raises
`MetricsUnavailable` when it cannot answer (down, timeout, HTTP or query error, an answer that
is not one number). The gate runner turns both None and the error into INCONCLUSIVE with the
reason, never into a pass (reliability rule 19).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import httpx

from headway.errors import HeadwayError

PLACEHOLDER = "{hosts}"


class MetricsUnavailable(HeadwayError):
    """A metrics source could not answer; the verdict is inconclusive and the rollout pauses."""

    status_code = 503
    kind = "metrics_unavailable"


def hosts_regex(instances: Sequence[str]) -> str:
    """An RE2 alternation that matches exactly these instances (Prometheus anchors ``=~``)."""
    if not instances:
        raise ValueError("no instances to match")
    return "|".join(re.escape(i) for i in sorted(set(instances)))


def render_query(template: str, instances: Sequence[str]) -> str:
    """Fill every ``{hosts}`` in ``template``, escaped for the PromQL string around it."""
    regex = hosts_regex(instances)
    parts = template.split(PLACEHOLDER)
    out = [parts[0]]
    for part in parts[1:]:
        before = "".join(out)
        quote = _open_quote(before)
        out.append(regex if quote == "`" else regex.replace("\\", "\\\\"))
        out.append(part)
    return "".join(out)


def _open_quote(text: str) -> str:
    """The quote character of the PromQL string ``text`` ends inside ("" if none)."""
    quote = ""
    escaped = False
    for ch in text:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote != "`":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
    return quote


class PrometheusSource:
    def __init__(self, url: str, *, timeout: float = 5.0, client: httpx.AsyncClient | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._client = client

    async def query(self, query: str) -> float | None:
        endpoint = f"{self.url}/api/v1/query"
        try:
            if self._client is not None:
                response = await self._client.get(endpoint, params={"query": query}, timeout=self.timeout)
            else:
                async with httpx.AsyncClient(timeout=self.timeout) as client:
                    response = await client.get(endpoint, params={"query": query})
        except httpx.TimeoutException:
            raise MetricsUnavailable(
                f"Prometheus at {self.url} did not answer within {self.timeout:g}s",
                hint="check that Prometheus is up and not overloaded, or raise the gate's timeout",
            ) from None
        except httpx.HTTPError as error:
            raise MetricsUnavailable(
                f"cannot reach Prometheus at {self.url}: {type(error).__name__}: {error}",
                hint="check the gate's url and that Prometheus is running",
            ) from None
        body = _json(response)
        if response.status_code != 200 or body.get("status") != "success":
            detail = body.get("error") or response.text[:200].strip() or f"HTTP {response.status_code}"
            raise MetricsUnavailable(
                f"Prometheus at {self.url} refused the query ({response.status_code}): {detail}",
                hint=f"check the query in the gate: {query}",
            )
        return _value(body.get("data"), query)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _value(data: Any, query: str) -> float | None:
    if not isinstance(data, dict):
        raise MetricsUnavailable("Prometheus answered without data", hint="is the url a Prometheus server?")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        sample = result
    elif kind == "vector" and isinstance(result, list):
        if not result:
            return None
        if len(result) > 1:
            raise MetricsUnavailable(
                f"the query returned {len(result)} series, not one number",
                hint=f"aggregate it to one value, for example sum(...): {query}",
            )
        sample = result[0].get("value") if isinstance(result[0], dict) else None
    else:
        raise MetricsUnavailable(
            f"the query returned a {kind}, not one number",
            hint=f"make it an instant vector of one series or a scalar: {query}",
        )
    try:
        value = float(sample[1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        raise MetricsUnavailable(f"cannot read Prometheus's value {sample!r}") from None
    return value if math.isfinite(value) else None
