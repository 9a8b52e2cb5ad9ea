"""Metric sources for verification gates: the balancer's counters, Prometheus, a command.

I/O lives here, at the edge; the verdicts are `headway.analysis`'s. Errors::

    HeadwayError
    └── MetricsUnavailable    a source could not answer (down, timeout, bad query): the
                              verdict is inconclusive and the rollout pauses, never a pass
"""

from headway.metrics.balancer import Arm, BalancerSampler, BalancerWindow, Point
from headway.metrics.command import OUTPUT_LIMIT, CommandOutcome, expand_argv, run_command_gate
from headway.metrics.prometheus import MetricsUnavailable, PrometheusSource, hosts_regex, render_query

__all__ = [
    "OUTPUT_LIMIT",
    "Arm",
    "BalancerSampler",
    "BalancerWindow",
    "CommandOutcome",
    "MetricsUnavailable",
    "Point",
    "PrometheusSource",
    "expand_argv",
    "hosts_regex",
    "render_query",
    "run_command_gate",
]
