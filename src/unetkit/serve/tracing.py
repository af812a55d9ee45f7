"""OpenTelemetry traces of served requests, and the per-request record every response and sample cites.

`RequestContext` exists for every request (made by `middleware.observe`): its id (X-Request-ID), its
trace id, the model version that answered (set by `Service.segment` once the model is chosen, so an
error after that still names it), and, when tracing is on, its server span. The work of a request
opens child spans through `ctx.span(name)`: receive (the body) -> decode -> per forward pass a
"queue wait" (from the tiles' enqueueing to the batch start) and a "forward" (the batched pass, with
its batch size, the number of requests sharing it and span links to those requests) -> postprocess
-> encode. The batching worker reports its passes through `ctx.batch(...)` with explicit times, so
the worker thread never touches a context.

Off by default, and then free: no OpenTelemetry import, `span()` is a shared null context manager,
and a request's trace id is the one its caller sent in a valid W3C `traceparent` (or None), which
the sample log and the request log still record. On when the standard OTEL_* variables ask
(`unetkit.tracing.Tracing.from_environment`, shared with `predict`).

Propagation: an incoming `traceparent` (and `tracestate`) makes the server span its child; an
invalid one is ignored (a new trace starts), never an error. Responses carry `traceparent` of the
server span when tracing is on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from unetkit.tracing import Tracing, open_span, traceparent_trace_id

__all__ = ["RequestContext", "Tracing", "traceparent_trace_id"]


class RequestContext:
    """One request's record: id, trace id, answering model version, and (tracing on) its server span."""

    __slots__ = ("request_id", "trace_id", "model_version", "tracing", "root")

    def __init__(self, request_id: str, trace_id: str | None = None, tracing: Tracing | None = None,
                 root: Any = None) -> None:
        self.request_id, self.trace_id, self.model_version = request_id, trace_id, None
        self.tracing, self.root = tracing, root

    @classmethod
    def start(cls, request_id: str, headers: Mapping[str, str], tracing: Tracing | None, name: str,
              attributes: dict[str, Any]) -> RequestContext:
        if tracing is None:  # off: only the caller's trace id, for the logs
            return cls(request_id, traceparent_trace_id(headers.get("traceparent")))
        root = tracing.start_request(name, headers, attributes)
        return cls(request_id, format(root.get_span_context().trace_id, "032x"), tracing, root)

    @property
    def traced(self) -> bool:
        return self.root is not None

    def span(self, name: str, **attributes: Any) -> Any:
        """A context manager: a child span of the request (a shared null context when tracing is off)."""
        return open_span(self.tracing, self.root, name, attributes, parent=self.root)

    def model_chosen(self, version: str) -> None:
        self.model_version = version

    def batch(self, enqueued_ns: int, start_ns: int, end_ns: int, size: int, tiles: int,
              peers: Sequence[RequestContext]) -> None:
        """One forward pass that held `tiles` of this request's tiles (queued since `enqueued_ns`), in a
        batch of `size` tiles shared with `peers` (the other requests in it): a "queue wait" span and a
        "forward" span linked to the peers' server spans. Called on the batching worker's thread."""
        if self.root is None:
            return
        from opentelemetry.trace import Link, set_span_in_context  # lazy: optional extra (otel)

        assert self.tracing is not None
        parent = set_span_in_context(self.root)
        tracer = self.tracing.tracer
        wait = tracer.start_span("queue wait", context=parent, start_time=min(enqueued_ns, start_ns),
                                 attributes={"unetkit.tiles": tiles})
        wait.end(end_time=start_ns)
        links = [Link(p.root.get_span_context(), {"unetkit.relation": "shares the batch"})
                 for p in peers if p.root is not None]
        forward = tracer.start_span("forward", context=parent, start_time=start_ns, links=links, attributes={
            "unetkit.batch.size": size, "unetkit.batch.requests": len(peers) + 1, "unetkit.tiles": tiles})
        forward.end(end_time=end_ns)

    def finish(self, status: int, attributes: dict[str, Any]) -> str:
        """End the server span with the response's status; the `traceparent` to send back ("" when off)."""
        if self.root is None:
            return ""
        from opentelemetry.trace import Status, StatusCode  # lazy: optional extra (otel)

        assert self.tracing is not None
        self.root.set_attributes({k: v for k, v in attributes.items() if v is not None})
        if self.model_version:
            self.root.set_attribute("unetkit.model_version", self.model_version)
        if status >= 500:
            self.root.set_status(Status(StatusCode.ERROR))
        header = self.tracing.traceparent(self.root)
        self.root.end()
        return header
