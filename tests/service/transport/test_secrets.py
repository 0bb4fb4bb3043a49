"""Secrets stay secret: no Redis password in any message of `serve` or `state load`."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main

SECRET = "hunter2@x"
URLS = [
    f"redis://:{SECRET}@127.0.0.1:1/0",
    f"redis://default:{SECRET}@127.0.0.1:1",
    f"redis://127.0.0.1:1/0?password={SECRET}",
    f"rediss://:{SECRET}@127.0.0.1:1",
]


@pytest.mark.parametrize("url", URLS)
def test_serve_never_prints_the_redis_password(
    bundle: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens on port 1: the server stops before binding, with one line."""
    assert main(["serve", "--bundle", str(bundle), "--redis", url, "--port", "0"]) == 2
    captured = capsys.readouterr()
    assert "hunter2" not in captured.err + captured.out
    assert captured.err.strip().count("\n") == 0 and "Redis" in captured.err


@pytest.mark.parametrize("url", URLS)
def test_state_load_never_prints_the_redis_password(
    tiny_data: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["state", "load", "--data", str(tiny_data), "--redis", url]) == 2
    captured = capsys.readouterr()
    assert "hunter2" not in captured.err + captured.out
    assert captured.err.strip().count("\n") == 0


def test_a_password_file_setting_is_read_and_never_shown(
    tmp_path: Path,
    bundle: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret_file = tmp_path / "redis-password"
    secret_file.write_text("hunter2-from-file\n")
    monkeypatch.setenv("QUERYREC_REDIS_PASSWORD_FILE", str(secret_file))
    assert (
        main(["serve", "--bundle", str(bundle), "--redis", "redis://127.0.0.1:1", "--port", "0"])
        == 2
    )
    captured = capsys.readouterr()
    assert "hunter2" not in captured.err + captured.out
