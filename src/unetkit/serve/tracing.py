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
the sample log and the request log still record. On when an OTLP endpoint or an exporter is set by
the standard variables (`Tracing.from_environment`):

- `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`: OTLP over HTTP/protobuf
  (`OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` must be http/protobuf; headers, timeout, compression:
  the exporter's own OTEL_* variables);
- `OTEL_TRACES_EXPORTER`: otlp, console or none (none, or `OTEL_SDK_DISABLED=true`, keeps it off);
- `OTEL_SERVICE_NAME` (default unetkit-serve), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`
  and `OTEL_BSP_*` as the SDK reads them.

Propagation: an incoming `traceparent` (and `tracestate`) makes the server span its child; an
invalid one is ignored (a new trace starts), never an error. Responses carry `traceparent` of the
server span when tracing is on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from unetkit.config import (
    OTEL_DISABLED_ENV,
    OTEL_ENDPOINT_ENVS,
    OTEL_EXPORTER_ENV,
    OTEL_PROTOCOL_ENVS,
    OTEL_SERVICE_NAME_ENV,
)
from unetkit.errors import ConfigError

SERVICE_NAME = "unetkit-serve"
EXPORTERS = ("otlp", "console", "none")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_NULL = nullcontext()


def traceparent_trace_id(header: str | None) -> str | None:
    """The trace id of a valid W3C traceparent header (version 00 layout; an all-zero id or parent is
    invalid), else None."""
    if not header:
        return None
    m = _TRACEPARENT.match(header.strip().lower())
    if m is None or m.group(1) == "0" * 32 or m.group(2) == "0" * 16 or header.startswith("ff"):
        return None
    return m.group(1)


class Tracing:
    """A tracer over its own TracerProvider (never the process-global one) and the W3C propagator."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.trace.propagation.tracecontext import (  # lazy: optional extra (otel)
            TraceContextTextMapPropagator,
        )

        self.provider = provider
        self.tracer = provider.get_tracer("unetkit.serve")
        self.propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Tracing | None:
        """Tracing as the OTEL_* variables ask (see the module docstring), or None when they do not."""
        env = os.environ if env is None else env
        exporter = env.get(OTEL_EXPORTER_ENV, "").strip().lower()
        endpoint = next((env[k] for k in OTEL_ENDPOINT_ENVS if env.get(k)), "")
        if env.get(OTEL_DISABLED_ENV, "").strip().lower() == "true" or exporter == "none" or not (exporter or endpoint):
            return None
        names = [n.strip() for n in (exporter or "otlp").split(",") if n.strip()]
        unknown = [n for n in names if n not in EXPORTERS]
        if unknown:
            raise ConfigError(f"{OTEL_EXPORTER_ENV}={exporter}: unknown exporter {unknown[0]!r}; expected "
                              f"{', '.join(EXPORTERS)}")
        protocol = next((env[k] for k in OTEL_PROTOCOL_ENVS if env.get(k)), "http/protobuf")
        if "otlp" in names and protocol != "http/protobuf":
            raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: unetkit exports OTLP over http/protobuf "
                              "(point it at the collector's HTTP port, usually 4318)")
        try:
            from opentelemetry.sdk.resources import Resource  # lazy: optional extra (otel)
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        except ImportError:
            raise ConfigError("tracing (OTEL_* variables set) needs the otel extra: pip install 'unetkit[otel]'") from None
        resource = Resource.create({} if env.get(OTEL_SERVICE_NAME_ENV) else {"service.name": SERVICE_NAME})
        provider = TracerProvider(resource=resource)
        for name in names:
            if name == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # lazy: optional extra (otel)
                    OTLPSpanExporter,
                )

                provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            elif name == "console":
                provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        return cls(provider)

    def start_request(self, name: str, headers: Mapping[str, str], attributes: dict[str, Any]) -> Any:
        """The server span of a request, a child of the caller's valid `traceparent` (else a new trace)."""
        from opentelemetry.trace import SpanKind  # lazy: optional extra (otel)

        parent = self.propagator.extract({k: v for k, v in headers.items() if k in ("traceparent", "tracestate")})
        return self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)

    def traceparent(self, span: Any) -> str:
        from opentelemetry.trace import set_span_in_context  # lazy: optional extra (otel)

        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=set_span_in_context(span))
        return carrier.get("traceparent", "")

    def shutdown(self) -> None:
        """Export what is buffered, stop the exporters."""
        self.provider.shutdown()


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
        if self.root is None:
            return _NULL
        return self._span(name, attributes)

    @contextmanager
    def _span(self, name: str, attributes: dict[str, Any]) -> Iterator[Any]:
        from opentelemetry.trace import set_span_in_context  # lazy: optional extra (otel)

        assert self.tracing is not None
        with self.tracing.tracer.start_as_current_span(name, context=set_span_in_context(self.root),
                                                       attributes=attributes or None) as span:
            yield span

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
