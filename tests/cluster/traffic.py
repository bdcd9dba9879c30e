"""Steady embedding traffic through a Service address: a few threads, a new connection per
request (so the kube-proxy stand-in spreads it over the pods, as kube-proxy would), counting
what came back. Used by the autoscaling test and `make demo`."""

from __future__ import annotations

import threading
import time

import httpx


class Traffic:
    def __init__(self, url: str, rate: float, threads: int = 6) -> None:
        self.url, self.interval = url + "/v1/embeddings", threads / rate
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, index: int) -> None:
        count = 0
        with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = http.post(self.url, json={"input": f"sentence {index}-{count}"})
                    if response.status_code == 200:
                        self.ok += 1
                    else:
                        self.failed.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as error:
                    self.failed.append(f"{type(error).__name__}: {error}")
                count += 1
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
