"""Service settings: `QUERYREC_*` environment variables, overridable by command-line flags.

One pydantic-settings model, validated at start: a bad value stops the server with one
line naming the variable. Defaults are the values measured in docs/BENCHMARKS.md
("Scoring service") on the 2-core development machine.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import SettingsError


class ServiceSettings(BaseSettings):
    """Everything `queryrec serve` can be told; each field is `QUERYREC_<NAME>`."""

    model_config = SettingsConfigDict(
        env_prefix="QUERYREC_",
        extra="ignore",
        frozen=True,
        env_parse_none_str="none",
        allow_inf_nan=False,  # a budget or a delay of inf or nan is a typo, not a setting
    )

    bundle: Path | None = Field(None, description="model bundle directory (queryrec export)")
    # Redis.
    redis_url: str | None = Field(
        None,
        description="redis://, rediss:// (TLS) or unix:// URL, or a Redis Cluster: "
        "redis+cluster://host:port[,host:port...] (rediss+cluster:// with TLS; any "
        "answering node discovers the rest); unset: start an embedded redis-server on a "
        "free port",
    )
    redis_password: SecretStr | None = Field(
        None,
        description="Redis AUTH password (wins over one in the URL; keep it off the "
        "command line: use this variable or redis_password_file)",
    )
    redis_password_file: Path | None = Field(
        None, description="file whose first line is the Redis AUTH password"
    )
    redis_pool_size: int = Field(
        64, ge=1, le=10_000, description="Redis connections; more concurrent calls wait for one"
    )
    redis_reconnect_max_s: float = Field(
        2.0,
        gt=0,
        le=3600,
        description="longest pause between reconnect attempts while Redis is down",
    )
    # gRPC.
    host: str = Field("127.0.0.1", description="gRPC bind address")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate chain: serve gRPC over TLS (with tls_key_file)"
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    reflection: bool | None = Field(
        None, description="gRPC server reflection; unset: on only when bound to loopback"
    )
    api_token: SecretStr | None = Field(
        None,
        description="bearer token every gRPC call must send (metadata `authorization: "
        "Bearer <token>`; the health service stays open); unset: no token check, which "
        "`serve` allows only on a loopback bind, with mutual TLS or allow_unauthenticated",
    )
    api_token_file: Path | None = Field(
        None, description="file whose first line is the gRPC API bearer token"
    )
    tls_client_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle: mutual TLS, every gRPC client must present a certificate "
        "it signed (needs tls_cert_file and tls_key_file)",
    )
    allow_unauthenticated: bool = Field(
        False,
        description="let `serve` bind gRPC to a non-loopback address with neither api_token "
        "nor tls_client_ca_file: anyone who reaches the port can call, so only behind a "
        "trusted network or an authenticating proxy",
    )
    max_connection_age_s: float = Field(
        300.0, gt=0, le=2_000_000, description="connections are closed (GOAWAY) after this long"
    )
    max_connection_idle_s: float = Field(
        60.0, gt=0, le=2_000_000, description="connections without a call for this long are closed"
    )
    max_concurrent_streams: int = Field(
        256, ge=1, description="concurrent calls per HTTP/2 connection"
    )
    receive_timeout_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="longest wait for a call's request message after its headers; a call "
        "that sends none (or ends without one) is answered INVALID_ARGUMENT",
    )
    # Admin HTTP (FastAPI) in the same process.
    admin_host: str = Field("127.0.0.1", description="admin HTTP bind address")
    admin_port: int | None = Field(
        8081,
        ge=0,
        le=65535,
        description="admin HTTP port; 0 picks a free one; `none`: no admin API",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="bearer token of the admin API: reload, and /v1/model and /v1/score on a "
        "non-loopback admin bind; unset: reload only on a loopback admin bind, /v1/model and "
        "/v1/score off on a public one",
    )
    admin_token_file: Path | None = Field(
        None, description="file whose first line is the admin bearer token"
    )
    # Inference.
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$", description="ONNX Runtime device")
    inference_threads: int = Field(
        1, ge=1, le=64, description="intra-op threads per ONNX Runtime session"
    )
    # Latency budget and its shares.
    budget_ms: float = Field(
        50.0,
        gt=0,
        le=600_000,
        description="whole-call budget of Score (Redis, encoder, CTR); the gRPC deadline "
        "wins when shorter",
    )
    redis_share: float = Field(
        0.3, gt=0, le=1, description="share of the budget the Redis read may take"
    )
    encoder_share: float = Field(
        0.5, gt=0, le=1, description="share of the budget until the query vector must be ready"
    )
    write_budget_ms: float = Field(
        500.0,
        gt=0,
        le=600_000,
        description="budget of RecordQuery / RecordClicks / RecordSearchClicks (the Redis "
        "write); the gRPC deadline wins when shorter",
    )
    # Micro-batching.
    encoder_max_batch: int = Field(64, ge=1, le=4096, description="users per encoder call")
    encoder_max_delay_ms: float = Field(
        0.0,
        ge=0,
        le=10_000,
        description="longest wait to fill an encoder batch; 0: dispatch at once when the "
        "worker is idle (batches still form from requests queued during a call)",
    )
    ctr_max_pairs: int | None = Field(
        None,
        ge=1,
        description="candidate pairs per CTR call (many requests flattened); none: by "
        "device, 4096 with CUDA, 1 on the CPU (each request alone: merging users' pairs "
        "cost 1.3x per pair there, docs/BENCHMARKS.md)",
    )
    ctr_max_delay_ms: float = Field(
        0.0, ge=0, le=10_000, description="longest wait to fill a CTR batch"
    )
    inference_on: str = Field(
        "auto",
        pattern="^(auto|loop|thread)$",
        description="where model calls run: loop (on the event loop, batching what is "
        "queued, no thread hand-off), thread (one worker thread per graph, overlapping the "
        "loop); auto: thread with CUDA, loop on the CPU (docs/BENCHMARKS.md)",
    )
    max_queue: int = Field(
        2048,
        ge=1,
        description="hard cap of queued requests per batcher (admission is by expected "
        "wait; this only bounds memory)",
    )
    # State.
    query_history_cap: int = Field(
        0, ge=0, description="queries kept per user; 0: the bundle's query history length L"
    )
    click_history_cap: int = Field(
        0, ge=0, description="clicks kept per user; 0: the bundle's click history length H"
    )
    state_ttl_s: int = Field(
        30 * 24 * 3600,
        ge=1,
        le=10 * 365 * 24 * 3600,
        description="seconds a user's keys live after the last write",
    )
    cache_query_repr: bool = Field(
        True, description="cache query vectors per (encoder version, history version)"
    )
    # Input limits (INVALID_ARGUMENT beyond them).
    max_candidates: int = Field(1000, ge=1, description="items per Score request")
    max_query_tokens: int = Field(64, ge=1, description="token ids per RecordQuery")
    max_clicks_per_call: int = Field(256, ge=1, description="item ids per RecordClicks")
    max_search_clicks: int = Field(
        16,
        ge=1,
        description="item ids per RecordSearchClicks, and clicked results kept per search",
    )
    max_message_bytes: int = Field(1 << 20, ge=1024, description="gRPC max receive message")
    max_future_ms: int = Field(
        24 * 3600 * 1000,
        ge=0,
        le=365 * 24 * 3600 * 1000,
        description="how far ahead of the server clock a timestamp may be",
    )
    # Processes.
    workers: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="server processes sharing the gRPC port (SO_REUSEPORT) behind one admin "
        "API; unset: one per CPU of the container's quota (cgroup; else per core); 1: a single "
        "process",
    )
    # Lifecycle.
    drain_delay_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="on SIGTERM: seconds to keep serving after health turns NOT_SERVING "
        "(the time a load balancer needs to notice)",
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, le=3600, description="after the drain delay: longest wait for in-flight calls"
    )
    # Logs.
    log_summary_interval_s: float = Field(
        10.0,
        gt=0,
        le=86_400,
        description="seconds between summary lines (degraded answers by reason, log lines "
        "a client triggered beyond 5 per event name in that time)",
    )

    @field_validator("host", "admin_host")
    @classmethod
    def _resolvable(cls, host: str) -> str:
        """A bind address that does not resolve fails here, in one line, not after the
        server has started."""
        try:
            socket.getaddrinfo(host.strip("[]"), None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as error:
            reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
            raise ValueError(f"{host!r} is not an address to bind ({reason})") from None
        return host

    @model_validator(mode="after")
    def _shares_fit(self) -> ServiceSettings:
        if self.redis_share >= self.encoder_share:
            raise ValueError("redis_share must be below encoder_share (Redis is read first)")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    @model_validator(mode="after")
    def _mutual_tls_needs_tls(self) -> ServiceSettings:
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                "QUERYREC_TLS_CLIENT_CA_FILE needs QUERYREC_TLS_CERT_FILE and "
                "QUERYREC_TLS_KEY_FILE (mutual TLS runs over TLS)"
            )
        return self

    def secret(self, name: str) -> str | None:
        """A secret setting (`redis_password`, `admin_token`): the variable, else the first
        line of its `<name>_file`; None when neither is set."""
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return value.get_secret_value()
        path: Path | None = getattr(self, f"{name}_file")
        if path is None:
            return None
        try:
            lines = path.read_text().splitlines()
        except OSError as error:
            raise SettingsError(f"{name}_file {path}: cannot read it ({error.strerror})") from None
        if not lines or not lines[0].strip():
            raise SettingsError(f"{name}_file {path}: the first line is empty")
        return lines[0].strip()


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
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"invalid setting {name}: {message}") from None


def settings_table() -> str:
    """The README's settings table (Markdown), generated from `ServiceSettings`: one row
    per field with its variable, default and meaning. `python -m service.settings`
    prints it; a test keeps the README equal to it."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, info in ServiceSettings.model_fields.items():
        default = info.default
        if default is None:
            shown = "unset"
        elif isinstance(default, bool):
            shown = str(default).lower()
        else:
            shown = str(default)
        text = (info.description or "").replace("|", "\\|")
        rows.append(f"| `QUERYREC_{name.upper()}` | `{shown}` | {text} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
