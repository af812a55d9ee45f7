"""OpenTelemetry set-up shared by `serve` (`serve.tracing`: requests) and `predict` (`JobTrace`: a run).

Off by default, and then free: no OpenTelemetry import, and every span is a shared null context
manager. On when an OTLP endpoint or an exporter is set by the standard variables
(`Tracing.from_environment`):

- `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`: OTLP over HTTP/protobuf
  (`OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` must be http/protobuf; headers, timeout, compression:
  the exporter's own OTEL_* variables);
- `OTEL_TRACES_EXPORTER`: otlp, console or none (none, or `OTEL_SDK_DISABLED=true`, keeps it off);
- `OTEL_SERVICE_NAME` (default unetkit-serve / unetkit-predict), `OTEL_RESOURCE_ATTRIBUTES`,
  `OTEL_TRACES_SAMPLER[_ARG]` and `OTEL_BSP_*` as the SDK reads them.

Propagation: W3C trace context. A request's `traceparent` header, or for a command the `TRACEPARENT`
environment variable (OpenTelemetry's carrier for processes), makes the root span its child; an
invalid one is ignored (a new trace starts), never an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
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

EXPORTERS = ("otlp", "console", "none")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
NULL_SPAN = nullcontext()  # every span when tracing is off


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

    def __init__(self, provider: Any, scope: str = "unetkit.serve") -> None:
        from opentelemetry.trace.propagation.tracecontext import (  # lazy: optional extra (otel)
            TraceContextTextMapPropagator,
        )

        self.provider = provider
        self.tracer = provider.get_tracer(scope)
        self.propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None, service: str = "unetkit-serve") -> Tracing | None:
        """Tracing as the OTEL_* variables ask (see the module docstring), or None when they do not.
        `service`: the service name unless `OTEL_SERVICE_NAME` sets one; its dashes as dots name the
        instrumentation scope (unetkit.serve, unetkit.predict)."""
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
        resource = Resource.create({} if env.get(OTEL_SERVICE_NAME_ENV) else {"service.name": service})
        provider = TracerProvider(resource=resource)
        for name in names:
            if name == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # lazy: optional extra (otel)
                    OTLPSpanExporter,
                )

                provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            elif name == "console":
                provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        return cls(provider, service.replace("-", "."))

    def start_request(self, name: str, headers: Mapping[str, str], attributes: dict[str, Any], server: bool = True) -> Any:
        """The root span of a request (`server`) or a job, a child of the caller's valid `traceparent`
        in `headers` (else a new trace)."""
        from opentelemetry.trace import SpanKind  # lazy: optional extra (otel)

        parent = self.propagator.extract({k: v for k, v in headers.items() if k in ("traceparent", "tracestate")})
        return self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER if server else SpanKind.INTERNAL,
                                      attributes=attributes)

    def traceparent(self, span: Any) -> str:
        from opentelemetry.trace import set_span_in_context  # lazy: optional extra (otel)

        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=set_span_in_context(span))
        return carrier.get("traceparent", "")

    @contextmanager
    def child(self, name: str, attributes: dict[str, Any], parent: Any = None) -> Iterator[Any]:
        """A span named `name` under `parent` (a span; None: the span current on this thread)."""
        from opentelemetry.trace import set_span_in_context  # lazy: optional extra (otel)

        context = None if parent is None else set_span_in_context(parent)
        with self.tracer.start_as_current_span(name, context=context, attributes=attributes or None) as span:
            yield span

    def shutdown(self) -> None:
        """Export what is buffered, stop the exporters."""
        self.provider.shutdown()




def open_span(tracing: Tracing | None, root: Any, name: str, attributes: dict[str, Any], parent: Any = None) -> Any:
    """`tracing.child(...)`, or the shared null context when there is no root span (tracing off)."""
    if root is None or tracing is None:
        return NULL_SPAN
    return tracing.child(name, attributes, parent)


class JobTrace:
    """The spans of one command's run (`unetkit predict`): a root span, and nested spans opened with
    `span(name)`, each a child of the span open around it. Sequential work on one thread (the
    spans nest through OpenTelemetry's current context). `JobTrace()` (no tracing) is off: every
    span is a shared null context. `close()` ends the root and exports what is buffered."""

    def __init__(self, tracing: Tracing | None = None, name: str = "", attributes: dict[str, Any] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.tracing, self.root, self._token = tracing, None, None
        if tracing is None:
            return
        from opentelemetry import context, trace  # lazy: optional extra (otel)

        env = os.environ if env is None else env
        carrier = {"traceparent": env.get("TRACEPARENT", ""), "tracestate": env.get("TRACESTATE", "")}
        self.root = tracing.start_request(name, {k: v for k, v in carrier.items() if v}, attributes or {}, server=False)
        self._token = context.attach(trace.set_span_in_context(self.root))

    @property
    def trace_id(self) -> str | None:
        return None if self.root is None else format(self.root.get_span_context().trace_id, "032x")

    def span(self, name: str, **attributes: Any) -> Any:
        """A context manager: a span inside the one open around it (a null context when off)."""
        return open_span(self.tracing, self.root, name, attributes)

    @staticmethod
    def annotate(span: Any, **attributes: Any) -> None:
        """Set attributes on a span as `span()` yielded it (None when off: nothing to do)."""
        if span is not None:
            span.set_attributes(attributes)

    @staticmethod
    def failed(span: Any, message: str) -> None:
        """Mark a span (as `span()` yielded it; None when off) as an error with `message`."""
        if span is None:
            return
        from opentelemetry.trace import StatusCode  # lazy: optional extra (otel)

        span.set_status(StatusCode.ERROR, message[:200])

    def close(self, error: BaseException | None = None, failure: str = "", **attributes: Any) -> None:
        """End the root span with `attributes`, as an error when `error` stopped the run or `failure`
        says that part of it failed, and export what is buffered."""
        if self.root is None:
            return
        from opentelemetry import context  # lazy: optional extra (otel)
        from opentelemetry.trace import Status, StatusCode

        self.root.set_attributes(attributes)
        if error is not None:
            self.root.record_exception(error)
        if error is not None or failure:
            self.root.set_status(Status(StatusCode.ERROR, (failure or str(error))[:200]))
        self.root.end()
        context.detach(self._token)
        assert self.tracing is not None
        self.tracing.shutdown()
        self.root = None


NO_TRACE = JobTrace()  # tracing off
