"""The service's Prometheus metrics (`prometheus-client`), one registry per server.

Names follow the Prometheus conventions: a `queryrec_` prefix, base units in the name
(`_seconds`), `_total` on counters (added by the library). The README "Operations" lists
them; `/metrics` on the admin port serves them. A registry per server, not the global
one, so that several servers in one process (tests, a reload) never collide.

Both of prometheus-client's modes work: one process (values in memory), and the
multiprocess mode of `queryrec serve --workers N` (`PROMETHEUS_MULTIPROC_DIR` set before
the library is imported: every worker writes its values to files there and the
supervisor's `/metrics` merges them, `service.transport.workers`). That mode has no `Info` metric,
so the model is a gauge with the bundle as labels and the value 1, and every gauge says
how the workers' values merge (`multiprocess_mode`; ignored in one process).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

from service.logs import event

# Seconds: 0.25 ms .. 10 s, dense around the default 50 ms budget.
LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.035,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
STAGES = ("redis", "encoder_queue", "encoder_compute", "ctr_queue", "ctr_compute")
MODEL_LABELS = ("model_version", "model_name", "encoder_version", "bundle")


def multiprocess_mode() -> bool:
    """True when prometheus-client writes values to `PROMETHEUS_MULTIPROC_DIR` (decided
    once, when the library was imported)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class ModelInfo:
    """`queryrec_model_info`: a gauge, 1 for the bundle served, its identity in labels.

    The `Info` metric would say the same, but multiprocess mode does not support it. On
    a reload the old label set goes: removed in one process; in multiprocess mode, where
    a removal never reaches the other processes' view of the files, set to 0 (merged with
    `livemax`: 1 while any live worker serves that bundle)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.gauge = Gauge(
            "queryrec_model_info",
            "1 for the bundle being served (follows reloads); its identity in the labels",
            MODEL_LABELS,
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._current: tuple[str, ...] | None = None

    def info(self, labels: dict[str, str]) -> None:
        """Serve `labels` (the keys of MODEL_LABELS) from now on."""
        serving = tuple(str(labels[name]) for name in MODEL_LABELS)
        if self._current is not None and self._current != serving:
            if multiprocess_mode():
                self.gauge.labels(*self._current).set(0)
            else:
                self.gauge.remove(*self._current)
        self.gauge.labels(*serving).set(1)
        self._current = serving


class ServiceMetrics:
    """Every metric of one server process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "queryrec_grpc_requests",
            "gRPC calls answered, by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "queryrec_grpc_request_duration_seconds",
            "time from a call's arrival to its answer, by method and status code",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "queryrec_grpc_requests_in_flight",
            "gRPC calls being answered now",
            registry=r,
            multiprocess_mode="livesum",  # workers: calls in flight in all of them
        )
        self.stage = Histogram(
            "queryrec_stage_duration_seconds",
            "time a Score call spent in each stage: the Redis read, waiting for and running "
            "the encoder batch, waiting for and running the CTR batch",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.encoder_batch = Histogram(
            "queryrec_encoder_batch_users",
            "users per query-encoder call",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.ctr_batch = Histogram(
            "queryrec_ctr_batch_pairs",
            "candidate pairs per CTR call (many requests flattened)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.dropped = Counter(
            "queryrec_batcher_dropped_requests",
            "queued requests dropped before computing because their caller was gone",
            ["batcher"],
            registry=r,
        )
        self.refused = Counter(
            "queryrec_admission_refused_requests",
            "requests not queued because the expected wait exceeded their remaining budget",
            ["batcher"],
            registry=r,
        )
        self.degraded = Counter(
            "queryrec_degraded_responses",
            "Score answers computed without some input, by stable reason code",
            ["reason"],
            registry=r,
        )
        self.cache_hits = Counter(
            "queryrec_query_vector_cache_hits",
            "Score calls whose query vector came from the Redis cache",
            registry=r,
        )
        self.cache_misses = Counter(
            "queryrec_query_vector_cache_misses",
            "Score calls with queries whose vector had to be encoded",
            registry=r,
        )
        self.redis_errors = Counter(
            "queryrec_redis_errors",
            "Redis commands that failed, by operation (read, write, cache, ping)",
            ["operation"],
            registry=r,
        )
        self.redis_up = Gauge(
            "queryrec_redis_up",
            "1 while Redis answers, 0 while it is down (Redis Cluster: while any master is)",
            registry=r,
            multiprocess_mode="livemin",  # workers: 0 when any of them has lost Redis
        )
        self.model = ModelInfo(r)
        self.reloads = Counter(
            "queryrec_model_reloads",
            "model reloads, by result (success, failure)",
            ["result"],
            registry=r,
        )
        self.ready = Gauge(
            "queryrec_ready",
            "1 while the service reports ready (/readyz 200)",
            registry=r,
            multiprocess_mode="livemin",  # workers: 1 only when every one of them is
        )


class MetricsObserver:
    """The batchers' and Redis state's reports -> metrics (and, for Redis lost and
    regained, one log line each). Implements `BatchObserver` and `RedisEvents`."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics
        metrics.redis_up.set(1)

    def batch_ran(self, name: str, units: int, waits_s: list[float], compute_s: float) -> None:
        queue = self.metrics.stage.labels(f"{name}_queue")
        for wait in waits_s:
            queue.observe(wait)
        self.metrics.stage.labels(f"{name}_compute").observe(compute_s)
        (self.metrics.encoder_batch if name == "encoder" else self.metrics.ctr_batch).observe(units)

    def dropped(self, name: str, count: int) -> None:
        self.metrics.dropped.labels(name).inc(count)

    def refused(self, name: str) -> None:
        self.metrics.refused.labels(name).inc()

    def redis_error(self, operation: str) -> None:
        self.metrics.redis_errors.labels(operation).inc()

    def redis_lost(self, detail: str) -> None:
        self.metrics.redis_up.set(0)
        event("redis_lost", logging.WARNING, detail=detail)

    def redis_regained(self, down_s: float) -> None:
        self.metrics.redis_up.set(1)
        event("redis_regained", down_s=round(down_s, 3))
