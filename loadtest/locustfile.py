"""Locust users for the scoring API: a feed server's traffic mix over gRPC.

Run by `python -m loadtest run` (loadtest/run.py), which writes the mix file and starts
this as `locust -f loadtest/locustfile.py --headless ... --mix-file FILE` in a subprocess.
Nothing here starts a server: the target is Locust's `--host` (HOST:PORT). A server with
an API token gets it from `QUERYREC_API_TOKEN` (or `_FILE`) in this process's environment
(`clients.credentials`).

Each call picks one RPC: `Score` with the share `1 - write_share`, else a search write or
`RecordClicks` (half each), so reads and writes interleave as in production. Score asks
for `candidates` distinct items drawn with the catalogue's popularity (impression counts)
and carries a deadline equal to the budget; users are drawn with Zipf skew over the
loaded users ranked by activity; RecordClicks sends one to three popular items with
timestamp 0 (the server's clock). A search write is `RecordQuery` with a real query's
words and the Locust process's clock as its timestamp; `SEARCH_CLICK_SHARE` of those
searches get clicked results: the next search write of the same Locust user is then
`RecordSearchClicks` for that search (same user, same timestamp, one to three of the
`SEARCH_RESULTS` popular items the search showed) instead of a new query. Users start at
random phases of their interval (`FeedUser.on_start`), so the offered calls are spread
evenly.

Reporting: `LocustReporter`, a `grpc.UnaryUnaryClientInterceptor`, times each call and
fires `environment.events.request` with its status, so Locust's own statistics and CSVs
see every RPC. Locust rounds response times to two significant digits in its
percentiles, so a listener on the same event also appends each call's exact duration,
its status code and (for Score) the degraded reasons to `times-<pid>.csv` in the mix's
`times_dir`, from which the runner computes the percentiles it reports.

Why gevent: Locust users are greenlets; gRPC's C core blocks the whole process unless
`grpc.experimental.gevent.init_gevent()` runs after gevent's monkey patching (done by
`import locust`) and before any channel exists, as at the end of the imports below.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, constant_throughput, events, task
from locust.env import Environment

from clients.credentials import api_metadata
from service.api import scorer_pb2, scorer_pb2_grpc

grpc_gevent.init_gevent()

METHODS = ("Score", "RecordQuery", "RecordClicks", "RecordSearchClicks")
"""RPC names as reported to Locust (the last part of the gRPC method path)."""
TIMES_HEADER = "start_s,method,ms,code,degraded_reasons\n"
"""Columns of the exact-times file: start (epoch s), RPC, duration in ms, gRPC status
code name (OK on success), degraded reasons of a Score joined by '|'."""
WRITE_TIMEOUT_S = 2.0
"""Deadline of the writes: well above the server's write budget (500 ms by default), there
only so that a wedged server cannot hold a user forever."""
SEARCH_CLICK_SHARE = 0.6
"""Share of recorded searches whose results get clicked (RecordSearchClicks)."""
SEARCH_RESULTS = 10
"""Results a search shows (popular items); one to three of them are clicked."""
_FILL_ROUNDS = 50
"""Rounds of weighted draws before `draw_distinct` fills the rest uniformly."""


@dataclass(frozen=True)
class Mix:
    """What the runner decided: ids to draw from, the request shape and the pace."""

    users: list[int]  # raw user ids, most active first (Zipf rank order)
    user_cum_weights: list[float]
    items: list[int]  # raw item ids with at least one impression
    item_cum_weights: list[float]
    queries: list[list[int]]  # raw word ids of real queries
    candidates: int
    budget_ms: float
    write_share: float
    per_user_rate: float  # calls per second of one Locust user
    duration_s: float  # from the test start to the stop; 0: until Locust stops it
    seed: int
    times_dir: Path

    @classmethod
    def read(cls, path: Path) -> Mix:
        """The mix file written by `loadtest.run.write_mix`; cumulative weights are
        computed here once, so that each draw is a bisection."""
        raw = json.loads(path.read_text())
        return cls(
            users=[int(u) for u in raw["users"]],
            user_cum_weights=list(itertools.accumulate(float(w) for w in raw["user_weights"])),
            items=[int(i) for i in raw["items"]],
            item_cum_weights=list(itertools.accumulate(float(w) for w in raw["item_weights"])),
            queries=[[int(w) for w in q] for q in raw["queries"]],
            candidates=int(raw["candidates"]),
            budget_ms=float(raw["budget_ms"]),
            write_share=float(raw["write_share"]),
            per_user_rate=float(raw["per_user_rate"]),
            duration_s=float(raw.get("duration_s", 0.0)),
            seed=int(raw["seed"]),
            times_dir=Path(raw["times_dir"]),
        )


def draw_distinct(
    rng: random.Random, population: Sequence[int], cum_weights: Sequence[float], k: int
) -> list[int]:
    """`k` distinct members of `population` drawn with the given (cumulative) weights, in
    draw order; all of them, shuffled, when there are no more than `k`.

    Weighted draws with replacement, duplicates dropped, repeated until `k` are found:
    cheap when k is small next to the catalogue, as for a feed page. After `_FILL_ROUNDS`
    rounds (a catalogue dominated by a few items) the rest is filled uniformly.
    """
    if k >= len(population):
        everything = list(population)
        rng.shuffle(everything)
        return everything
    chosen: dict[int, None] = {}
    for _ in range(_FILL_ROUNDS):
        for item in rng.choices(population, cum_weights=cum_weights, k=k - len(chosen)):
            chosen[item] = None
        if len(chosen) >= k:
            return list(chosen)[:k]
    rest = [item for item in population if item not in chosen]
    return list(chosen) + rng.sample(rest, k - len(chosen))


class LocustReporter(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Reports every unary call to Locust: exact duration, response size, failure.

    The call is completed here (`result()`), so the time is the whole round trip as the
    caller sees it; an RpcError is reported as a failure and left to propagate to the
    caller through the returned call object.
    """

    def __init__(self, environment: Environment) -> None:
        self._request: Any = environment.events.request  # an EventHook (untyped)

    def intercept_unary_unary(
        self,
        continuation: Callable[[Any, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        if isinstance(method, bytes):
            method = method.decode()
        started_at = time.time()
        began = time.perf_counter()
        call = continuation(client_call_details, request)
        response: Any = None
        exception: grpc.RpcError | None = None
        try:
            response = call.result()
        except grpc.RpcError as error:
            exception = error
        elapsed_ms = (time.perf_counter() - began) * 1e3
        self._request.fire(
            request_type="grpc",
            name=method.rsplit("/", 1)[-1],
            response_time=elapsed_ms,
            response_length=response.ByteSize() if response is not None else 0,
            response=response,
            context={},
            exception=exception,
            start_time=started_at,
            url=method,
        )
        return call


class ExactTimes:
    """Appends one line per reported call to `times-<pid>.csv` (see `TIMES_HEADER`)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"times-{os.getpid()}.csv"
        self._file: IO[str] | None = self.path.open("w", encoding="utf-8")
        self._file.write(TIMES_HEADER)
        self.examples: dict[str, str] = {}  # "method CODE" -> the first failure's details

    def record(
        self,
        name: str,
        response_time: float,
        response: Any,
        exception: BaseException | None,
        start_time: float | None,
    ) -> None:
        """One call; the code is the gRPC status name, or the exception's class name."""
        if self._file is None:
            return
        if exception is None:
            code = "OK"
        elif isinstance(exception, grpc.Call):
            code = exception.code().name
            self.examples.setdefault(f"{name} {code}", str(exception.details()))
        else:
            code = type(exception).__name__
            self.examples.setdefault(f"{name} {code}", str(exception))
        reasons = ""
        if isinstance(response, scorer_pb2.ScoreResponse) and response.degraded:
            reasons = "|".join(response.degraded_reasons) or "unspecified"
        start = time.time() if start_time is None else start_time
        self._file.write(f"{start:.6f},{name},{response_time:.4f},{code},{reasons}\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


_state: dict[str, Any] = {}
"""This process's mix, exact-times file and user counter (set by `_on_init`)."""


def _listen(hook: Any, handler: Callable[..., None]) -> None:
    """`hook.add_listener(handler)`: Locust's EventHook is untyped, its decorators too."""
    hook.add_listener(handler)


def _add_arguments(parser: Any, **_kwargs: Any) -> None:
    parser.add_argument(
        "--mix-file",
        type=str,
        default="",
        help="JSON traffic mix written by `python -m loadtest run` (ids, shape, pace)",
    )


def _on_init(environment: Environment, **_kwargs: Any) -> None:
    """Read the mix, pace the users, open the exact-times file."""
    options = environment.parsed_options
    mix_file = getattr(options, "mix_file", "") if options is not None else ""
    if not mix_file:
        raise SystemExit(
            "loadtest/locustfile.py needs --mix-file FILE; run it through "
            "`python -m loadtest run`, which writes that file"
        )
    mix = Mix.read(Path(mix_file))
    FeedUser.wait_time = constant_throughput(mix.per_user_rate)
    times = ExactTimes(mix.times_dir)
    _state.update(mix=mix, times=times, counter=itertools.count())

    def on_request(
        name: str,
        response_time: float,
        response: Any = None,
        exception: BaseException | None = None,
        start_time: float | None = None,
        **_rest: Any,
    ) -> None:
        times.record(name, response_time, response, exception, start_time)

    _listen(environment.events.request, on_request)


def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    """Note the start; stop the run `duration_s` later (see `_stop_after`)."""
    _state["test_start"] = time.time()
    _state["cpu_start"] = time.process_time()
    mix: Mix | None = _state.get("mix")
    if mix is not None and mix.duration_s > 0:
        gevent.spawn(_stop_after, environment, mix.duration_s)


def _stop_after(environment: Environment, seconds: float) -> None:
    """Quit the runner `seconds` after the test start, by the monotonic clock.

    Not Locust's `--run-time` alone: its timer is a gevent `spawn_later` armed against
    the event loop's cached time, which lags by however long the start-up blocked the
    loop (imports, reading the mix), so a 4 s run could stop after 2-3 s on a busy
    machine. Short sleeps against `time.monotonic()` cannot run early.
    """
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        gevent.sleep(min(left, 0.25))
    if environment.runner is not None:
        environment.runner.quit()


def _on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    """Flush the exact times; write when the test ran (the runner's RPS window) and the
    CPU this process used meanwhile (the load generator's cost per call)."""
    times: ExactTimes | None = _state.get("times")
    mix: Mix | None = _state.get("mix")
    if times is None or mix is None:
        return
    times.flush()
    meta = {
        "test_start": _state.get("test_start"),
        "test_stop": time.time(),
        "cpu_s": time.process_time() - _state.get("cpu_start", 0.0),  # this process's CPU
        "failure_examples": times.examples,
        "pid": os.getpid(),
    }
    (mix.times_dir / f"meta-{os.getpid()}.json").write_text(json.dumps(meta) + "\n")


def _on_quitting(environment: Environment, **_kwargs: Any) -> None:
    times: ExactTimes | None = _state.get("times")
    if times is not None:
        times.close()


_listen(events.init_command_line_parser, _add_arguments)
_listen(events.init, _on_init)
_listen(events.test_start, _on_test_start)
_listen(events.test_stop, _on_test_stop)
_listen(events.quitting, _on_quitting)


CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
"""Each user its own TCP connection, as separate feed servers have. Without it gRPC
shares one subchannel among a process's channels to the same target, so every user of
a Locust process rode one connection, and a server with several worker processes on one
port (SO_REUSEPORT balances connections, not calls) got all of a step's load on one
worker (seen: every degraded answer of a soak came from worker 0)."""


class FeedUser(User):
    """One feed server's connection: a channel through `LocustReporter`, the mix's calls
    at a constant pace (`constant_throughput`, set from the mix at init)."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if not self.host:
            raise SystemExit("loadtest/locustfile.py needs --host HOST:PORT of the server")
        self.mix: Mix = _state["mix"]
        self.rng = random.Random(self.mix.seed * 1_000_003 + next(_state["counter"]))
        self._channel = grpc.insecure_channel(self.host, options=CHANNEL_OPTIONS)
        intercepted = grpc.intercept_channel(self._channel, LocustReporter(environment))
        self.stub = scorer_pb2_grpc.ScorerStub(intercepted)
        self.metadata = api_metadata()  # the server's API token, when the environment has it
        self.budget_s = self.mix.budget_ms / 1e3
        # A search of this Locust user whose clicks are still to be recorded:
        # (user, timestamp_ms, the results it showed).
        self.pending_search: tuple[int, int, list[int]] | None = None

    def on_start(self) -> None:
        """Start at a random phase of this user's interval, so that calls arrive spread
        over time: users spawned together with one pace would otherwise call in lockstep,
        bursts of `users` calls at once (measured: Score p50 31 ms instead of 6 ms at 10
        calls/s from 16 users on the demo server)."""
        gevent.sleep(self.rng.random() / self.mix.per_user_rate)
        # constant_throughput measures from this (Locust's own) mark: start it after the
        # offset, or the first wait would shrink by it and undo the phase.
        self._cp_last_run = time.perf_counter()

    def on_stop(self) -> None:
        self._channel.close()

    def _user(self) -> int:
        mix = self.mix
        return self.rng.choices(mix.users, cum_weights=mix.user_cum_weights)[0]

    @task
    def feed_call(self) -> None:
        """One call of the mix; a failure is already reported by the interceptor."""
        mix, rng = self.mix, self.rng
        draw = rng.random()
        try:
            if draw >= mix.write_share:
                items = draw_distinct(rng, mix.items, mix.item_cum_weights, mix.candidates)
                self.stub.Score(
                    scorer_pb2.ScoreRequest(user_id=self._user(), item_ids=items),
                    timeout=self.budget_s,
                    metadata=self.metadata,
                )
            elif draw < mix.write_share / 2 and self.pending_search is not None:
                user, at, shown = self.pending_search
                self.pending_search = None
                self.stub.RecordSearchClicks(
                    scorer_pb2.RecordSearchClicksRequest(
                        user_id=user,
                        search_timestamp_ms=at,
                        item_ids=rng.sample(shown, min(rng.randint(1, 3), len(shown))),
                    ),
                    timeout=WRITE_TIMEOUT_S,
                    metadata=self.metadata,
                )
            elif draw < mix.write_share / 2 and mix.queries:
                user, at = self._user(), int(time.time() * 1000)
                self.stub.RecordQuery(
                    scorer_pb2.RecordQueryRequest(
                        user_id=user, token_ids=rng.choice(mix.queries), timestamp_ms=at
                    ),
                    timeout=WRITE_TIMEOUT_S,
                    metadata=self.metadata,
                )
                if rng.random() < SEARCH_CLICK_SHARE:  # stored (an error skips this)
                    shown = draw_distinct(rng, mix.items, mix.item_cum_weights, SEARCH_RESULTS)
                    self.pending_search = (user, at, shown)
            else:
                clicked = draw_distinct(rng, mix.items, mix.item_cum_weights, rng.randint(1, 3))
                self.stub.RecordClicks(
                    scorer_pb2.RecordClicksRequest(user_id=self._user(), item_ids=clicked),
                    timeout=WRITE_TIMEOUT_S,
                    metadata=self.metadata,
                )
        except grpc.RpcError:
            pass
