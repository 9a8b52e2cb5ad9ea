"""Pure verdicts: the canary-versus-baseline judge (no I/O, no clock, no global randomness)."""

from headway.analysis.judge import (
    DEFAULT_ALPHA,
    DEFAULT_CONSECUTIVE_FAILURES,
    DEFAULT_MIN_REQUESTS,
    DEFAULT_MIN_SAMPLES,
    Judgement,
    Verdict,
    combine,
    confirm,
    judge_error_rate,
    judge_latency,
    judge_threshold,
)

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_CONSECUTIVE_FAILURES",
    "DEFAULT_MIN_REQUESTS",
    "DEFAULT_MIN_SAMPLES",
    "Judgement",
    "Verdict",
    "combine",
    "confirm",
    "judge_error_rate",
    "judge_latency",
    "judge_threshold",
]
