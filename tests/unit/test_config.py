from __future__ import annotations

import pytest

from tradepulse.config import ConfigError, load_settings

pytestmark = pytest.mark.usefixtures("clean_env")


def test_defaults() -> None:
    s = load_settings()
    assert s.tickers == ["AAPL", "MSFT", "AMZN", "TSLA", "NVDA"]
    assert s.port == 8000
    assert s.backend == "embedded"
    assert s.resolved_source == "sim"


def test_tickers_from_env_are_csv_and_upper_cased(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEPULSE_TICKERS", "aapl, brk.b ,AAPL")
    assert load_settings().tickers == ["AAPL", "BRK.B"]


def test_polygon_key_switches_auto_source_to_the_real_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYGON_API_KEY", "k-123")
    s = load_settings()
    assert s.resolved_source == "polygon"
    assert s.secrets() == ["k-123"]


@pytest.mark.parametrize(
    ("var", "value", "named"),
    [
        ("TRADEPULSE_PORT", "70000", "TRADEPULSE_PORT"),
        ("TRADEPULSE_TICKERS", "AAPL,$$$", "TRADEPULSE_TICKERS"),
        ("TRADEPULSE_BACKEND", "mongo", "TRADEPULSE_BACKEND"),
        ("TRADEPULSE_ANOMALY_CONTAMINATION", "0.9", "TRADEPULSE_ANOMALY_CONTAMINATION"),
    ],
)
def test_invalid_setting_is_named(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, named: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert named in str(err.value)


def test_secret_values_are_not_echoed_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYGON_API_KEY", "sekrit-value")
    monkeypatch.setenv("TRADEPULSE_PORT", "nope")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "sekrit-value" not in str(err.value)


def test_anomaly_threshold_defaults_to_fixed_and_accepts_cutoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().anomaly_threshold == -0.7
    monkeypatch.setenv("TRADEPULSE_ANOMALY_THRESHOLD", "cutoff")
    assert load_settings().anomaly_threshold is None
    monkeypatch.setenv("TRADEPULSE_ANOMALY_THRESHOLD", "-0.6")
    assert load_settings().anomaly_threshold == -0.6
    monkeypatch.setenv("TRADEPULSE_ANOMALY_THRESHOLD", "0.3")
    with pytest.raises(ConfigError, match="TRADEPULSE_ANOMALY_THRESHOLD"):
        load_settings()
