"""Service settings: `QUERYREC_*` environment variables, overridable by command-line flags.

One pydantic-settings model, validated at start: a bad value stops the server with one
line naming the variable. Defaults are the values measured in docs/BENCHMARKS.md
("Scoring service") on the 2-core development machine.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import SettingsError


class ServiceSettings(BaseSettings):
    """Everything `queryrec serve` can be told; each field is `QUERYREC_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="QUERYREC_", extra="ignore", frozen=True)

    bundle: Path | None = Field(None, description="model bundle directory (queryrec export)")
    redis_url: str | None = Field(
        None,
        description="redis://, rediss:// (TLS) or unix:// URL, password in the URL; "
        "unset: start an embedded redis-server on a free port",
    )
    host: str = Field("127.0.0.1", description="gRPC bind address")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$", description="ONNX Runtime device")
    inference_threads: int = Field(
        1, ge=1, le=64, description="intra-op threads per ONNX Runtime session"
    )
    # Latency budget and its shares.
    budget_ms: float = Field(
        50.0, gt=0, description="per-request budget; the gRPC deadline wins when shorter"
    )
    redis_share: float = Field(
        0.3, gt=0, le=1, description="share of the budget the Redis read may take"
    )
    encoder_share: float = Field(
        0.5, gt=0, le=1, description="share of the budget until the query vector must be ready"
    )
    ctr_timeout_ms: float = Field(
        10_000.0, gt=0, description="longest a Score waits for its CTR batch without a deadline"
    )
    # Micro-batching.
    encoder_max_batch: int = Field(64, ge=1, le=4096, description="users per encoder call")
    encoder_max_delay_ms: float = Field(
        0.0,
        ge=0,
        description="longest wait to fill an encoder batch; 0: dispatch at once when the "
        "worker is idle (batches still form from requests queued during a call)",
    )
    ctr_max_pairs: int = Field(
        4096, ge=1, description="candidate pairs per CTR call (many requests flattened)"
    )
    ctr_max_delay_ms: float = Field(0.0, ge=0, description="longest wait to fill a CTR batch")
    max_queue: int = Field(
        2048, ge=1, description="queued requests per batcher before RESOURCE_EXHAUSTED"
    )
    # State.
    query_history_cap: int = Field(
        0, ge=0, description="queries kept per user; 0: the bundle's query history length L"
    )
    click_history_cap: int = Field(
        0, ge=0, description="clicks kept per user; 0: the bundle's click history length H"
    )
    state_ttl_s: int = Field(
        30 * 24 * 3600, ge=1, description="seconds a user's keys live after the last write"
    )
    cache_query_repr: bool = Field(
        True, description="cache query vectors per (model version, history version)"
    )
    # Input limits (INVALID_ARGUMENT beyond them).
    max_candidates: int = Field(1000, ge=1, description="items per Score request")
    max_query_tokens: int = Field(64, ge=1, description="token ids per RecordQuery")
    max_clicks_per_call: int = Field(256, ge=1, description="item ids per RecordClicks")
    max_message_bytes: int = Field(1 << 20, ge=1024, description="gRPC max receive message")

    @model_validator(mode="after")
    def _shares_fit(self) -> ServiceSettings:
        if self.redis_share >= self.encoder_share:
            raise ValueError("redis_share must be below encoder_share (Redis is read first)")
        return self


def load_settings(**overrides: object) -> ServiceSettings:
    """Settings from the environment plus explicit overrides (flags); SettingsError names
    the field when a value is invalid."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return ServiceSettings(**given)  # type: ignore[arg-type]
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        name = f"QUERYREC_{where.upper()}" if first["loc"] else where
        raise SettingsError(f"invalid setting {name}: {first['msg']}") from None
