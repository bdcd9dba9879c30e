"""The operator's settings: flags win over EMBEDFLEET_OPERATOR_* variables, defaults otherwise."""

from __future__ import annotations

import pytest

from embedfleet_operator.settings import EmbedfleetSettings, parse_settings


def test_defaults() -> None:
    settings = parse_settings([], environ={})
    assert settings == EmbedfleetSettings()
    assert (settings.autoscale_seconds, settings.scrape_timeout_seconds) == (15.0, 2.0)
    assert settings.metrics_address is None


def test_environment_then_flags() -> None:
    environ = {
        "EMBEDFLEET_OPERATOR_AUTOSCALE_SECONDS": "5",
        "EMBEDFLEET_OPERATOR_METRICS_ADDRESS": "0.0.0.0:8081",
        "EMBEDFLEET_OPERATOR_NAMESPACES": "a,b",
    }
    settings = parse_settings(["--autoscale-seconds", "2", "--namespace", "c"], environ=environ)
    assert settings.autoscale_seconds == 2.0
    assert settings.metrics_address == "0.0.0.0:8081"
    assert settings.namespaces == ("c",)
    assert parse_settings([], environ=environ).namespaces == ("a", "b")


def test_bad_value_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--autoscale-seconds", "often"], environ={})
