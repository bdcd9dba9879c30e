"""Steady embedding traffic through a Service address, sent the way users send it: one official
`openai` client with its default keep-alive connection pool, shared by a few threads, and
`max_retries=0` so that every failure shows instead of being retried away. Each thread paces
itself to its share of `rate`. Used by the autoscaling test and `make demo`."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import openai


@dataclass
class Failure:
    sent: float  # time.monotonic() when the request was sent
    failed: float  # ...and when it failed
    error: str


@dataclass
class Traffic:
    url: str  # the Service's base URL, without /v1
    rate: float  # requests per second, all threads together
    model: str
    threads: int = 8
    timeout: float = 30.0  # per request, as the client's own
    ok: int = 0
    failures: list[Failure] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = openai.OpenAI(
            base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=self.timeout
        )
        self._interval = self.threads / self.rate
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers = [
            threading.Thread(target=self._run, args=(i,), name=f"traffic-{i}")
            for i in range(self.threads)
        ]

    @property
    def failed(self) -> list[str]:
        return [f.error for f in self.failures]

    def failures_before(self, moment: float) -> list[Failure]:
        """Requests that had failed by `moment` (one in flight then and failing later, say on a
        worker killed at that moment, is not among them)."""
        return [f for f in self.failures if f.failed < moment]

    def __enter__(self) -> Traffic:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(60)
        self.client.close()

    def _run(self, index: int) -> None:
        # Threads start spread over one interval, as independent callers would.
        self._stop.wait(self._interval * index / self.threads)
        count = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.client.embeddings.create(model=self.model, input=f"sentence {index}-{count}")
            except openai.OpenAIError as error:
                cause = error.__cause__  # the transport's own error under APIConnectionError
                detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
                failure = Failure(
                    started, time.monotonic(), f"{type(error).__name__}: {error}{detail}"
                )
                with self._lock:
                    self.failures.append(failure)
            else:
                with self._lock:
                    self.ok += 1
            count += 1
            self._stop.wait(max(0.0, self._interval - (time.monotonic() - started)))


def requests_served(base_url: str) -> float:
    """A worker's finished API requests (all status codes), from its own /metrics; 0 when it
    does not answer."""
    from embedfleet_operator.scrape import parse_worker_metrics

    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=2) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return 0.0
    return parse_worker_metrics(text, time=0.0).requests


def served_by(base_urls: dict[str, str]) -> dict[str, float]:
    """Requests served so far by each named worker."""
    return {name: requests_served(url) for name, url in base_urls.items()}
