"""OpenTelemetry spans of a worker's stages, exported over OTLP/HTTP to the configured collector.

Imported only when a collector is configured (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, see ``Settings.traces_endpoint``). The provider becomes the
process's global one, so that spans of instrumented libraries (the anthropic SDK's requests) join
the stage's trace. The exporter reads OpenTelemetry's other variables itself (headers, timeout,
compression, certificates); spans leave in batches, and the rest are flushed when the worker stops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanProcessor

TRACER_NAME = "dhgq"


def provider_for(
    processor: SpanProcessor, *, service: str, host: str, worker_id: str, version: str | None
) -> TracerProvider:
    """A provider whose spans say which worker made them, handed to ``processor``."""
    resource = Resource.create(
        {
            "service.name": service,
            "service.version": version or "unknown",
            "service.instance.id": worker_id,
            "host.name": host,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(processor)
    return provider


def start_tracer(
    endpoint: str, *, service: str, host: str, worker_id: str, version: str | None
) -> tuple[Any, Callable[[], None]]:
    """A tracer exporting to ``endpoint`` (OTLP/HTTP, protobuf), and what flushes and stops it."""
    processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
    provider = provider_for(processor, service=service, host=host, worker_id=worker_id, version=version)
    trace.set_tracer_provider(provider)
    return provider.get_tracer(TRACER_NAME), provider.shutdown
