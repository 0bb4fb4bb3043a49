"""Servers as subprocesses, for the demo, the load tests and the benchmarks.

`ListeningProcess` launches a command, copies its output to a log and waits for its
listening line; `ServerProcess` is `queryrec serve` on a bundle and a Redis. They talk to
the server only through its process and its port, never by importing the service.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from queryrec.errors import QueryRecError
from queryrec.progress import say

SERVE_START_TIMEOUT_S = 120.0
"""How long the server may take to load the bundle, warm up and print its listening line."""
SERVE_STOP_TIMEOUT_S = 10.0
"""How long the server may take to stop after SIGTERM before it is killed."""
SERVE_BUDGET_MS = 1000
"""QUERYREC_BUDGET_MS of the demo's server; see `start_server`."""
_LISTENING = re.compile(r"queryrec serve: listening on [^\s:]+:(?P<port>\d+)")
_LOG_TAIL_LINES = 20


class ListeningProcess:
    """A server as a subprocess: launched, waited for until it prints its listening
    line, stopped; its output (stdout and stderr merged) copied to `log_path`.

    A reader thread copies every output line to the log and keeps the last few for error
    messages. Subclasses give the command, the environment, the listening line's pattern
    (its group `port`) and a name for messages. `launch` + `wait` let several start side
    by side; `start` does both.
    """

    name = "server"
    listening: re.Pattern[str]

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
        self._port: int | None = None
        self._listening = threading.Event()

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    @property
    def port(self) -> int:
        assert self._port is not None, "not listening"
        return self._port

    def launch(self) -> None:
        """Start the process without waiting for it (see `wait`)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=self.environment(),
        )
        assert self._process.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self._process.stdout,), name=f"{self.name}-log", daemon=True
        )
        self._reader.start()

    def wait(self, timeout_s: float = SERVE_START_TIMEOUT_S) -> int:
        """-> the port once the listening line appears. QueryRecError, with the last
        output, if the process exits first or is silent for `timeout_s` (it is stopped)."""
        assert self._process is not None, "not launched"
        deadline = time.monotonic() + timeout_s
        while not self._listening.wait(timeout=0.2):
            code = self._process.poll()
            if code is not None:
                if self._reader is not None:
                    self._reader.join(timeout=5.0)  # collect its last words
                if self._port is not None:
                    break
                self.stop()
                raise QueryRecError(
                    f"{self.name} exited with code {code} before listening\n{self.tail()}"
                )
            if time.monotonic() >= deadline:
                self.stop()
                raise QueryRecError(
                    f"{self.name} printed no listening line within {timeout_s:.0f} s\n{self.tail()}"
                )
        if self._port is None or self._process.poll() is not None:
            self.stop()
            raise QueryRecError(f"{self.name} stopped right after starting\n{self.tail()}")
        return self._port

    def start(self, timeout_s: float = SERVE_START_TIMEOUT_S) -> int:
        """`launch` and `wait`: -> the port."""
        self.launch()
        return self.wait(timeout_s)

    def poll(self) -> int | None:
        """The exit code once the process has exited; None while it runs (or unstarted)."""
        return None if self._process is None else self._process.poll()

    def wait_exit(self, timeout_s: float) -> int:
        """Wait for the process to exit (after `terminate`): -> its exit code."""
        assert self._process is not None, "not started"
        return self._process.wait(timeout=timeout_s)

    def terminate(self) -> None:
        """Send SIGTERM without waiting (to stop several at once; then `stop` each)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM, wait `SERVE_STOP_TIMEOUT_S`, then SIGKILL; idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=SERVE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                say(f"[demo] {self.name} did not stop within {SERVE_STOP_TIMEOUT_S:.0f} s: kill")
                process.kill()
                process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5.0)
            self._reader = None
        if process.stdout is not None:
            process.stdout.close()

    def tail(self) -> str:
        """The server's last output lines, for error messages."""
        lines = list(self._tail)
        if not lines:
            return f"(no output; log: {self.log_path})"
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(lines)

    def _read(self, stream: IO[str]) -> None:
        with self.log_path.open("w", encoding="utf-8") as log:
            for line in stream:
                log.write(line)
                log.flush()
                self._tail.append(line.rstrip("\n"))
                if self._port is None:
                    match = self.listening.search(line)
                    if match:
                        self._port = int(match.group("port"))
                        self._listening.set()


class ServerProcess(ListeningProcess):
    """`queryrec serve` as a subprocess (`ListeningProcess`); `start` returns its port once
    it is warmed up and SERVING."""

    name = "queryrec serve"
    listening = _LISTENING

    def __init__(
        self,
        bundle_dir: Path,
        redis_url: str,
        log_path: Path,
        settings: dict[str, str] | None = None,
    ) -> None:
        super().__init__(log_path)
        self.settings = settings or {}  # extra QUERYREC_* variables for the server
        self.bundle_dir = bundle_dir
        self.redis_url = redis_url

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--bundle",
            str(self.bundle_dir),
            "--redis",
            self.redis_url,
            "--port",
            "0",
        ]

    def environment(self) -> dict[str, str]:
        # The replay client and the server share the machine's cores (2 on the development
        # machine): under the replay's own load a production-tight budget would degrade
        # requests (fallback scores), and the served-vs-offline AUC proof needs every score
        # computed in full. A generous budget keeps them whole; latency is still measured.
        # Admin API on a free port; no drain delay: nothing balances load in the demo.
        env = {
            **super().environment(),
            "QUERYREC_BUDGET_MS": str(SERVE_BUDGET_MS),
            "QUERYREC_ADMIN_PORT": "0",
            "QUERYREC_DRAIN_DELAY_S": "0",
        }
        return env | self.settings
