"""uvicorn's HTTP/1.1 protocol (httptools' C parser when installed, else h11) with two
additions the connection rule needs.

- Every connection is reported to the `ConnectionTable` when it opens and when it is gone, so
  the table knows each connection's age and how many this worker holds.
- Lingering close: when the server closes a connection (after a `Connection: close` response,
  on the keep-alive timeout, at shutdown) it sends FIN first and keeps reading, discarding what
  arrives, until the client closes too or `LINGER_SECONDS` pass. Closing a socket with unread
  input makes the kernel send RST, and a client that had already sent its next request would
  see "connection reset" instead of a clean end of stream it can reconnect after (the reason
  Apache and nginx linger)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from embedfleet_worker.http.connections import ConnectionTable

LINGER_SECONDS = 2.0


def _base_protocol() -> Any:
    try:  # the C parser: a fraction of h11's cost per request
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools not installed
        return H11Protocol
    return HttpToolsProtocol


class LingeringTransport:
    """Wraps the protocol's transport: `close()` half-closes and lingers, everything else
    passes through."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self.lingering = False
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        if self.lingering or self._transport.is_closing():
            return
        self.lingering = True
        try:
            # FIN once the buffered response is written; reads continue so late input is
            # drained instead of answered with RST.
            self._transport.write_eof()
            self._transport.resume_reading()
        except (OSError, RuntimeError, NotImplementedError):
            self._transport.close()
            return
        self._timer = self._loop.call_later(LINGER_SECONDS, self.abort_linger)

    def abort_linger(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport.close()


def tracking_protocol(table: ConnectionTable) -> type[asyncio.Protocol]:
    """uvicorn's protocol class, bound to this worker's connection table (uvicorn builds one
    protocol object per connection from `Config(http=...)`)."""
    base = _base_protocol()

    class TrackingProtocol(base):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:
            lingering = LingeringTransport(transport, self.loop)
            super().connection_made(lingering)
            table.opened(self.client, time.monotonic())

        def connection_lost(self, exc: Exception | None) -> None:
            table.closed(self.client)
            transport = self.transport
            if isinstance(transport, LingeringTransport) and transport.lingering:
                transport.abort_linger()  # cancels the timer; the socket is gone already
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if _lingering(self.transport):
                return  # input after our FIN: drained, never parsed
            super().data_received(data)

        def eof_received(self) -> None:
            transport = self.transport
            if isinstance(transport, LingeringTransport) and transport.lingering:
                transport.abort_linger()  # the client closed its side: done
                return
            super().eof_received()

    return TrackingProtocol


def _lingering(transport: Any) -> bool:
    return isinstance(transport, LingeringTransport) and transport.lingering
