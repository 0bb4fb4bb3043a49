"""The four RPCs as transport-free calls: validate, run within the budget, answer.

gRPC (`service.transport.server`) and the admin API's JSON mirror (`service.transport.admin`) both call
these, so the rules live once. Every refusal is a `Rejected(kind, message)`; the
transports map the kind to their status codes with the tables below. Messages name the
field or the state and nothing internal (no hosts, ports or exception text).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import grpc

from service.api import scorer_pb2 as pb
from service.errors import QueueFull, Rejected, SearchNotFound, StateUnavailable
from service.inference.model_holder import ModelHolder
from service.inference.scoring import RESPONSE_MARGIN_S, now_ms
from service.logs import DegradedBursts, limited_event
from service.settings import ServiceSettings
from service.state.store import StateStore

TIME_FLOOR_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: no event of this service is older

GRPC_CODES = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "internal": grpc.StatusCode.INTERNAL,
}
HTTP_CODES = {
    "invalid": 400,
    "not_found": 404,
    "overloaded": 429,
    "deadline": 504,
    "unavailable": 503,
    "internal": 500,
}


class Calls:
    """Score, RecordQuery, RecordClicks and RecordSearchClicks over the holder's current
    model and Redis."""

    def __init__(
        self,
        holder: ModelHolder,
        state: StateStore,
        settings: ServiceSettings,
        bursts: DegradedBursts | None = None,
    ) -> None:
        self.holder, self.state, self.settings = holder, state, settings
        self.bursts = bursts if bursts is not None else DegradedBursts()

    async def score(self, request: pb.ScoreRequest, remaining_s: float | None) -> pb.ScoreResponse:
        """`remaining_s`: the caller's deadline from now (None: none)."""
        began = time.perf_counter()
        items = list(request.item_ids)
        _check_ids(request.user_id, "item_ids", items, self.settings.max_candidates, True)
        at = self._timestamp("request_time_ms", request.request_time_ms)
        budget = self.settings.budget_ms / 1e3
        if remaining_s is not None:
            budget = min(budget, remaining_s)
        budget -= time.perf_counter() - began
        if budget <= RESPONSE_MARGIN_S:
            raise Rejected("deadline", "the deadline leaves no time to score")
        scorer = self.holder.current  # taken once: a reload meanwhile does not affect this call
        try:
            result = await scorer.score(request.user_id, items, at, budget)
        except QueueFull:  # lateness is answered degraded inside `score`; this is overload
            raise Rejected("overloaded", "the service is at capacity; retry with backoff") from None
        except Exception as error:  # a bug or a failing CTR graph: logged, not shown
            limited_event("score_failed", logging.ERROR, error=f"{type(error).__name__}: {error}")
            raise Rejected("internal", "scoring failed") from None
        if result.degraded:
            self.bursts.add(result.reasons)
        return pb.ScoreResponse(
            scores=result.scores.tolist(),
            model_version=scorer.model_version,
            degraded=result.degraded,
            degraded_reasons=result.reasons,
        )

    async def record_query(
        self, request: pb.RecordQueryRequest, remaining_s: float | None
    ) -> pb.RecordQueryResponse:
        tokens = list(request.token_ids)
        # A search without words is a history slot, as offline (queryrec.features).
        _check_ids(request.user_id, "token_ids", tokens, self.settings.max_query_tokens, False)
        at = self._timestamp("timestamp_ms", request.timestamp_ms)
        kept = await self._write(
            lambda limit: self.state.append_query(request.user_id, at, tokens, timeout_s=limit),
            remaining_s,
        )
        return pb.RecordQueryResponse(history_length=kept)

    async def record_clicks(
        self, request: pb.RecordClicksRequest, remaining_s: float | None
    ) -> pb.RecordClicksResponse:
        items = list(request.item_ids)
        _check_ids(request.user_id, "item_ids", items, self.settings.max_clicks_per_call, True)
        at = self._timestamp("timestamp_ms", request.timestamp_ms)
        kept = await self._write(
            lambda limit: self.state.append_clicks(request.user_id, at, items, timeout_s=limit),
            remaining_s,
        )
        return pb.RecordClicksResponse(history_length=kept)

    async def record_search_clicks(
        self, request: pb.RecordSearchClicksRequest, remaining_s: float | None
    ) -> pb.RecordSearchClicksResponse:
        """The results clicked after one stored search, named by its timestamp; NOT_FOUND
        (nothing stored) when the user's history does not hold that search."""
        items = list(request.item_ids)
        _check_ids(request.user_id, "item_ids", items, self.settings.max_search_clicks, True)
        if request.search_timestamp_ms == 0:
            raise Rejected(
                "invalid",
                "search_timestamp_ms is 0: send the timestamp_ms the search was recorded with",
            )
        at = self._timestamp("search_timestamp_ms", request.search_timestamp_ms)
        try:
            clicks = await self._write(
                lambda limit: self.state.record_search_clicks(
                    request.user_id, at, items, timeout_s=limit
                ),
                remaining_s,
            )
        except SearchNotFound as error:
            raise Rejected("not_found", str(error)) from None
        return pb.RecordSearchClicksResponse(clicks_in_search=clicks)

    async def _write(
        self, write: Callable[[float], Awaitable[int]], remaining_s: float | None
    ) -> int:
        """The write within min(write budget, deadline); UNAVAILABLE when Redis did not
        store it (the caller retries; writes are idempotent, service/state/keys.py)."""
        limit = self.settings.write_budget_ms / 1e3
        if remaining_s is not None:
            limit = min(limit, remaining_s - RESPONSE_MARGIN_S)
        if limit <= 0:
            raise Rejected("deadline", "the deadline leaves no time to write")
        try:
            return await write(limit)
        except StateUnavailable as error:
            raise Rejected("unavailable", str(error)) from None

    def _timestamp(self, field_name: str, value: int) -> int:
        """0: now; else it must lie between 2000-01-01 and `max_future_ms` ahead."""
        now = now_ms()
        if value == 0:
            return now
        if value < TIME_FLOOR_MS:
            raise Rejected("invalid", f"{field_name} {value} is before 2000-01-01 (Unix ms)")
        if value > now + self.settings.max_future_ms:
            raise Rejected(
                "invalid",
                f"{field_name} {value} is more than {self.settings.max_future_ms} ms ahead "
                "of the server clock",
            )
        return value


def _check_ids(user_id: int, field_name: str, values: list[int], most: int, need: bool) -> None:
    """Rejected("invalid") naming the field and what is wrong."""
    problem = None
    if user_id <= 0:
        problem = f"user_id must be a positive id, not {user_id}"
    elif not values and need:
        problem = f"{field_name} is empty: send at least one id"
    elif len(values) > most:
        problem = f"{field_name} has {len(values)} entries; the maximum is {most}"
    elif values and min(values) < 0:
        problem = f"{field_name} holds a negative id"
    if problem is not None:
        raise Rejected("invalid", problem)
