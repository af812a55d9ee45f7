"""Connection-level limits uvicorn lacks: a header timeout, a header size cap and a hard cap on open connections.

uvicorn times out idle keep-alive connections, but not a connection that is still sending a request's
headers: 100 clients sending one header byte now and then ("slowloris") kept 100 sockets open for as
long as they liked. `guarded_protocol(config)` is uvicorn's httptools protocol with
- a header timer, armed when a connection opens and when a request begins, cancelled when the
  request's headers are complete: past `header_timeout_seconds` the connection gets 408 and is closed;
- a header size cap: uvicorn's httptools protocol buffers a request line and headers of any size
  (measured: one 50 MB header took +88 MB RSS and got 200); past `max_header_bytes` received before
  the headers are complete the connection gets 431 and is closed (nginx's
  `large_client_header_buffers` and h11's 16 KB limit do the same);
- a cap: a connection opened while `max_connections` are open is closed at once (uvicorn's own
  `limit_concurrency`, set to the same value, answers 503 to requests beyond it).
Bodies have their own deadline (`upload.py`), idle keep-alive connections uvicorn's `timeout_keep_alive`.

`DrainingServer` is uvicorn's server that turns the app's status to `draining` (/readyz 503) as soon as
SIGTERM or SIGINT arrives, before uvicorn stops accepting connections.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

from unetkit.config import ServeConfig

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools comes with the serve extra
    HttpToolsProtocol = None

TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"content-length: 26\r\nconnection: close\r\n\r\nrequest headers too slow\r\n")
TOO_LARGE_RESPONSE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                      b"content-length: 27\r\nconnection: close\r\n\r\nrequest headers too large\r\n")


def guarded_protocol(config: ServeConfig) -> Any:
    """The protocol class to give uvicorn (`http=`), or "auto" when httptools is missing."""
    if HttpToolsProtocol is None:  # pragma: no cover
        return "auto"

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        header_timeout = config.header_timeout_seconds
        max_header_bytes = config.max_header_bytes
        max_connections = config.max_connections

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_timer: asyncio.TimerHandle | None = None
            self._header_bytes = 0
            if len(self.connections) > self.max_connections:
                transport.close()
                return
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # still reading headers after this chunk: count it (a chunk that also ended the previous
            # request's body is counted whole, so the cap is approximate by at most one read)
            if self._header_timer is not None and not self.transport.is_closing():
                self._header_bytes += len(data)
                if self._header_bytes > self.max_header_bytes:
                    self._cancel_header_timer()
                    self.transport.write(TOO_LARGE_RESPONSE)
                    self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = 0
            if getattr(self, "_header_timer", None) is None:
                self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._cancel_header_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

        def _cancel_header_timer(self) -> None:
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.write(TIMEOUT_RESPONSE)
                self.transport.close()

    return GuardedHttpToolsProtocol


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: Any) -> None:
        super().__init__(config)
        self.app_state = state  # the app's AppState

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.app_state.status == "ready":
            self.app_state.status = "draining"
            self.app_state.metrics.ready.set(0)
        super().handle_exit(sig, frame)
