"""`queryrec serve --workers N`: N server processes on one port, one admin API, one shutdown.

One Python process serves on about one core (the event loop, protobuf and the feature
code hold the GIL), so a machine is used by several processes. Each worker is the
one-process server of `service.transport.process.serve`, unchanged but for two things: its gRPC socket
is bound with SO_REUSEPORT to the same host:port as the others (the kernel spreads new
connections over them), and it reports to this supervisor instead of printing.

The supervisor (the process `queryrec serve` started) holds no model:

- Port: port 0 cannot be shared (every worker would get its own), so it picks a
  concrete free port first, and keeps it reserved with a bound, never listening
  SO_REUSEPORT socket (it takes no connections) until the workers are gone.
- Redis: with no QUERYREC_REDIS_URL it starts the embedded redis-server once and gives
  every worker its URL. Metrics: a fresh PROMETHEUS_MULTIPROC_DIR in the workers'
  environment (prometheus-client's multiprocess mode; `service.metrics`).
- Workers: `python -m service.transport.workers INDEX FD`, started by the supervisor (spawned, never
  forked: gRPC does not survive a fork), the settings pickled on stdin (secrets stay off
  command lines and environments). The worker writes JSON lines to pipe FD: `listening`
  (with its private admin port), `ready` (with its model version), `failed` (the one-line
  error of a bad setting or bundle), `serving` (released, below). Its stdin stays open:
  the line `serve` releases it (below); end of file means the supervisor is gone (even
  SIGKILLed), and the worker drains and exits.
- Start: worker 0 first; the others once it listens (bundle verified, Redis answered,
  port bound). A bad bundle or setting therefore fails once, with the one line and exit
  2 of a single process, not N times at once.
- Readiness: a load balancer's gRPC health check on the shared port reaches whichever
  worker the kernel picks, so a worker must not say SERVING before the fleet is ready.
  A worker is started held (`ScoringServer.held`): warmed, its health stays NOT_SERVING
  and its /readyz says `waiting_for_fleet`. When every worker has reported `ready`, the
  supervisor first marks the fleet released (its /readyz can now be 200), then writes
  `serve` to each worker's stdin; each sets SERVING and reports `serving`. So a SERVING
  worker implies a released fleet: gRPC SERVING never comes while /readyz says not
  ready (the other way round, /readyz 200 may lead a worker's SERVING by one pipe
  write). The listening line is printed when every worker reported `serving`. A reload
  leaves health alone; a drain takes both down (the supervisor's /readyz at the signal,
  each worker's health when the SIGTERM reaches it). `--workers 1` has no supervisor
  and no hold: the single process is unchanged.
- Worker count (`worker_count`): QUERYREC_WORKERS, else one per CPU the process may use:
  its affinity mask, capped by the container's cgroup CPU quota (`cpu_allowance`).
- Admin API (QUERYREC_ADMIN_HOST / _PORT / _TOKEN) lives here, in the supervisor, so
  there is one whatever the worker count. Each worker has a private one on 127.0.0.1,
  port 0, behind a random token only the supervisor knows, and the supervisor asks them:
  /readyz is 200 when every worker is ready (the report lists each), /metrics merges the
  workers' files, /v1/model and /v1/score are answered by one worker (in turn),
  POST /v1/model/reload reloads the workers one after the other and stops at the first
  failure: a bad bundle changes nothing, and the answer says which workers reloaded.
  SIGHUP is passed on to every worker (each reloads its bundle folder).
- Shutdown: SIGTERM / SIGINT go to every worker, which drains as one process does
  (NOT_SERVING, drain delay, refusal, grace); exit 0 when all of them exit 0. One still
  running drain delay + grace + 30 s later is killed.
- A worker that exits unasked (a crash, a kill) is one `worker_exited` log line; the
  supervisor then shuts the others down the same way and exits 1. It does not restart
  it: a process manager (systemd, Kubernetes) restarts the service as a whole, and a
  crash loop stays visible instead of being hidden behind a healthy port.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import pickle
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from math import ceil
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from pydantic import SecretStr

from service.errors import QueryRecError, SettingsError
from service.logs import configure_logging, event, serving_line
from service.settings import ServiceSettings
from service.state.embedded_redis import EmbeddedRedis
from service.transport.admin import AdminServer, build_fleet_admin_app
from service.transport.auth import api_token, read_token
from service.transport.process import serve
from service.transport.server import WAITING_FOR_FLEET, ScoringServer

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
KILL_MARGIN_S = 30.0  # past drain delay + grace, a worker still running is killed
READY_TIMEOUT_S = 2.0  # a worker's /readyz (its own Redis PING waits 0.25 s)
CALL_TIMEOUT_S = 60.0  # /v1/model, /v1/score answered by a worker
RELOAD_TIMEOUT_S = 900.0  # one worker's reload: load, verify, warm a bundle
RELEASE = b"serve\n"  # supervisor -> worker, on its stdin: the whole fleet is ready
PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    counter = getattr(os, "process_cpu_count", None)  # Python 3.13+
    if counter is not None:
        return int(counter() or 1)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_v2(folder: Path) -> float | None:
    """cgroup v2 `cpu.max` of one folder: "QUOTA PERIOD" -> CPUs; "max ...": None."""
    text = _read(folder / "cpu.max")
    if text is None:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(folder: Path) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` of one folder (-1: None)."""
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _tightest(folder: Path, top: Path, quota: Callable[[Path], float | None]) -> float | None:
    """The smallest quota of `folder` and its parents up to `top` (a parent's limit
    bounds its children); None when none of them has one."""
    found: list[float] = []
    while True:
        limit = quota(folder)
        if limit is not None:
            found.append(limit)
        if folder == top or top not in folder.parents:
            break
        folder = folder.parent
    return min(found) if found else None


def _v1_mount(proc: Path, cgroup_root: Path) -> tuple[Path, str]:
    """(mount point, cgroup path at that mount's root) of the v1 `cpu` controller, from
    /proc/self/mountinfo; without one, <cgroup_root>/cpu and "/"."""
    for line in (_read(proc / "self" / "mountinfo") or "").splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        cgroup_v1 = len(fields) >= 5 and len(tail) >= 3 and tail[0] == "cgroup"
        if cgroup_v1 and "cpu" in tail[2].split(","):
            return Path(fields[4]), fields[3]
    return cgroup_root / "cpu", "/"


def cgroup_cpu_quota(proc: Path = PROC, cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the container's cgroup CPU quota allows (1.5: 150 ms of CPU per 100 ms);
    None without a quota or where it cannot be read.

    The process's cgroup comes from <proc>/self/cgroup. cgroup v2: the `0::/path` line,
    `cpu.max` of <cgroup_root>/path and each parent up to the root ("max PERIOD": no
    limit); the tightest limit wins. cgroup v1: the line naming the `cpu` controller,
    under that controller's mount (<proc>/self/mountinfo), `cpu.cfs_quota_us` /
    `cpu.cfs_period_us` (quota -1: no limit), walking up the same way.

    Written here, not taken from a library: the ones that read the quota (joblib's loky
    `cpu_count`, for instance) read fixed paths at the cgroup root only (not the
    process's own cgroup of /proc/self/cgroup, nor its parents) and cannot be pointed
    at a test tree; psutil and the standard library do not read it at all."""
    text = _read(proc / "self" / "cgroup")
    if text is None:
        return None
    v1_path: str | None = None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            folder = cgroup_root / path.lstrip("/")
            limit = _tightest(folder, cgroup_root, _quota_v2)
            if limit is not None:
                return limit
        elif "cpu" in controllers.split(","):
            v1_path = path
    if v1_path is None:
        return None
    mount, mount_root = _v1_mount(proc, cgroup_root)
    relative = v1_path
    if mount_root != "/" and (relative == mount_root or relative.startswith(mount_root + "/")):
        relative = relative[len(mount_root) :]
    return _tightest(mount / relative.lstrip("/"), mount, _quota_v1)


def cpu_allowance(proc: Path = PROC, cgroup_root: Path = CGROUP_ROOT) -> tuple[int, str]:
    """(CPUs to run workers on, where that came from: "quota" or "affinity").

    max(1, min(affinity cores, ceil(quota))). Rounded up: a quota of 1.5 CPUs gives 2
    workers, so the whole quota is usable (a worker also waits on Redis and the network
    and rarely keeps a core busy; CFS spreads the quota over them), where rounding down
    would leave a third of it idle and turn any quota under one CPU into one worker
    anyway. The cost is some CFS throttling when every worker is busy at once."""
    cores = available_cores()
    quota = cgroup_cpu_quota(proc, cgroup_root)
    if quota is not None and ceil(quota) < cores:
        return max(1, ceil(quota)), "quota"
    return max(1, cores), "affinity"


def worker_count(settings: ServiceSettings) -> int:
    """Server processes to run: QUERYREC_WORKERS, else one per CPU of the container's
    quota and the process's affinity (`cpu_allowance`; logged once, `worker_count`)."""
    if settings.workers is not None:
        return settings.workers
    count, source = cpu_allowance(PROC, CGROUP_ROOT)
    event(
        "worker_count",
        workers=count,
        source=source,
        cores=available_cores(),
        cpu_quota=cgroup_cpu_quota(PROC, CGROUP_ROOT),
    )
    return count


def supervise(settings: ServiceSettings, count: int) -> int:
    """Run `count` workers until SIGTERM / SIGINT; -> the exit code (0: all exited 0).
    A worker's start-up error (bad setting or bundle) is raised as QueryRecError."""
    return asyncio.run(Supervisor(settings, count).run())


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one) with SO_REUSEPORT, not listening.

    First a plain bind checks that nothing else holds the port (sharing it with an
    unrelated SO_REUSEPORT server would split its traffic); the reservation then keeps
    others off it while the workers start, and takes no connections itself."""
    bare = host.strip("[]")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            bare or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise SettingsError(f"cannot bind {host}:{port} ({error.strerror})") from None
    probe = socket.socket(family, kind, proto)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        chosen = probe.getsockname()[1]
    except OSError as error:
        raise SettingsError(f"cannot bind {host}:{port} ({error.strerror})") from None
    finally:
        probe.close()
    hold = socket.socket(family, kind, proto)
    try:
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        hold.bind((address[0], chosen, *address[2:]))
    except OSError as error:
        hold.close()
        raise SettingsError(f"cannot bind {host}:{chosen} ({error.strerror})") from None
    return hold


class WorkerUnreachable(QueryRecError):
    """A worker's private admin API did not answer."""


def _http(
    port: int, method: str, path: str, token: str, body: Any, timeout: float
) -> tuple[int, Any]:
    """Blocking: one request to a worker's private admin API -> (status, JSON body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise WorkerUnreachable(f"{method} {path}: {error!r}") from None
    finally:
        connection.close()


@dataclass(eq=False)
class Worker:
    """One worker process as the supervisor sees it."""

    index: int
    process: asyncio.subprocess.Process
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # warmed, held
    serving: asyncio.Event = field(default_factory=asyncio.Event)  # released: SERVING
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    admin_port: int | None = None
    model_version: str | None = None
    failure: str | None = None  # its start-up error, one line
    returncode: int | None = None
    watcher: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @property
    def running(self) -> bool:
        return not self.exited.is_set()

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)


class Supervisor:
    """Starts, watches and stops the workers; the admin API's `Fleet`."""

    def __init__(self, settings: ServiceSettings, count: int) -> None:
        self.settings, self.count = settings, count
        self.workers: list[Worker] = []
        self.port = settings.port
        self.draining = False  # SIGTERM / SIGINT received (or a worker died): shutting down
        self.released = False  # every worker was ready: told to serve, /readyz may be 200
        self.embedded: EmbeddedRedis | None = None
        self.admin: AdminServer | None = None
        self._token = secrets.token_urlsafe(32)  # of the workers' private admin APIs
        self._changed = asyncio.Event()  # something about a worker or a signal happened
        self._quiet = False  # a failed start: the error is the one line, no exit lines
        self._reload_lock = asyncio.Lock()
        self._turn = 0
        self._hold: socket.socket | None = None
        self._metrics_dir: str | None = None
        self._registry = CollectorRegistry()
        self._worker_settings = settings  # with the port, Redis and private admin: _run

    # Lifecycle.
    async def run(self) -> int:
        """Start the workers, serve until a signal or a worker's exit, stop them all, and
        release what the supervisor holds; -> the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop_requested)
        loop.add_signal_handler(signal.SIGHUP, self._pass_on_hangup)
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self._close()

    async def _run(self) -> int:
        settings = self.settings
        api_token(settings)  # an open public bind fails here, before anything starts
        admin_token = read_token(settings, "admin_token")
        self._hold = reserve_port(settings.host, settings.port)
        self.port = self._hold.getsockname()[1]
        self._metrics_dir = tempfile.mkdtemp(prefix="queryrec-metrics-")
        MultiProcessCollector(self._registry, path=self._metrics_dir)  # type: ignore[no-untyped-call]
        redis_url = settings.redis_url
        if redis_url is None:
            self.embedded = EmbeddedRedis()
            self.embedded.start()
            redis_url = self.embedded.url
        self._worker_settings = settings.model_copy(
            update={
                "port": self.port,
                "redis_url": redis_url,
                "admin_host": "127.0.0.1",
                "admin_port": 0 if settings.admin_port is not None else None,
                "admin_token": SecretStr(self._token),
                "admin_token_file": None,
                "workers": 1,
            }
        )
        first = await self._start_worker(0)
        await self._until(lambda: first.listening.is_set() or not first.running or self.draining)
        if not first.listening.is_set() or self.draining:
            return await self._abandon_start()
        if settings.admin_port is not None:
            self.admin = AdminServer(
                build_fleet_admin_app(self, admin_token, settings.admin_host),
                settings.admin_host,
                settings.admin_port,
            )
            await self.admin.start()
        for index in range(1, self.count):
            if self.draining:
                break
            await self._start_worker(index)
        await self._until(
            lambda: (
                all(w.ready.is_set() for w in self.workers)
                or any(not w.running for w in self.workers)
                or self.draining
            )
        )
        if any(not w.running for w in self.workers) or len(self.workers) < self.count:
            return await self._abandon_start()
        if not self.draining:
            self._release()
            await self._until(
                lambda: (
                    all(w.serving.is_set() for w in self.workers)
                    or any(not w.running for w in self.workers)
                    or self.draining
                )
            )
        if not self.draining and all(w.running for w in self.workers):
            versions = sorted({str(w.model_version) for w in self.workers})
            admin = f", admin on port {self.admin.port}" if self.admin is not None else ""
            redis = "embedded" if self.embedded else "external"
            serving_line(
                f"queryrec serve: listening on {settings.host}:{self.port} "
                f"(model {', '.join(versions)}, redis {redis}{admin}, {self.count} workers)",
                host=settings.host,
                port=self.port,
                admin_port=self.admin.port if self.admin is not None else None,
                model_version=versions,
                redis=redis,
                workers=self.count,
            )
            event(
                "workers_ready",
                workers=self.count,
                pids=[w.pid for w in self.workers],
                port=self.port,
                admin_port=self.admin.port if self.admin is not None else None,
            )
            await self._until(lambda: self.draining or any(not w.running for w in self.workers))
        return await self._shutdown()

    async def _start_worker(self, index: int) -> Worker:
        """Spawn worker `index`; its settings go on stdin, its reports come on a pipe."""
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        assert self._metrics_dir is not None
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service.transport.workers",
                str(index),
                str(write_fd),
                stdin=asyncio.subprocess.PIPE,
                env={**os.environ, MULTIPROC_ENV: self._metrics_dir},
                pass_fds=(write_fd,),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        worker = Worker(index, process)
        self.workers.append(worker)
        reports = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reports), os.fdopen(read_fd, "rb", 0)
        )
        worker.watcher = loop.create_task(self._watch(worker, reports))
        assert process.stdin is not None
        process.stdin.write(pickle.dumps(self._worker_settings))
        with contextlib.suppress(ConnectionError):  # it died at once: its watcher tells
            await process.stdin.drain()
        return worker

    async def _watch(self, worker: Worker, reports: asyncio.StreamReader) -> None:
        """Follow a worker's reports until it exits; log an exit nobody asked for."""
        with contextlib.suppress(ValueError):  # a line past the reader's limit: stop reading
            while line := await reports.readline():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    self._report(worker, json.loads(line))
        worker.returncode = await worker.process.wait()
        assert self._metrics_dir is not None
        with contextlib.suppress(OSError):  # its live gauges leave the merged view
            mark_process_dead(worker.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
        code = worker.returncode
        clean = code == 0 or (code == -signal.SIGTERM and not worker.listening.is_set())
        if not self._quiet and worker.failure is None and not (self.draining and clean):
            event(
                "worker_exited",
                logging.ERROR,
                worker=worker.index,
                pid=worker.pid,
                exit_code=code,
                signal=signal.Signals(-code).name if code < 0 else None,
                expected=self.draining,
            )
        worker.exited.set()
        self._changed.set()

    def _report(self, worker: Worker, message: dict[str, Any]) -> None:
        kind = message["event"]
        if kind == "listening":
            worker.admin_port = message["admin_port"]
            worker.listening.set()
        elif kind == "ready":
            worker.model_version = str(message["model_version"])
            worker.ready.set()
        elif kind == "serving":
            worker.serving.set()
        elif kind == "failed":
            worker.failure = str(message["error"])
        self._changed.set()

    def _release(self) -> None:
        """Every worker is ready: the fleet is released first (/readyz may answer 200),
        then each worker is told to report SERVING (`serve` on its stdin). In this order
        no worker says SERVING while /readyz says not ready."""
        self.released = True
        for worker in self.workers:
            if worker.running and worker.process.stdin is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    worker.process.stdin.write(RELEASE)

    async def _until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition()` holds; it is checked after every worker event."""
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    async def _abandon_start(self) -> int:
        """A worker exited (or SIGTERM came) before every worker was ready: stop the
        others; a worker's start-up error is raised (the one line, exit 2)."""
        failed = next((w for w in self.workers if w.failure is not None), None)
        if failed is not None or not self.draining:
            self._quiet = True
        await self._stop_workers()
        if failed is not None:
            raise QueryRecError(failed.failure)
        return 0 if self._all_clean() else 1

    async def _shutdown(self) -> int:
        """Every worker drains (SIGTERM); -> 0 when all exited 0 after being asked."""
        died = any(not w.running for w in self.workers) and not self.draining
        self.draining = True
        began = time.perf_counter()
        await self._stop_workers()
        code = 1 if died or not self._all_clean() else 0
        event("workers_stopped", exit_code=code, seconds=round(time.perf_counter() - began, 3))
        return code

    def _all_clean(self) -> bool:
        return all(
            w.returncode == 0 or (w.returncode == -signal.SIGTERM and not w.listening.is_set())
            for w in self.workers
        )

    async def _stop_workers(self) -> None:
        """SIGTERM to every worker; SIGKILL to one still running past drain + grace."""
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        patience = self.settings.drain_delay_s + self.settings.shutdown_grace_s + KILL_MARGIN_S
        try:
            async with asyncio.timeout(patience):
                await self._until(lambda: all(not w.running for w in self.workers))
        except TimeoutError:
            for worker in self.workers:
                if worker.running:
                    event("worker_killed", logging.ERROR, worker=worker.index, pid=worker.pid)
                    worker.signal(signal.SIGKILL)
            await self._until(lambda: all(not w.running for w in self.workers))

    async def _close(self) -> None:
        """After the workers (also on an error): admin API, Redis, port, metric files."""
        if any(w.running for w in self.workers):
            self._quiet = True
            await self._stop_workers()
        for worker in self.workers:
            if worker.watcher is not None:
                await worker.watcher
            if worker.process.stdin is not None:
                worker.process.stdin.close()
        if self.admin is not None:
            await self.admin.stop()
        if self.embedded is not None:
            self.embedded.stop()
        if self._hold is not None:
            self._hold.close()
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _stop_requested(self) -> None:
        self.draining = True
        self._changed.set()

    def _pass_on_hangup(self) -> None:
        """SIGHUP: every worker past its start reloads its bundle folder."""
        for worker in self.workers:
            if worker.listening.is_set():
                worker.signal(signal.SIGHUP)

    # The admin API (service.transport.admin.Fleet).
    async def _call(
        self, worker: Worker, method: str, path: str, body: Any = None, timeout: float = 60.0
    ) -> tuple[int, Any]:
        if worker.admin_port is None or not worker.running:
            raise WorkerUnreachable(f"worker {worker.index} is not running")
        return await asyncio.to_thread(
            _http, worker.admin_port, method, path, self._token, body, timeout
        )

    async def _worker_readiness(self, worker: Worker) -> dict[str, Any]:
        report: dict[str, Any] = {"worker": worker.index, "pid": worker.pid}
        if not worker.running:
            return {**report, "ready": False, "reasons": ["worker_exited"], "serving": False}
        if worker.admin_port is None:
            return {**report, "ready": False, "reasons": ["warming_up"], "serving": False}
        try:
            _, answer = await self._call(worker, "GET", "/readyz", timeout=READY_TIMEOUT_S)
        except WorkerUnreachable:
            return {**report, "ready": False, "reasons": ["worker_unavailable"], "serving": False}
        return {**report, **answer}

    async def readiness(self) -> dict[str, Any]:
        """/readyz: ready when every worker is; the reasons of all, and each worker's."""
        reports = await asyncio.gather(*(self._worker_readiness(w) for w in self.workers))
        if self.released:  # a worker's `waiting_for_fleet`: its release is on the way
            for report in reports:
                if WAITING_FOR_FLEET in report.get("reasons", []):
                    report["reasons"] = [r for r in report["reasons"] if r != WAITING_FOR_FLEET]
                    report["ready"] = not report["reasons"]
        reasons: list[str] = ["draining"] if self.draining else []
        for report in reports:
            reasons += [r for r in report.get("reasons", []) if r not in reasons]
        if len(reports) < self.count and "warming_up" not in reasons:
            reasons.append("warming_up")  # workers not started yet
        if not self.released and not reasons:
            reasons.append(WAITING_FOR_FLEET)  # ready, not yet released (a moment)
        versions = {r.get("model_version") for r in reports}
        serving = len(reports) == self.count and all(r.get("serving") for r in reports)
        return {
            "ready": not reasons,
            "reasons": reasons,
            "model_version": versions.pop() if len(versions) == 1 else None,
            "serving": serving,
            "serving_degraded": any(r.get("serving_degraded") for r in reports),
            "workers": reports,
        }

    def metrics_text(self) -> bytes:
        """Every worker's metrics merged (their multiprocess files)."""
        return generate_latest(self._registry)

    async def forward(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        """Ask the workers in turn until one answers."""
        for _ in range(len(self.workers)):
            worker = self.workers[self._turn % len(self.workers)]
            self._turn += 1
            with contextlib.suppress(WorkerUnreachable):
                return await self._call(worker, method, path, body, CALL_TIMEOUT_S)
        return 503, {"error": "no worker answered", "kind": "unavailable"}

    async def reload(self, bundle: str | None) -> tuple[int, dict[str, Any]]:
        """POST /v1/model/reload: the workers one after the other, stopping at the first
        that does not reload. 200 when all did; 409 when the first refused (nothing
        changed); 422 otherwise, `reloaded` naming the workers on the new bundle."""
        if self.draining:
            return 409, {"ok": False, "error": "the server is shutting down"}
        if self._reload_lock.locked():
            return 409, {"ok": False, "error": "a reload is already running"}
        async with self._reload_lock:
            began = time.perf_counter()
            body = {"bundle": bundle} if bundle else None
            results: list[dict[str, Any]] = []
            for worker in self.workers:
                try:
                    status, answer = await self._call(
                        worker, "POST", "/v1/model/reload", body, RELOAD_TIMEOUT_S
                    )
                except WorkerUnreachable:
                    status, answer = 503, {"ok": False, "error": "the worker did not answer"}
                results.append(
                    {"worker": worker.index, "pid": worker.pid, "status": status, **(answer or {})}
                )
                if status != 200:
                    break
            reloaded = [r["worker"] for r in results if r["status"] == 200]
            last = results[-1]
            ok = len(reloaded) == len(self.workers)
            if ok:
                status = 200
            elif not reloaded and last["status"] == 409:
                status = 409
            else:
                status = 422
            error = None
            if not ok:
                error = f"worker {last['worker']}: {last.get('error')}"
                if reloaded:
                    error += f"; workers {reloaded} serve the new bundle, the others the old one"
            versions = {r.get("model_version") for r in results}
            return status, {
                "ok": ok,
                "model_version": versions.pop()
                if len(versions) == 1 and (ok or not reloaded)
                else None,
                "previous_version": results[0].get("previous_version"),
                "seconds": round(time.perf_counter() - began, 3),
                "error": error,
                "reloaded": reloaded,
                "workers": results,
            }


# The worker's side.
class _Reporter:
    """A worker's end of its report pipe: one JSON line per message (`ServeHooks`); and
    the release of its held server when the supervisor says so (`release_requested`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ScoringServer | None = None
        self._release_asked = False
        self._releases: set[asyncio.Task[None]] = set()

    def send(self, kind: str, **fields: Any) -> None:
        with contextlib.suppress(OSError):  # the supervisor is gone: stdin tells as well
            os.write(self.fd, json.dumps({"event": kind, **fields}).encode() + b"\n")

    def listening(self, server: ScoringServer) -> None:
        with self._lock:
            self._loop, self._server = asyncio.get_running_loop(), server
            asked = self._release_asked
        if asked:  # cannot happen (the release follows `ready`), but would be honoured
            self._release()
        self.send("listening", admin_port=server.admin.port if server.admin else None)

    def release_requested(self) -> None:
        """From the stdin thread: the supervisor says every worker is ready."""
        with self._lock:
            self._release_asked = True
            loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        """On the loop: release the server, then report `serving`."""
        server = self._server
        assert self._loop is not None and server is not None

        async def release() -> None:
            await server.release()
            self.send("serving", serving=not server.draining)

        task = self._loop.create_task(release())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    def ready(self, server: ScoringServer) -> None:
        self.send("ready", model_version=server.scorer.model_version)


class _WorkerTag(logging.Filter):
    """Adds `worker` (index) and `pid` to every log line of a worker."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index, self.pid = index, os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker, record.pid = self.index, self.pid
        return True


def _follow_supervisor(fd: int, reporter: _Reporter) -> None:
    """Blocks on stdin: a `serve` line releases the server (`RELEASE`); the end of stdin
    means the supervisor is gone: drain like on SIGTERM. Reads the descriptor, not
    `sys.stdin`: a daemon thread inside the buffered reader would hold its lock when the
    interpreter finalizes (a fatal error). Nothing past the settings' pickle is lost to
    that reader's buffer: the release is written only after this worker's `ready`."""
    pending = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(fd, 4096):
            *lines, pending = (pending + chunk).split(b"\n")
            if RELEASE.rstrip(b"\n") in lines:
                reporter.release_requested()
    os.kill(os.getpid(), signal.SIGTERM)


def worker_main(argv: list[str]) -> int:
    """`python -m service.transport.workers INDEX FD` (started by `Supervisor`): one server."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor owns the terminal's ^C
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until `serve` installs the reload
    index, report_fd = int(argv[0]), int(argv[1])
    settings: ServiceSettings = pickle.load(sys.stdin.buffer)
    configure_logging()
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerTag(index))
    reporter = _Reporter(report_fd)
    threading.Thread(
        target=_follow_supervisor,
        args=(sys.stdin.fileno(), reporter),
        name="supervisor-watch",
        daemon=True,
    ).start()
    try:
        asyncio.run(serve(settings, reporter, reuse_port=True, held=True))
    except QueryRecError as error:
        reporter.send("failed", error=str(error))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
