"""Settings: QUERYREC_* variables and flags, validated at start with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from queryrec.cli.main import main
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
