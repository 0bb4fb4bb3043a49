"""Settings: QUERYREC_* variables and flags, validated at start with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main
from service.errors import SettingsError
from service.settings import load_settings


def test_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUERYREC_BUDGET_MS", "25")
    monkeypatch.setenv("QUERYREC_PORT", "6000")
    settings = load_settings(port=7000)  # a flag beats the environment
    assert settings.budget_ms == 25 and settings.port == 7000
    assert settings.redis_url is None  # no URL: the server embeds a Redis


@pytest.mark.parametrize(
    ("variable", "value"),
    [("QUERYREC_PORT", "70000"), ("QUERYREC_BUDGET_MS", "-1"), ("QUERYREC_DEVICE", "tpu")],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=f"invalid setting {variable}"):
        load_settings()


def test_budget_shares_must_leave_the_encoder_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUERYREC_REDIS_SHARE", "0.6")
    with pytest.raises(SettingsError, match="redis_share must be below encoder_share"):
        load_settings()


def test_serve_refuses_bad_settings_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--port", "-3"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["serve", "--bundle", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no manifest" in err and "\n" not in err


BAD_SETTINGS = [
    ("QUERYREC_PORT", "abc"),
    ("QUERYREC_HOST", "bad host"),
    ("QUERYREC_ADMIN_HOST", "256.1.1.1"),
    ("QUERYREC_BUDGET_MS", "inf"),
    ("QUERYREC_BUDGET_MS", "nan"),
    ("QUERYREC_SHUTDOWN_GRACE_S", "inf"),
    ("QUERYREC_DRAIN_DELAY_S", "1e308"),
    ("QUERYREC_MAX_CONNECTION_AGE_S", "1e300"),
    ("QUERYREC_REFLECTION", "maybe"),
    ("QUERYREC_REDIS_URL", "foo://x"),
    ("QUERYREC_REDIS_URL", "redis://localhost:99999"),
    ("QUERYREC_REDIS_URL", "redis://h:-1"),
    ("QUERYREC_REDIS_URL", "redis://[::1"),
    ("QUERYREC_REDIS_URL", "redis://h:6379/?socket_timeout=x"),
    ("QUERYREC_REDIS_URL", "redis+cluster://a:99999"),
    ("QUERYREC_REDIS_URL", "redis://127.0.0.1:1"),  # well-formed, nothing listens there
    ("QUERYREC_REDIS_PASSWORD_FILE", "/"),
    ("QUERYREC_ADMIN_TOKEN_FILE", "/nonexistent"),
    ("QUERYREC_TLS_CERT_FILE", "/etc/hostname"),  # without its key
]


@pytest.mark.parametrize(("variable", "value"), BAD_SETTINGS)
def test_every_bad_setting_is_one_line_and_exit_2(
    bundle: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
) -> None:
    """`serve` (one worker, and the supervisor of two) refuses it before anything binds:
    exit 2, one line on stderr, no traceback."""
    monkeypatch.setenv("QUERYREC_PORT", "0")
    monkeypatch.setenv("QUERYREC_ADMIN_PORT", "0")
    monkeypatch.setenv(variable, value)  # (a flag would win over it: none is given)
    for workers in ("1", "2"):
        monkeypatch.setenv("QUERYREC_WORKERS", workers)
        assert main(["serve", "--bundle", str(bundle)]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("queryrec: error: ") and captured.err.count("\n") == 1
        assert "Traceback" not in captured.err and captured.out == ""


def test_a_tls_pair_that_is_not_pem_is_one_line(
    bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUERYREC_TLS_CERT_FILE", "/etc/hostname")
    monkeypatch.setenv("QUERYREC_TLS_KEY_FILE", "/etc/hostname")
    assert main(["serve", "--bundle", str(bundle), "--port", "0", "--admin-port", "0"]) == 2
    err = capsys.readouterr().err
    assert "not a PEM certificate chain" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "url", ["foo://x", "redis://localhost:99999", "redis://:secret", "redis://[::1"]
)
def test_state_load_refuses_a_malformed_redis_url_with_one_line(
    tiny_data: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    assert main(["state", "load", "--data", str(tiny_data), "--redis", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("queryrec: error: invalid Redis URL") and err.count("\n") == 1
    assert "secret" not in err
