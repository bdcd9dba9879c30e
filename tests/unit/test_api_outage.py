"""Which API failures are an outage, and one WARNING per outage with an INFO when it ends."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from embedfleet_operator.api_outage import ApiOutage, KopfRetryFilter, Retrying, is_transient


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (aiohttp.ClientConnectionError("refused"), True),
        (aiohttp.ServerDisconnectedError(), True),
        (TimeoutError(), True),
        (ConnectionResetError(104, "reset"), True),
        (ApiException(status=503, reason="Service Unavailable"), True),
        (ApiException(status=500, reason="etcd not ready"), True),
        (ApiException(status=429, reason="Too Many Requests"), True),
        (ApiException(status=409, reason="Conflict"), True),
        (ApiException(status=422, reason="Unprocessable Entity"), False),
        (ApiException(status=403, reason="Forbidden"), False),
        (ApiException(status=404, reason="Not Found"), False),
        (ValueError("a bug"), False),
    ],
)
def test_is_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_one_warning_per_outage_and_an_info_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    outage = ApiOutage()
    with caplog.at_level(logging.INFO, logger="embedfleet.operator"):
        outage.succeeded(now=0.0)  # no outage: says nothing
        outage.failed("autoscaling", ApiException(status=503, reason="Unavailable"), now=10.0)
        outage.failed("resync", aiohttp.ClientConnectionError("refused"), now=11.0)
        outage.failed("autoscaling", TimeoutError(), now=12.0)
        outage.succeeded(now=30.5)
        outage.succeeded(now=31.0)
        # a restarted apiserver throttles for a moment: the same outage, no second WARNING
        outage.failed("autoscaling", ApiException(status=429, reason="TooManyRequests"), now=32)
        outage.succeeded(now=34.0)
        outage.failed("resync", ConnectionResetError(104, "reset"), now=70.0)  # a new one
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in records] == ["WARNING", "INFO", "INFO", "WARNING"]
    assert "autoscaling: HTTP 503 Unavailable" in records[0][1]
    assert "reachable again after 20.5s" in records[1][1]
    assert "reachable again after 24.0s" in records[2][1]


def test_kopf_retry_messages_fold_into_the_outage(caplog: pytest.LogCaptureFixture) -> None:
    outage = ApiOutage()
    fold = KopfRetryFilter(outage)

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", logging.ERROR, __file__, 1, message, None, None)

    with caplog.at_level(logging.INFO, logger="embedfleet.operator"):
        retry = record("Request attempt #3/601 failed; will retry: GET /x -> ClientError()")
        assert fold.filter(retry) is False  # dropped: the outage's WARNING stands for it
        assert fold.filter(record("Request attempt #601/601 failed; escalating: GET /x")) is True
        assert fold.filter(record("Timer 'autoscale' succeeded.")) is True
    assert outage.since is not None
    assert [r.levelname for r in caplog.records] == ["WARNING"]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _attempts(*outcomes: BaseException | None) -> Any:
    """An attempt that raises each outcome in turn (None: succeeds), counting its calls."""
    pending = list(outcomes)
    calls = []

    async def attempt() -> None:
        calls.append(1)
        outcome = pending.pop(0) if pending else None
        if outcome is not None:
            raise outcome

    attempt.calls = calls  # type: ignore[attr-defined]
    return attempt


@pytest.mark.parametrize(
    ("outcomes", "sleeps"),
    [
        ((ApiException(status=404),), []),  # gone: nothing left to do
        ((ApiException(status=409), ApiException(status=503), None), [1.0, 1.0]),
        ((aiohttp.ClientConnectionError("refused"), None), [1.0]),
    ],
    ids=["404-ends-quietly", "409-503-retried", "connection-retried"],
)
def test_the_retry_wrapper_maps_answers_to_retries(
    outcomes: tuple[BaseException | None, ...], sleeps: list[float]
) -> None:
    clock = _Clock()
    retrying = Retrying(ApiOutage(), sleep=clock.sleep, clock=lambda: clock.now)
    asyncio.run(retrying(_attempts(*outcomes), "test"))
    assert clock.slept == sleeps


def test_a_refusal_for_good_raises_and_an_endless_outage_is_given_up_quietly() -> None:
    clock = _Clock()
    retrying = Retrying(ApiOutage(), retry_for=10.0, sleep=clock.sleep, clock=lambda: clock.now)
    with pytest.raises(ApiException):
        asyncio.run(retrying(_attempts(ApiException(status=422)), "test"))
    endless = _attempts(*[ApiException(status=503)] * 100)
    asyncio.run(retrying(endless, "test"))
    assert len(endless.calls) == 11  # every second for 10 s, then the next tick takes over
