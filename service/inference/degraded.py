"""The stable reason codes of a degraded Score answer (`ScoreResponse.degraded_reasons`).

Clients may switch on these strings, so they never change meaning and never carry hosts,
ports or exception text: the detail goes to the log and the metrics. A degraded answer is
still a full set of scores, computed without some input (README "Operations").
"""

from __future__ import annotations

from enum import StrEnum


class Degraded(StrEnum):
    """Why an answer was scored without the query representation (and maybe history), or
    without the CTR model (the items' priors)."""

    REDIS_TIMEOUT = "redis_timeout"
    REDIS_UNAVAILABLE = "redis_unavailable"
    ENCODER_TIMEOUT = "encoder_timeout"
    ENCODER_OVERLOADED = "encoder_overloaded"
    ENCODER_FAILED = "encoder_failed"
    CTR_TIMEOUT = "ctr_timeout"
    CTR_OVERLOADED = "ctr_overloaded"


MEANING: dict[Degraded, str] = {
    Degraded.REDIS_TIMEOUT: "Redis did not answer within its share of the budget; scored "
    'without history and with the learned "no query" vector',
    Degraded.REDIS_UNAVAILABLE: "Redis refused or is down (the service reconnects with "
    "backoff; with a Redis Cluster: the user's master); scored without history and with "
    'the "no query" vector',
    Degraded.ENCODER_TIMEOUT: "the query encoder did not finish within its share of the "
    'budget; scored with the "no query" vector',
    Degraded.ENCODER_OVERLOADED: "the encoder queue's expected wait exceeded the time left "
    'for it, so the request did not queue; scored with the "no query" vector',
    Degraded.ENCODER_FAILED: "the encoder graph raised (the log has the detail); scored with "
    'the "no query" vector',
    Degraded.CTR_TIMEOUT: "the CTR model did not finish within the budget; answered at the "
    "budget with each item's prior (the model's score for a user without history)",
    Degraded.CTR_OVERLOADED: "the CTR queue's expected wait exceeded the time left, so the "
    "request did not queue; answered at once with each item's prior",
}


def reasons_table() -> str:
    """The README's table of reason codes (Markdown); a test keeps the README equal."""
    rows = ["| reason | meaning |", "|---|---|"]
    rows += [f"| `{reason}` | {meaning} |" for reason, meaning in MEANING.items()]
    return "\n".join(rows)
