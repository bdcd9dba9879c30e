"""The Kubernetes API going away and coming back: which errors are an outage rather than an
answer, and one WARNING per outage with an INFO when it ends, instead of an ERROR and a
traceback for every failed request.

kopf parks a timer whose handler raised for 60 s, so after a 20 s apiserver outage the first
autoscaling tick came 37.6 s after the apiserver was healthy again (and its watch streams
logged an ERROR per retry, 35 for that outage). The handlers retry transient failures
themselves, every `RETRY_SECONDS`, and kopf's per-request retry messages are folded into the
same single WARNING."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from embedfleet_operator.refusals import MOMENTARY_STATUSES

log = logging.getLogger("embedfleet.operator")

RETRY_SECONDS = 1.0
# A handler retrying through an outage gives up after this long; the next tick or resync picks
# the work up (kopf runs nothing else for that resource while a handler runs).
RETRY_FOR_SECONDS = 60.0
SETTLE_SECONDS = 30.0  # failures this soon after an outage ended still belong to it
# The moment's answers (refusals.py), and a 500: an apiserver starting up answers 500 or 503
# for a while. (A 500 that repeats for one spec is the spec's: refusals.py stops it.)
TRANSIENT_STATUSES = MOMENTARY_STATUSES | {500}
KOPF_RETRY_PREFIX = "Request attempt"  # kopf's "Request attempt #N/M failed; will retry: ..."


def is_transient(error: BaseException) -> bool:
    """Whether `error` means the API could not answer now (retry soon) rather than refused."""
    if isinstance(error, ApiException):
        return error.status in TRANSIENT_STATUSES
    return isinstance(error, (aiohttp.ClientError, TimeoutError, ConnectionError))


class ApiOutage:
    """One outage at a time, shared by every handler and timer of the process: the first failure
    logs a WARNING, the first success after it an INFO with how long it lasted. `now` comes from
    the caller (a monotonic clock)."""

    def __init__(self) -> None:
        self.since: float | None = None  # when the outage in progress began
        self.began: float | None = None  # when the last outage began
        self.ended: float | None = None  # when it last ended

    def failed(self, what: str, error: BaseException | str, now: float) -> None:
        if self.since is not None:
            return
        if self.ended is not None and now - self.ended < SETTLE_SECONDS:
            # The same outage: a restarted apiserver answers 429 or 503 for a while after its
            # first successful answers (seen 1-3 s after /readyz, while other tests loaded
            # the machine). It ends again with another INFO, but warns once.
            self.since = self.began
            return
        self.since = self.began = now
        log.warning(
            "the Kubernetes API is unreachable (%s: %s); retrying every %gs",
            what, _brief(error), RETRY_SECONDS,
        )  # fmt: skip

    def succeeded(self, now: float) -> None:
        if self.since is not None:
            log.info("the Kubernetes API is reachable again after %.1fs", now - self.since)
            self.since, self.ended = None, now


class Retrying:
    """The one wrapper every handler's work runs in. An object that is gone (404) ends the work
    quietly: there is nothing left to do for it. An outage or a moment's refusal (409, 429,
    5xx, a dropped connection) is retried every RETRY_SECONDS with one WARNING per outage,
    instead of raising into kopf's 60 s backoff and its traceback; past RETRY_FOR_SECONDS it
    gives up quietly, and the next tick or resync picks the work up. Anything else is a bug or
    a refusal for good, and raises. `sleep` and `clock` are injectable for tests."""

    def __init__(
        self,
        outage: ApiOutage,
        *,
        retry_for: float = RETRY_FOR_SECONDS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outage, self.retry_for, self._sleep, self._clock = outage, retry_for, sleep, clock

    async def __call__(self, attempt: Callable[[], Awaitable[None]], what: str) -> None:
        deadline = self._clock() + self.retry_for
        while True:
            try:
                await attempt()
            except ApiException as error:
                if error.status == 404:
                    self.outage.succeeded(self._clock())
                    return  # deleted while we worked: nothing left to do
                if not is_transient(error):
                    raise
                if not await self._failed(what, error, deadline):
                    return
                continue
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as error:
                if not await self._failed(what, error, deadline):
                    return
                continue
            self.outage.succeeded(self._clock())
            return

    async def _failed(self, what: str, error: BaseException, deadline: float) -> bool:
        """Records the failure; whether to try again (after a pause)."""
        self.outage.failed(what, error, self._clock())
        if self._clock() >= deadline:
            return False
        await self._sleep(RETRY_SECONDS)
        return True


class KopfRetryFilter(logging.Filter):
    """Folds kopf's per-request retry ERRORs (its watch streams and peering keep-alives during an
    outage) into the outage's one WARNING; kopf's own escalation, when its retries run out,
    still logs as kopf wrote it."""

    def __init__(self, outage: ApiOutage) -> None:
        super().__init__()
        self.outage = outage

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(KOPF_RETRY_PREFIX) and "will retry" in message:
            self.outage.failed("kopf", message.split(" -> ", 1)[-1], time.monotonic())
            return False
        return True


def _brief(error: BaseException | str) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return str(error) or type(error).__name__
